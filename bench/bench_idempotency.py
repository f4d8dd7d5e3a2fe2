"""What an ``Idempotency-Key`` costs a creation: ``POST /runs`` with a fresh key per request
next to the same without one, on one real worker (one-partition topics: it owns every run), and
a retried creation (the same key again: answered from the key's record and the run's live state).

The load comes from a separate process on loopback (aiohttp, ``--concurrency`` connections in a
closed loop). The two kinds are paired: every connection alternates a creation with a new key and
one without, so both see the same moment of the machine (its checkpoints, its GC, the broker's
flushes) and their difference is the key's alone; ``--rounds`` rounds of ``--seconds`` each,
after ``--warmup`` seconds not counted. A phase of retried keys follows. The load
average is printed before and after: the figures are only as quiet as the machine.

    .venv/bin/python bench/bench_idempotency.py                 # 4 s per phase, 3 rounds, c=8
    .venv/bin/python bench/bench_idempotency.py --seconds 6 --rounds 3 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import Worker, make_settings, prepare_topics, wait_healthy

BODY = {
    "name": "build",
    "group": "/project/bench/branch/idem",
    "tasks": [
        {"id": "checkout", "name": "checkout"},
        {"id": "test", "name": "test", "depends": [{"task_id": "checkout"}]},
    ],
}
MODES = ("none", "fresh", "retry")  # "paired" alternates the first two


async def _load(url: str, mode: str, seconds: float, concurrency: int) -> dict[str, Any]:
    """Creations for ``seconds``: ``none`` without a key, ``fresh`` a new key per request,
    ``retry`` one key per connection (its first request creates, every other is a retry)."""
    import aiohttp

    body = json.dumps(BODY).encode()
    latencies: dict[str, list[float]] = {}
    errors = 0
    deadline = time.perf_counter() + seconds
    tag = uuid.uuid4().hex[:8]
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=concurrency)) as session:  # fmt: skip

        async def worker(i: int) -> None:
            nonlocal errors
            n = 0
            while time.perf_counter() < deadline:
                headers = {"Content-Type": "application/json"}
                kind = mode
                if mode == "paired":  # alternate, starting at a different kind per connection
                    kind = "fresh" if (n + i) % 2 else "none"
                if kind == "fresh":
                    headers["Idempotency-Key"] = f"bench-{tag}-{i}-{n}"
                elif kind == "retry":
                    headers["Idempotency-Key"] = f"bench-{tag}-{i}"
                n += 1
                t0 = time.perf_counter()
                async with session.post("/api/v1/runs", data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 201:
                        errors += 1
                latencies.setdefault(kind, []).append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    total = sum(len(v) for v in latencies.values())
    return {kind: _summary(v, errors, total / elapsed) for kind, v in latencies.items()}


def _summary(latencies: list[float], errors: int, rps: float) -> dict[str, Any]:
    latencies.sort()
    n = len(latencies)

    def at(q: float) -> float:
        return latencies[min(n - 1, int(n * q))] * 1000 if n else float("nan")

    return {"requests": n, "errors": errors, "rps": rps, "p50_ms": at(0.5), "p95_ms": at(0.95), "p99_ms": at(0.99)}  # fmt: skip


def drive(url: str, mode: str, seconds: float, concurrency: int) -> dict[str, Any]:
    """``_load`` in a separate process (the worker's CPU is not shared with the load's)."""
    out = subprocess.run(
        [sys.executable, __file__, "--load", url, mode, str(seconds), str(concurrency)],
        check=True,
        stdout=subprocess.PIPE,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def line(name: str, s: dict[str, Any]) -> str:
    return (
        f"{name:<44} p50 {s['p50_ms']:6.2f} ms  p95 {s['p95_ms']:6.2f} ms  p99 {s['p99_ms']:6.2f} ms"
        f"  ({s['requests']:,} requests, {s['rps']:,.0f} req/s both kinds, {s['errors']} errors)"
    )


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} cores)"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        url, mode, seconds, conc = sys.argv[2:]
        print(json.dumps(asyncio.run(_load(url, mode, float(seconds), int(conc)))))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--seconds", type=float, default=4.0, help="duration of each load phase")
    p.add_argument(
        "--rounds", type=int, default=3, help="paired phases (no key and a new key, alternating)"
    )
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of creations first, not counted")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=8, help="connections")
    p.add_argument("--kafka", default=os.environ.get("RUNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    p.add_argument("--etcd", default=os.environ.get("RUNSTREAM_ETCD_ENDPOINT", "127.0.0.1:2379"))
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-idem-"))
    unique = f"bidem{uuid.uuid4().hex[:8]}"
    s = make_settings(unique, args.kafka, args.etcd, f"file://{tmp}/objects", partitions=1)
    s = dataclasses.replace(s, checkpoint_interval=5.0)
    asyncio.run(prepare_topics(s))
    worker = Worker(s, tmp / "w.log").start()
    url = f"http://127.0.0.1:{s.web_port}"
    try:
        asyncio.run(wait_healthy(url, within=120))
        c, secs = args.concurrency, args.seconds
        print(f"load average before: {load_average()}")
        if args.warmup > 0:
            drive(url, "fresh", args.warmup, c)
        got: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
        for _ in range(args.rounds):
            paired = drive(url, "paired", secs, c)
            got["none"].append(paired["none"])
            got["fresh"].append(paired["fresh"])
        got["retry"].append(drive(url, "retry", secs, c)["retry"])
        print(f"load average after:  {load_average()}")
        names = {
            "none": "POST /runs, no key",
            "fresh": "POST /runs, a new Idempotency-Key",
            "retry": "POST /runs, a retried key",
        }
        for i in range(args.rounds):
            for mode in ("none", "fresh"):
                print(line(f"{names[mode]} #{i + 1} (c={c})", got[mode][i]))
        print(line(f"{names['retry']} (c={c})", got["retry"][0]))
        q = {m: {k: statistics.median(r[k] for r in got[m]) for k in ("p50_ms", "p95_ms", "p99_ms")} for m in MODES}  # fmt: skip
        extra = q["fresh"]["p99_ms"] - q["none"]["p99_ms"]
        print(
            f"median over rounds: p50 {q['none']['p50_ms']:.2f} → {q['fresh']['p50_ms']:.2f} ms, "
            f"p95 {q['none']['p95_ms']:.2f} → {q['fresh']['p95_ms']:.2f} ms, "
            f"p99 {q['none']['p99_ms']:.2f} → {q['fresh']['p99_ms']:.2f} ms with a key "
            f"({extra:+.2f} ms at p99); a retried creation p50 {q['retry']['p50_ms']:.2f} ms, "
            f"p99 {q['retry']['p99_ms']:.2f} ms"
        )
        print(f"target a key adds at most 2 ms at p99: {'met' if extra <= 2 else 'NOT met'}")
    finally:
        worker.stop()


if __name__ == "__main__":
    main()
