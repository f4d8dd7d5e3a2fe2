"""SSE figures: one worker-like server process streaming ``runs.phases`` to many clients.

The server (a separate process) serves ``GET /api/v1/runs/events`` with ``api.sse.EventStream``
over either feed:

* ``hub``: ``agents.phasefeed.PhaseHub``, one consumer for every client (what a worker runs);
* ``per-client``: the earlier feed, one bare consumer per client (the baseline, same run).

The clients (another process, aiohttp) open ``--clients`` streams from now on; this process then
writes ``--changes`` ``run.phase_changed`` records straight to a fresh ``runs.phases``-like topic
on the local Kafka at ``--rate`` per second, waits until every client has every change, and checks
that each got each change exactly once. Printed per scenario: the server's CPU seconds for the
whole delivery (``/proc/<pid>/stat``, user + system), its idle CPU per second with the clients
connected, the delivery latency (write → client, from the event's ``at`` in ms, so ±1 ms), and for
the hub how long the server takes to stop after SIGTERM with the clients connected (``close()``
then the aiohttp runner's cleanup).

    .venv/bin/python bench/bench_sse.py                          # 1 and 500 clients, both feeds
    .venv/bin/python bench/bench_sse.py --clients 500 --feeds hub --changes 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PARTITIONS = 4
PATH = "/api/v1/runs/events"
FIELDS = re.compile(rb'"run_id":"([0-9]+)","at":([0-9]+)')


# ------------------------------------------------------------------------------ server process


class PerClientFeed:
    """The feed before ``PhaseHub``: one bare consumer per follower (the baseline)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic

    async def follow(self, after: str | None) -> AsyncIterator[tuple[str, Any]]:
        from agents.kafka import bare_consumer

        assert after is None
        return self._stream(bare_consumer(self.bootstrap))

    async def _stream(self, consumer_cm: Any) -> AsyncIterator[tuple[str, Any]]:
        from agents.kafka import assign_at, log_bounds, partitions_of
        from agents.phasefeed import _phase_events, encode_feed_cursor

        async with consumer_cm as consumer:
            parts = await partitions_of(consumer, self.topic)
            _, ends = await log_bounds(consumer, self.topic, parts)
            positions = [ends[p] for p in parts]
            assign_at(consumer, self.topic, ends)
            while True:
                batch = await consumer.getmany(timeout_ms=1000, max_records=1000)
                for tp, msgs in batch.items():
                    for m in msgs:
                        positions[tp.partition] = m.offset + 1
                        for ev in _phase_events(m.value):
                            yield encode_feed_cursor(positions), ev


async def serve(bootstrap: str, topic: str, feed_kind: str) -> None:
    from aiohttp import web

    from agents.phasefeed import PhaseHub
    from api.sse import EventStream

    feed: Any = (
        PhaseHub(bootstrap, topic) if feed_kind == "hub" else PerClientFeed(bootstrap, topic)
    )
    if feed_kind == "hub":
        await feed.start()
    app = web.Application()
    app.router.add_get(PATH, EventStream(feed, heartbeat=15.0).handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=60.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(json.dumps({"port": port}), flush=True)
    await stop.wait()
    if feed_kind == "hub":
        await feed.close()  # what the worker does on shutdown: every stream ends at once
    await runner.cleanup()


# ------------------------------------------------------------------------------ client process


async def clients(url: str, n: int, changes: int) -> dict[str, Any]:
    import aiohttp

    opened = 0
    all_open = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=60)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as session:

        async def one() -> tuple[int, int, list[float]]:
            nonlocal opened
            async with session.get(url) as resp:
                assert resp.status == 200, resp.status
                assert (await resp.content.readline()).startswith(b": stream open")
                opened += 1
                if opened == n:
                    all_open.set()
                ids: set[bytes] = set()
                dups = 0
                lat: list[float] = []
                rest = b""
                async for chunk in resp.content.iter_any():  # cheap parsing: the client's CPU
                    now = time.time() * 1000  # is the machine's too, and it is shared
                    *frames, rest = (rest + chunk).split(b"\n\n")
                    for fr in frames:
                        m = FIELDS.search(fr)
                        if m is None:
                            continue  # a comment (keepalive)
                        dups += m[1] in ids
                        ids.add(m[1])
                        lat.append(now - int(m[2]))
                    if len(ids) >= changes:
                        break
                return len(ids), dups, lat

        tasks = []
        for i in range(n):
            tasks.append(asyncio.ensure_future(one()))
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # do not flood the listen backlog
        await all_open.wait()
        print("connected", flush=True)
        results = await asyncio.gather(*tasks)
    lat = sorted(x for _, _, ls in results for x in ls)
    return {
        "complete": sum(1 for got, _, _ in results if got == changes),
        "duplicates": sum(d for _, d, _ in results),
        "p50_ms": lat[len(lat) // 2] if lat else -1,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else -1,
    }


# ------------------------------------------------------------------------------ driver


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def make_topic(bootstrap: str) -> str:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from agents.kafka import bare_consumer, partitions_of

    topic = f"bench-sse-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)]
        )
    finally:
        await admin.close()
    async with bare_consumer(bootstrap) as c:
        for _ in range(100):
            if len(await partitions_of(c, topic)) == PARTITIONS:
                return topic
            await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} never got its partitions")


async def produce(bootstrap: str, topic: str, changes: int, rate: float, base: int) -> None:
    from aiokafka import AIOKafkaProducer

    from events import Phase, PhaseChanged, Result, encode, make_event

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        started = time.perf_counter()
        for i in range(changes):
            due = started + i / rate
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            n = base + i
            data = PhaseChanged(group="/project/b/branch/main", phase=Phase.QUEUED, result=Result.UNKNOWN, seq=1)  # fmt: skip
            ev = make_event(data, id=f"{n:016d}.phase.1", run_id=f"{n:016d}", at=int(time.time() * 1000))  # fmt: skip
            await producer.send(topic, encode(ev), partition=n % PARTITIONS)
        await producer.flush()
    finally:
        await producer.stop()


async def scenario(args: argparse.Namespace, topic: str, feed: str, n: int, base: int) -> dict[str, Any]:  # fmt: skip
    server = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", args.bootstrap, topic, feed, stdout=subprocess.PIPE
    )
    assert server.stdout is not None
    port = json.loads(await server.stdout.readline())["port"]
    client = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--clients-of", f"http://127.0.0.1:{port}{PATH}", str(n),
        str(args.changes), stdout=subprocess.PIPE,
    )  # fmt: skip
    assert client.stdout is not None
    try:
        assert (await client.stdout.readline()).strip() == b"connected"
        idle0, t0 = cpu_seconds(server.pid), time.perf_counter()
        await asyncio.sleep(args.idle)
        idle = (cpu_seconds(server.pid) - idle0) / (time.perf_counter() - t0)
        c0 = cpu_seconds(server.pid)
        await produce(args.bootstrap, topic, args.changes, args.rate, base)
        stats: dict[str, Any] = json.loads(await client.stdout.readline())
        stats["cpu_s"] = cpu_seconds(server.pid) - c0
        stats["idle_cpu_per_s"] = idle
        stats["stop_s"] = None
        if feed == "hub":  # the per-client feed never ends its streams: aiohttp's timeout would
            stop0 = time.perf_counter()
            server.send_signal(signal.SIGTERM)
            await server.wait()
            stats["stop_s"] = time.perf_counter() - stop0
        await client.wait()
    finally:
        for proc in (client, server):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    return stats


def line(feed: str, n: int, s: dict[str, Any], changes: int, base: dict[str, Any] | None) -> str:
    ratio = (
        f"  {s['cpu_s'] / base['cpu_s']:.1f}× the 1-client CPU" if base and base["cpu_s"] else ""
    )
    stop = f"  stop after SIGTERM {s['stop_s']:.2f} s" if s["stop_s"] is not None else ""
    ok = s["complete"] == n and s["duplicates"] == 0
    return (
        f"{feed:<10} {n:>4} clients  all got all {changes}: {ok!s:<5} "
        f"(complete {s['complete']}, dup {s['duplicates']})  server CPU {s['cpu_s']:6.2f} s"
        f"  idle {s['idle_cpu_per_s'] * 100:4.1f}% of a core  latency p50 {s['p50_ms']:5.1f} ms"
        f"  p99 {s['p99_ms']:6.1f} ms{stop}{ratio}"
    )


async def bench(args: argparse.Namespace) -> None:
    print(f"{args.changes} phase changes at {args.rate:.0f}/s over {PARTITIONS} partitions")
    base = 1
    for feed in args.feeds.split(","):
        one: dict[str, Any] | None = None
        for n in (1, args.clients):
            topic = await make_topic(args.bootstrap)
            s = await scenario(args, topic, feed, n, base)
            base += args.changes
            print(line(feed, n, s, args.changes, one), flush=True)
            one = one or s


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        asyncio.run(serve(*sys.argv[2:5]))
        return
    if sys.argv[1:2] == ["--clients-of"]:
        url, n, changes = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        print(json.dumps(asyncio.run(clients(url, n, changes))), flush=True)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bootstrap", default=os.environ.get("RUNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))  # fmt: skip
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--changes", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=250.0, help="phase changes written per second")
    ap.add_argument("--idle", type=float, default=3.0, help="seconds of idle CPU measured")
    ap.add_argument("--feeds", default="hub,per-client", help="hub, per-client or both")
    asyncio.run(bench(ap.parse_args()))


if __name__ == "__main__":
    main()
