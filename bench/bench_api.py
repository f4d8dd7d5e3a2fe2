"""HTTP API figures: run creation and a one-group 25-run listing, each beside a baseline
(``GET /healthz`` on the same server) measured in the same run.

The API runs in this process (one service process, one event loop) over: an index pre-filled
with ``--runs`` runs, an in-memory ``RunSource``, and for creation an ``EventSink`` that is the
in-memory fake and/or the real ``agents.producer.EventProducer`` on a fresh topic of the local
Kafka, an ``IdSource`` that is the real ``datamanager.IdAllocator`` on the local etcd (or an
in-memory counter with ``--ids memory``). The load comes from a separate Python process on
loopback (aiohttp client, ``--concurrency`` connections in a closed loop); latencies are measured
by that client, so they include its own overhead.

    .venv/bin/python bench/bench_api.py                      # memory and kafka sinks, etcd ids
    .venv/bin/python bench/bench_api.py --sinks memory --ids memory --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web
from tqdm import tqdm

from api import create_api
from events import Phase, Result
from tests.fakes_api import Fakes

GROUPS = 1000
HOT_GROUP = "/project/p7/branch/main"
BODY = {
    "name": "build",
    "group": HOT_GROUP,
    "tasks": [
        {"id": "checkout", "name": "checkout", "steps": [{"run": "git clone"}]},
        {
            "id": "test",
            "name": "test",
            "depends": [{"task_id": "checkout"}],
            "steps": [{"run": "make test"}],
        },
        {
            "id": "lint",
            "name": "lint",
            "depends": [{"task_id": "checkout"}],
            "steps": [{"run": "make lint"}],
        },
    ],
    "environment": {"CI": "true"},
    "static_environment": {"GIT_SHA": "deadbeef"},
    "annotations": {"branch": "main"},
}


# ------------------------------------------------------------------------------ load process


async def _load(url: str, method: str, path: str, body: bytes | None, seconds: float, concurrency: int, expect: int) -> dict[str, Any]:  # fmt: skip
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    headers = {"Content-Type": "application/json"} if body else {}
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=conn) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                async with session.request(method, path, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != expect:
                        errors += 1
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "errors": errors,
        "rps": n / elapsed,
        "p50_ms": latencies[n // 2] * 1000,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000,
    }


def load_main(argv: list[str]) -> None:
    url, method, path, body, seconds, conc, expect = argv
    stats = asyncio.run(_load(url, method, path, body.encode() or None, float(seconds), int(conc), int(expect)))  # fmt: skip
    print(json.dumps(stats))


async def drive(url: str, method: str, path: str, body: bytes, seconds: float, concurrency: int, expect: int) -> dict[str, Any]:  # fmt: skip
    """Run the load in a separate process; the server keeps serving in this loop meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--load",
        url,
        method,
        path,
        body.decode(),
        str(seconds),
        str(concurrency),
        str(expect),
        stdout=subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    result: dict[str, Any] = json.loads(out)
    return result


# ------------------------------------------------------------------------------ service side


class CountingSink:
    """An in-memory ``EventSink`` that counts (a sink that kept every event would grow the heap
    and time the garbage collector, not the API)."""

    def __init__(self) -> None:
        self.count = 0

    async def append(self, events: Any) -> None:
        self.count += len(events)


def prefill(fakes: Fakes, runs: int) -> None:
    rng = random.Random(7)
    groups = [HOT_GROUP] + [f"/project/p{i % 97}/branch/b{i}" for i in range(1, GROUPS)]
    for run_id in tqdm(range(1, runs + 1), desc="index prefill", unit="run", mininterval=0.5):
        fakes.index.apply(run_id, rng.choice(groups), Phase.FINISHED, Result.SUCCESS, 2)


async def kafka_sink(bootstrap: str) -> Any:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from agents.producer import EventProducer

    topic = f"bench-api-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    finally:
        await admin.close()
    producer = EventProducer(bootstrap, topic)
    for _ in range(50):  # metadata for a fresh topic takes a moment
        try:
            await producer.start()
            return producer, topic
        except RuntimeError:
            await producer.stop()
            producer = EventProducer(bootstrap, topic)
            await asyncio.sleep(0.2)
    raise RuntimeError(f"topic {topic} never got partitions")


async def etcd_ids(endpoint: str) -> Any:
    from datamanager.etcd import EtcdKv
    from datamanager.sequence import IdAllocator

    kv = EtcdKv(endpoint, f"/bench-api/{uuid.uuid4().hex[:8]}/")
    return kv, IdAllocator(kv, "runs/seq", block=1000, start=10_000_000)


async def serve(fakes: Fakes) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(create_api(fakes.deps()), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def line(name: str, s: dict[str, Any], base: dict[str, Any] | None = None) -> str:
    ratio = f"  {s['rps'] / base['rps']:.2f}× baseline rps" if base else ""
    return (
        f"{name:<34} {s['rps']:>8,.0f} req/s  p50 {s['p50_ms']:6.2f} ms  p99 {s['p99_ms']:6.2f} ms"
        f"  ({s['requests']:,} requests, {s['errors']} errors){ratio}"
    )


async def bench(args: argparse.Namespace) -> None:
    fakes = Fakes()
    prefill(fakes, args.runs)
    kv = None
    if args.ids == "etcd":
        kv, fakes.ids = await etcd_ids(args.etcd)  # type: ignore[assignment]
    memory_sink = CountingSink()
    fakes.sink = memory_sink  # type: ignore[assignment]
    runner, url = await serve(fakes)
    body = json.dumps(BODY).encode()
    c, secs = args.concurrency, args.seconds
    list_path = f"/api/v1/runs?group={HOT_GROUP}&limit=25"
    print(f"API on {url}; index {len(fakes.index):,} runs in {GROUPS} groups; ids: {args.ids}; "
          f"load: separate process, {c} connections, {secs:.0f}s per phase")  # fmt: skip
    try:
        base = await drive(url, "GET", "/healthz", b"", secs, c, 200)
        print(line("baseline GET /healthz", base))
        listing = await drive(url, "GET", list_path, b"", secs, args.list_concurrency, 200)
        base_l = await drive(url, "GET", "/healthz", b"", secs, args.list_concurrency, 200)
        print(line(f"baseline GET /healthz (c={args.list_concurrency})", base_l))
        print(line(f"list one group, 25 newest (c={args.list_concurrency})", listing, base_l))
        for sink in args.sinks:
            producer = None
            if sink == "kafka":
                producer, topic = await kafka_sink(args.kafka)
                fakes.sink = producer  # type: ignore[assignment]
                runner_k, url_k = await serve(fakes)  # deps are read at create_api time
            else:
                runner_k, url_k = runner, url
            before = memory_sink.count
            created = await drive(url_k, "POST", "/api/v1/runs", body, secs, c, 201)
            where = f"Kafka topic {topic}" if producer else f"memory ({memory_sink.count - before:,} events)"  # fmt: skip
            print(line(f"POST /runs, sink {sink}", created, base) + f"  → {where}")
            if producer is not None:
                await runner_k.cleanup()
                await producer.stop()
    finally:
        await runner.cleanup()
        if kv is not None:
            await kv.close()
    print("targets: creation ≥ 1,500 req/s with p99 ≤ 50 ms; listing p99 ≤ 10 ms")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        load_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--runs", type=int, default=100_000, help="runs pre-filled in the index")
    p.add_argument("--seconds", type=float, default=8.0, help="duration of each load phase")
    p.add_argument("--concurrency", type=int, default=32, help="connections for creation")
    p.add_argument("--list-concurrency", type=int, default=8, help="connections for listing")
    p.add_argument("--sinks", nargs="+", choices=("memory", "kafka"), default=["memory", "kafka"])
    p.add_argument("--ids", choices=("etcd", "memory"), default="etcd")
    p.add_argument("--kafka", default="127.0.0.1:9092")
    p.add_argument("--etcd", default="127.0.0.1:2379")
    args = p.parse_args()
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
