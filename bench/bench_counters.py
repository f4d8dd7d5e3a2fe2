"""Run numbers: creations per second through the API with counters (etcd) and without, same run.

The API is served over HTTP on a loopback port by ``api.create_api`` with in-memory owners that
apply a creation at once (``tests.fakes_api``), so the figure isolates what a run number adds to
a creation: one etcd compare-and-swap at the owner (shared by concurrent creations of a root
group). The log's append is not in either figure (``bench/bench_api.py`` measures real workers:
its creation costs milliseconds more, against which the counter's share is smaller still).

    set -a; eval "$(deploy/local env | sed 's/^export //')"; set +a
    .venv/bin/python bench/bench_counters.py [--runs 3000] [--concurrency 1,16] [--roots 1]

Prints, per concurrency: creations/s without and with counters, the ratio, the etcd swaps per
creation, and the p50/p99 latency of a creation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api import create_api
from datamanager import Counters, EtcdKv
from tests.fakes_api import Fakes

BODY = {"name": "ci", "tasks": [{"id": "a", "name": "a"}, {"id": "b", "name": "b", "depends": [{"task_id": "a"}]}]}  # fmt: skip


async def _round(counters: Counters | None, runs: int, concurrency: int, roots: int) -> dict[str, float]:  # fmt: skip
    fakes = Fakes()
    app = create_api(replace(fakes.deps(), counters=counters))
    server = TestServer(app)
    await server.start_server()
    url = str(server.make_url("/api/v1/runs"))
    latencies: list[float] = []
    todo = iter(range(runs))
    tag = uuid.uuid4().hex[:8]
    async with aiohttp.ClientSession() as http:

        async def client() -> None:
            for i in todo:
                body = {**BODY, "group": f"/project/bench{tag}{i % roots}/branch/main"}
                t0 = time.perf_counter()
                async with http.post(url, json=body) as resp:
                    assert resp.status == 201, await resp.text()
                    await resp.read()
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    await server.close()
    latencies.sort()
    return {
        "per_s": runs / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--runs", type=int, default=3000)
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--roots", type=int, default=1, help="root groups the creations spread over")
    args = ap.parse_args()
    etcd = os.environ.get("RUNSTREAM_ETCD_ENDPOINT", "127.0.0.1:2379")
    kv = EtcdKv(etcd, prefix=f"/bench/counters/{uuid.uuid4().hex[:8]}/")
    print(f"{args.runs} creations a round through POST /api/v1/runs; etcd {etcd}")
    print("concurrency  without/s  with/s  ratio  swaps/creation  p50 ms (without → with)  p99 ms")
    try:
        for c in (int(x) for x in args.concurrency.split(",")):
            await _round(None, min(300, args.runs), c, args.roots)  # warm-up
            without = await _round(None, args.runs, c, args.roots)
            counters = Counters(kv)
            with_ = await _round(counters, args.runs, c, args.roots)
            print(
                f"{c:>11}  {without['per_s']:>9.0f}  {with_['per_s']:>6.0f}  "
                f"{with_['per_s'] / without['per_s']:>5.2f}  {counters.swaps / args.runs:>14.2f}  "
                f"{without['p50_ms']:>6.2f} → {with_['p50_ms']:<6.2f}            "
                f"{without['p99_ms']:.2f} → {with_['p99_ms']:.2f}"
            )
    finally:
        await kv.close()


if __name__ == "__main__":
    asyncio.run(main())
