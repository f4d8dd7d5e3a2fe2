"""A worker's resident set over time under a steady load of runs that end (issue 23: "RSS grew
from 122 to 273 MB over an hour of mostly finished runs").

One worker on topics of its own takes ``--rate`` events/s of ``agents.workload`` (runs created,
started, their tasks running and ending; 64 in flight at a time, so nearly every run is
finished) for ``--minutes``. Every ``--every`` seconds it prints the worker's RSS
(``/proc/<pid>/status``), the runs in its index (``runstream_index_runs``) and the events
acknowledged. At the end: the RSS slope per run indexed from the first reading to the last,
beside the floor measured in the same run: the bytes the worker's run index holds per run
(``runstream_index_bytes``: every worker indexes every run, so that much per run it must keep),
and the growth per hour at this rate.

The figure is the slope of a least-squares line through every reading, so a checkpoint's
transient buffers or a trim that falls just before a reading weigh little.

    .venv/bin/python bench/bench_rss.py                        # 10 minutes at 2,000 events/s
    .venv/bin/python bench/bench_rss.py --minutes 3 --rate 1000

Needs the local stack (``deploy/local up``; ``eval "$(deploy/local env)"``).
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
from tqdm import tqdm

from agents.config import Settings
from bench.bench_latency import Background, own_topics
from bench.bench_memory import rss
from tests.harness import Worker, make_settings, prepare_topics, wait_healthy


def _gauge(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def slope(points: list[tuple[float, float]]) -> float:
    """The least-squares slope of ``(x, y)`` points."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else float("nan")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long the load runs")
    ap.add_argument("--rate", type=int, default=2000, help="events/s of runs that end")
    ap.add_argument("--every", type=float, default=20.0, help="seconds between two readings")
    ap.add_argument(
        "--kafka", default=os.environ.get("RUNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    )
    ap.add_argument("--etcd", default=os.environ.get("RUNSTREAM_ETCD_ENDPOINT", "127.0.0.1:2379"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-rss-"))
    unique = f"brss{uuid.uuid4().hex[:8]}"
    s = make_settings(unique, args.kafka, args.etcd, f"file://{tmp}/objects")
    # A worker's own checkpoint interval, not the tests' short one.
    s = own_topics(dataclasses.replace(s, checkpoint_interval=Settings().checkpoint_interval), unique)  # fmt: skip
    await prepare_topics(s)
    worker = Worker(s, tmp / "worker.log").start()
    url = f"http://127.0.0.1:{s.web_port}"
    readings: list[tuple[float, int, float]] = []  # (seconds, RSS bytes, runs indexed)
    index_bytes: list[tuple[float, float]] = []  # (runs indexed, bytes the index holds)
    try:
        await wait_healthy(url, within=120)
        assert worker.proc is not None
        pid = worker.proc.pid
        bg = Background(s, args.rate)
        await bg.start()
        started = time.monotonic()
        total = int(args.minutes * 60)
        try:
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                with tqdm(total=total, unit="s", desc="load") as bar:
                    while (elapsed := time.monotonic() - started) < total:
                        await asyncio.sleep(min(args.every, total - elapsed))
                        text = (await http.get("/metrics")).text
                        runs = _gauge(text, "runstream_index_runs")
                        held = _gauge(text, "runstream_index_bytes")
                        if runs is not None and held is not None:
                            index_bytes.append((runs, held))
                        t = time.monotonic() - started
                        readings.append((t, rss(pid), runs or 0.0))
                        bar.update(round(t) - bar.n)
                        tqdm.write(
                            f"{t:6.0f} s  RSS {readings[-1][1] / 2**20:7.1f} MiB  "
                            f"runs indexed {runs or 0:>9,.0f}  events acknowledged {bg.acked:,}"
                        )
        finally:
            rate = await bg.stop()
    finally:
        worker.stop()
    load = os.getloadavg()
    per_run = slope([(r, b) for _, b, r in readings])
    per_s = slope([(t, b) for t, b, _ in readings])
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores); {rate:,.0f} events/s achieved (asked {args.rate:,})")  # fmt: skip
    print(f"RSS {readings[0][1] / 2**20:.1f} MiB at {readings[0][0]:.0f} s → {readings[-1][1] / 2**20:.1f} MiB at {readings[-1][0]:.0f} s; runs indexed {readings[0][2]:,.0f} → {readings[-1][2]:,.0f}")  # fmt: skip
    print(f"RSS slope per run (least squares over {len(readings)} readings): {per_run:,.0f} bytes")  # fmt: skip
    if len(index_bytes) > 1:
        floor = slope(index_bytes)
        print(f"floor: the run index's own bytes per run (runstream_index_bytes): {floor:,.0f} bytes; ratio {per_run / floor:.1f}")  # fmt: skip
    print(f"RSS growth per hour at this rate: {per_s * 3600 / 2**20:,.0f} MiB")
    print(f"logs under {tmp}")


if __name__ == "__main__":
    asyncio.run(main())
