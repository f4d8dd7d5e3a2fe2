"""Executors' figures (issue 20) on a real worker, each beside a floor measured in the same run.

* **Release after the last heartbeat**: ``--runs`` runs of one task, each claimed by its own
  executor with a lease of ``--lease-ms``; the bench heartbeats for all of them on
  ``runs.heartbeats`` (one producer, every lease / 4), then stops each executor's heartbeats at a
  time of its own. The figure is, per executor, the time from its last heartbeat (acknowledged by
  Kafka) to the ``task.released`` the owner appended (the record's timestamp, this machine's
  clock), next to the lease (the least it can be) and to the floor: a bare Kafka record's
  round trip (``acks=all``, produced and consumed here).
* **A claim over HTTP**: ``POST /api/v1/runs/{id}/tasks/{task}/claim`` on ready tasks, answered
  once the owner applied it, next to ``GET /healthz`` in the same run, both in a closed loop with
  ``--concurrency`` clients.

    .venv/bin/python bench/bench_executors.py
    .venv/bin/python bench/bench_executors.py --runs 100 --lease-ms 3000 --claims 2000

The worker's CPU for 1,000 heartbeating executors is ``bench/bench_heartbeats.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from tqdm import tqdm

from agents.producer import EventProducer
from bench.floors import kafka_floor, pct
from events import EventType, TaskClaimed, decode_record, make_event
from tests.harness import Worker, make_settings, prepare_topics, wait_healthy


def row(label: str, ms: list[float]) -> str:
    return (
        f"{label:<52} n={len(ms):<5} p50 {pct(ms, 50):8.2f}  p95 {pct(ms, 95):8.2f}  "
        f"p99 {pct(ms, 99):8.2f}  max {max(ms):8.2f} ms"
    )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def releases(s: Any, url: str, runs: int, lease_ms: int) -> list[float]:
    """Per executor: ms from its last acknowledged heartbeat to the release of its task."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        run_ids = []
        for i in range(runs):
            body = {"name": f"r{i}", "group": f"/project/bench/branch/b{i}", "tasks": [{"id": "t", "name": "t"}]}  # fmt: skip
            rid = (await http.post("/api/v1/runs", json=body)).json()["run"]["id"]
            assert (await http.put(f"/api/v1/runs/{rid}/actions", json={"action_type": "start"})).status_code == 204  # fmt: skip
            run_ids.append(rid)
    watch = AIOKafkaConsumer(s.topic_events, bootstrap_servers=s.kafka, auto_offset_reset="latest")
    await watch.start()
    await asyncio.sleep(1.0)
    beats = AIOKafkaProducer(bootstrap_servers=s.kafka, acks="all", linger_ms=0)
    await beats.start()
    last: dict[str, int] = {}

    async def beat(executor: str) -> None:
        value = orjson.dumps({"executor_id": executor, "lease_ms": lease_ms, "at": now_ms()})
        await beats.send_and_wait(s.topic_heartbeats, value, key=executor.encode())
        last[executor] = now_ms()

    executors = {rid: f"bench-ex-{i}" for i, rid in enumerate(run_ids)}
    async with EventProducer(s.kafka, s.topic_events) as producer:
        for rid, ex in executors.items():
            await beat(ex)
            data = TaskClaimed(task_id="t", executor_id=ex, lease_ms=lease_ms)
            await producer.append([make_event(data, id=f"claim-{ex}", run_id=rid, at=now_ms())])
    # Heartbeat everyone for two leases, then stop them one by one, 50 ms apart.
    stop_at = {ex: time.monotonic() + 2 * lease_ms / 1000 + i * 0.05 for i, ex in enumerate(executors.values())}  # fmt: skip
    got: dict[str, float] = {}
    bar = tqdm(total=runs, desc="releases", unit="run", file=sys.stderr)

    async def heartbeating() -> None:
        while any(time.monotonic() < t for t in stop_at.values()):
            for ex, t in stop_at.items():
                if time.monotonic() < t:
                    await beat(ex)
            await asyncio.sleep(lease_ms / 4000)

    async def watching() -> None:
        by_run = dict(executors.items())
        while len(got) < runs:
            batch = await watch.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    for e in decode_record(r.value):
                        if e.type is EventType.TASK_RELEASED and e.run_id in by_run:
                            ex = by_run[e.run_id]
                            if ex not in got:
                                got[ex] = r.timestamp - last[ex]
                                bar.update()

    try:
        await asyncio.wait_for(asyncio.gather(heartbeating(), watching()), timeout=runs * 0.05 + 6 * lease_ms / 1000 + 60)  # fmt: skip
    finally:
        bar.close()
        await beats.stop()
        await watch.stop()
    return list(got.values())


async def closed_loop(url: str, requests: list[tuple[str, str, Any]], concurrency: int, want: int) -> list[float]:  # fmt: skip
    out: list[float] = []
    queue = list(reversed(requests))

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            while queue:
                method, path, body = queue.pop()
                t = time.perf_counter()
                r = await http.request(method, path, json=body)
                out.append((time.perf_counter() - t) * 1000)
                assert r.status_code == want, (r.status_code, r.text)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return out


async def claims(url: str, n: int, concurrency: int) -> tuple[list[float], list[float]]:
    tasks_per_run = 10
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        todo = []
        for i in range((n + tasks_per_run - 1) // tasks_per_run):
            body = {"name": f"c{i}", "group": f"/project/claims/branch/c{i}", "tasks": [{"id": f"t{k}", "name": f"t{k}"} for k in range(tasks_per_run)]}  # fmt: skip
            rid = (await http.post("/api/v1/runs", json=body)).json()["run"]["id"]
            await http.put(f"/api/v1/runs/{rid}/actions", json={"action_type": "start"})
            for k in range(tasks_per_run):
                todo.append(("POST", f"/api/v1/runs/{rid}/tasks/t{k}/claim", {"executor_id": f"ex-{i}-{k}", "lease_ms": 600_000}))  # fmt: skip
    warm = await closed_loop(url, [("GET", "/healthz", None)] * 200, concurrency, 200)
    del warm
    base = await closed_loop(url, [("GET", "/healthz", None)] * n, concurrency, 200)
    claim = await closed_loop(url, todo[:n], concurrency, 200)
    return base, claim


async def amain(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-executors-"))
    unique = f"bex{uuid.uuid4().hex[:8]}"
    s = make_settings(unique, args.kafka, args.etcd, f"file://{tmp}/objects", partitions=4)
    s = dataclasses.replace(s, checkpoint_interval=5.0, topic_heartbeats=f"{unique}.heartbeats")
    await prepare_topics(s)
    worker = Worker(s, tmp / "w.log").start()
    url = f"http://127.0.0.1:{s.web_port}"
    try:
        await wait_healthy(url, within=120)
        floor = await kafka_floor(s.kafka, 200)
        released = await releases(s, url, args.runs, args.lease_ms)
        base, claim = await claims(url, args.claims, args.concurrency)
    finally:
        worker.stop()
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores)")
    print(row("floor: bare Kafka record round trip (acks=all)", floor))
    print(row(f"release after the last heartbeat (lease {args.lease_ms} ms)", released))
    over = [r - args.lease_ms for r in released]
    print(row("  of which past the lease", over))
    print(row(f"baseline GET /healthz (c={args.concurrency})", base))
    print(row(f"POST .../tasks/{{task}}/claim (c={args.concurrency})", claim))
    ok = pct(released, 99) <= args.lease_ms + 1000
    print(f"target release p99 within lease + 1 s: {'met' if ok else 'NOT met'} (p99 {pct(released, 99):.0f} ms, lease {args.lease_ms} ms)")  # fmt: skip
    print(f"claim p50/p99 {statistics.median(claim):.2f}/{pct(claim, 99):.2f} ms vs GET /healthz {statistics.median(base):.2f}/{pct(base, 99):.2f} ms")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--runs", type=int, default=50, help="executors that stop heartbeating (one run each)")  # fmt: skip
    p.add_argument("--lease-ms", type=int, default=2_000, help="the executors' lease")
    p.add_argument("--claims", type=int, default=1_000, help="claims over HTTP")
    p.add_argument("--concurrency", type=int, default=4, help="HTTP clients in a closed loop")
    p.add_argument("--kafka", default=os.environ.get("RUNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    p.add_argument("--etcd", default=os.environ.get("RUNSTREAM_ETCD_ENDPOINT", "127.0.0.1:2379"))
    asyncio.run(amain(p.parse_args()))


if __name__ == "__main__":
    main()
