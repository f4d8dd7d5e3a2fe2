"""What hearing executors' heartbeats costs a worker, beside the same worker idle.

One ``runstream worker`` on the local stack, over topics of its own. Two phases of ``--seconds``
each, measured on the worker's process (user + system CPU from ``/proc/<pid>/stat``):

* **idle**: nothing sent (the worker's own background: Faust's fetches, checkpoint timer, lag
  monitor, the heartbeat follower's empty polls);
* **heartbeats**: ``--executors`` executors heartbeat at their default interval, a third of
  their lease (1,000 executors with the 30 s lease: one heartbeat every 10 s each, 100/s), sent
  evenly spread by one aiokafka producer in this process, straight to the heartbeats topic (as
  an executor using kcat would: the HTTP route's cost is the API's, measured by bench_api).

Printed: both CPU figures (seconds and % of one core), their ratio, the extra CPU per heartbeat,
the heartbeats the worker heard (its ``runstream_heartbeats_received_total``) and the executors
it knows, and the load average at the end of each phase (the machine is shared: read the figures
with it).

    .venv/bin/python bench/bench_heartbeats.py                # 60 s per phase
    .venv/bin/python bench/bench_heartbeats.py --seconds 15   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from aiokafka import AIOKafkaProducer

from events.executors import DEFAULT_LEASE_MS, Heartbeat, encode_heartbeat, heartbeat_interval_ms
from tests.harness import Worker, make_settings, prepare_topics, wait_healthy


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return 0.0


def loadavg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


async def wait_heard(url: str, within: float = 60.0) -> None:
    """Send probes until the worker's follower hears one (it reads from the end once placed)."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=url, timeout=10) as h:
        while time.monotonic() < deadline:
            await h.post("/api/v1/executors/bench-probe/heartbeat", json={"lease_ms": 60_000})
            if (await h.get("/api/v1/executors/bench-probe")).status_code == 200:
                return
            await asyncio.sleep(0.2)
    raise SystemExit("the worker never heard a heartbeat")


async def heartbeats(kafka: str, topic: str, executors: int, lease_ms: int, seconds: float) -> int:
    """Every executor heartbeats every ``heartbeat_interval_ms(lease_ms)``, evenly spread;
    returns how many were sent (each acknowledged)."""
    interval = heartbeat_interval_ms(lease_ms) / 1000
    rate = executors / interval  # heartbeats per second, all executors together
    ids = [f"bench-exec-{i:05d}" for i in range(executors)]
    keys = [i.encode() for i in ids]
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", linger_ms=5)
    await producer.start()
    pending: list[asyncio.Future[object]] = []
    sent = 0
    try:
        start = time.monotonic()
        while True:
            due = start + sent / rate
            if due - start >= seconds:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            i = sent % executors
            hb = Heartbeat(executor_id=ids[i], lease_ms=lease_ms, at=int(time.time() * 1000))
            pending.append(await producer.send(topic, encode_heartbeat(hb), key=keys[i]))
            sent += 1
            if len(pending) >= 200:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


def phase(pid: int, seconds: float, work: object | None) -> tuple[float, float]:
    """(CPU seconds of ``pid``, wall seconds) over ``work`` (a coroutine) or an idle wait."""
    wall0, cpu0 = time.monotonic(), cpu_seconds(pid)
    if work is None:
        time.sleep(seconds)
    else:
        asyncio.run(work)  # type: ignore[arg-type]
    return cpu_seconds(pid) - cpu0, time.monotonic() - wall0


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=60.0, help="duration of each phase")
    p.add_argument("--executors", type=int, default=1000, help="executors heartbeating")
    p.add_argument("--lease-ms", type=int, default=DEFAULT_LEASE_MS, help="their lease")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the topics")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds after start, not counted")
    p.add_argument("--kafka", default=os.environ.get("RUNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    p.add_argument("--etcd", default=os.environ.get("RUNSTREAM_ETCD_ENDPOINT", "127.0.0.1:2379"))
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-heartbeats-"))
    unique = f"bhb{uuid.uuid4().hex[:8]}"
    s = make_settings(
        unique,
        args.kafka,
        args.etcd,
        f"file://{tmp}/objects",
        partitions=args.partitions,
        topic_heartbeats=f"{unique}.heartbeats",
    )
    s = dataclasses.replace(s, checkpoint_interval=5.0)
    asyncio.run(prepare_topics(s))
    worker = Worker(s, tmp / "worker.log").start()
    url = f"http://127.0.0.1:{s.web_port}"
    try:
        asyncio.run(wait_healthy(url))
        asyncio.run(wait_heard(url))
        time.sleep(args.warmup)
        assert worker.proc is not None
        pid = worker.proc.pid
        rate = args.executors / (heartbeat_interval_ms(args.lease_ms) / 1000)
        print(
            f"one worker (pid {pid}), {args.partitions} partitions, {os.cpu_count()} cores; "
            f"{args.seconds:g} s per phase; {args.executors:,} executors, lease "
            f"{args.lease_ms:,} ms, one heartbeat each every "
            f"{heartbeat_interval_ms(args.lease_ms):,} ms: {rate:,.0f} heartbeats/s"
        )

        idle_cpu, idle_wall = phase(pid, args.seconds, None)
        idle_load = loadavg()
        heard0 = metric(url, "runstream_heartbeats_received_total")
        box: dict[str, int] = {}

        async def send() -> None:
            box["sent"] = await heartbeats(
                s.kafka, s.topic_heartbeats, args.executors, args.lease_ms, args.seconds
            )

        hb_cpu, hb_wall = phase(pid, args.seconds, send())
        hb_load = loadavg()
        time.sleep(1.0)  # the last ones reach the follower
        heard = metric(url, "runstream_heartbeats_received_total") - heard0
        known = metric(url, "runstream_executors_known")
        malformed = metric(url, "runstream_heartbeats_malformed_total")

        def pct(cpu: float, wall: float) -> str:
            return f"{cpu:.2f} s CPU in {wall:.1f} s = {100 * cpu / wall:.1f} % of a core"

        print(f"idle (baseline):           {pct(idle_cpu, idle_wall)}; load average {idle_load}")
        print(f"heartbeats ({box['sent'] / hb_wall:,.0f}/s):     {pct(hb_cpu, hb_wall)}; "
              f"load average {hb_load}")  # fmt: skip
        extra = (hb_cpu / hb_wall - idle_cpu / idle_wall) * hb_wall
        ratio = (hb_cpu / hb_wall) / (idle_cpu / idle_wall) if idle_cpu else float("inf")
        print(
            f"ratio heartbeats / idle: {ratio:.2f}×; extra CPU {extra:.2f} s for "
            f"{box['sent']:,} heartbeats = {extra / max(1, box['sent']) * 1e6:,.0f} µs each"
        )
        print(
            f"the worker heard {heard:,.0f} of {box['sent']:,} sent, knows {known:,.0f} executors "
            f"(the probe included), malformed {malformed:,.0f}"
        )
    finally:
        worker.stop()


if __name__ == "__main__":
    main()
