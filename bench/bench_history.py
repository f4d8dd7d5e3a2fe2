"""A run's history: what it costs in storage and how fast it is read, beside ``GET /runs/{id}``.

One ``runstream worker`` on the local stack (posix storage, one partition), ``--runs`` runs of
``--events`` events each (a creation and task annotation changes, every one applied) written to
the log, then, once the worker has checkpointed them (warm: the runs are active, their histories
in memory as after any write):

* storage: the ``history`` datatype's stored value per run and per event (before compression) and
  its data files' size on disk (zstd blocks) per run;
* latency: ``--reads`` sequential ``GET /api/v1/runs/{id}/history`` on random runs, p50 / p99,
  beside the same number of ``GET /api/v1/runs/{id}`` (the baseline: one run's state from the
  same owner) in the same process, and the same reads after a restart (cold: the history is read
  back from the data files).

    .venv/bin/python bench/bench_history.py
    .venv/bin/python bench/bench_history.py --runs 50 --events 100 --reads 500
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from agents.resources import Resources
from datamanager.keys import tail_datatype
from events import Event, TaskAnnotationsSet, format_run_id
from partition.history import HISTORY
from partition.materializer import partition_name
from tests.harness import Worker, caught_up, make_settings, prepare_topics, wait_until
from tests.integration.test_pipeline import produce
from tests.unit.test_events_support import created, ev, task


def workload(runs: int, per_run: int) -> list[Event]:
    out: list[Event] = []
    for n in range(1, runs + 1):
        r = format_run_id(n)
        out.append(ev(created(task("build"), task("test", "build")), run_id=r))
        for i in range(per_run - 1):
            data = TaskAnnotationsSet(task_id="build", annotations={"step": str(i)})
            out.append(ev(data, run_id=r))
    return out


async def healthy(port: int) -> bool:
    try:
        async with httpx.AsyncClient() as c:
            return (await c.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
    except httpx.HTTPError:
        return False


async def latencies(port: int, paths: list[str]) -> list[float]:
    out = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        for path in paths[:20]:  # warm the connection and the code paths
            (await c.get(path)).raise_for_status()
        for path in paths:
            t = time.perf_counter()
            r = await c.get(path)
            out.append(time.perf_counter() - t)
            r.raise_for_status()
    return out


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q) - 1] * 1000 if len(xs) > 1 else xs[0] * 1000


async def main(args: argparse.Namespace) -> None:
    env = os.environ
    tmp = Path(tempfile.mkdtemp(prefix="bench-history-"))
    s = make_settings(
        "bh" + uuid.uuid4().hex[:8],
        env.get("RUNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        env.get("RUNSTREAM_ETCD_ENDPOINT", "127.0.0.1:2379"),
        f"file://{tmp}/objects",
        partitions=1,
        log_level="warning",
    )
    await prepare_topics(s)
    events = workload(args.runs, args.events)
    await produce(s.kafka, s.topic_events, events)
    resources = Resources(s)
    rng = random.Random(7)
    picks = [format_run_id(rng.randint(1, args.runs)) for _ in range(args.reads)]
    hist = [f"/api/v1/runs/{r}/history" for r in picks]
    state = [f"/api/v1/runs/{r}" for r in picks]
    figures: dict[str, list[float]] = {}
    for phase in ("warm", "cold"):
        worker = Worker(s, tmp / "worker.log").start()
        try:
            await wait_until(lambda: caught_up(s, resources), within=300, what="checkpoints")
            await wait_until(lambda: healthy(s.web_port), within=120, what="/healthz")
            figures[f"{phase} GET /runs/{{id}}/history"] = await latencies(s.web_port, hist)
            figures[f"{phase} GET /runs/{{id}} (baseline)"] = await latencies(s.web_port, state)
        finally:
            worker.stop()
    dm = await resources.datamanager()
    snap = await dm.read_partition(partition_name(s.topic_events, 0))
    values = await snap.load(HISTORY)  # the appended files not folded yet included
    datatypes = (HISTORY, tail_datatype(HISTORY))
    raw = sum(len(v) for _, v in values)
    files = sum(f.size for dt in datatypes for f in snap.manifest.files.get(dt, ()))
    n_events = len(events)
    print(
        f"{args.runs} runs x {args.events} events, {args.reads} reads each (sequential, loopback)"
    )
    print(f"history storage: {raw / args.runs:,.0f} bytes/run, {raw / n_events:,.1f} bytes/event "
          f"stored; {files / args.runs:,.0f} bytes/run on disk (zstd data files)")  # fmt: skip
    print(f"{'request':<40} {'p50 ms':>8} {'p99 ms':>8}")
    for name, xs in figures.items():
        print(f"{name:<40} {pct(xs, 50):8.2f} {pct(xs, 99):8.2f}")
    for phase in ("warm", "cold"):
        h = pct(figures[f"{phase} GET /runs/{{id}}/history"], 99)
        b = pct(figures[f"{phase} GET /runs/{{id}} (baseline)"], 99)
        print(f"{phase}: history p99 / baseline p99 = {h / b:.2f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--events", type=int, default=100)
    p.add_argument("--reads", type=int, default=500)
    asyncio.run(main(p.parse_args()))
