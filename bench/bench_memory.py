"""Memory per active run (issue 23) on a real worker, beside what the run's state takes stored.

A worker is started on topics of its own; ``--runs`` runs of ``--tasks`` tasks each (a chain,
shaped like ``agents.workload``'s: each task a small environment, the run an environment, a
static environment and an annotation) are created, started, their first task claimed by one of
``EXECUTORS`` executors and set running, so they stay active (the claims' lease outlasts the
bench; without heartbeats the owner judges it from the claim). The worker's RSS is read (``/proc/<pid>/status``, ``VmRSS``) once every
partition's checkpoint covers the log, at ``--first`` active runs and at ``--runs``; the figure
is the slope between the two, bytes per active run, read once the runs went still for
``partition.active.COLD_AFTER`` seconds and the worker gave the heap they left back
(``agents.runtime.TRIM_EVERY``; most active runs of a CI sit still between two task edges). The floor beside it: the run's stored state
(the checkpoint's JSON bytes for one such run), which is the least a run can cost while its state
is kept whole in memory.

    .venv/bin/python bench/bench_memory.py                      # 1,000 → 10,000 active runs
    .venv/bin/python bench/bench_memory.py --first 1000 --runs 5000 --tasks 10

Needs the local stack (``deploy/local up``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm import tqdm

from agents.producer import EventProducer
from agents.resources import Resources
from agents.runtime import TRIM_EVERY
from events.catalogue import (
    Event,
    RunCreated,
    StartRequested,
    TaskClaimed,
    TaskStatusChanged,
    make_event,
)
from events.codec import encode_state
from events.ids import format_run_id
from events.model import RunConfigTask, TaskDepend, TaskStatus
from events.reducer import apply
from partition.active import COLD_AFTER
from tests.harness import Worker, caught_up, make_settings, prepare_topics, wait_healthy, wait_until

T0 = 1_780_000_000_000
#: Executors holding the runs' first tasks, and their claims' lease (ms): longer than the bench.
EXECUTORS = 50
LEASE_MS = 1_800_000


def created(n: int, tasks: int) -> RunCreated:
    return RunCreated(
        name=f"build-{n:06d}",
        group=f"/project/p{n % 40:03d}/branch/main",
        tasks=tuple(
            RunConfigTask(
                id=f"t{i}",
                name=f"task-{i}",
                depends=(TaskDepend(task_id=f"t{i - 1}"),) if i else (),
                environment={"STEP": str(i)},
            )
            for i in range(tasks)
        ),
        environment={"CI": "true"},
        static_environment={"COMMIT": f"{n:010x}"},
        annotations={"branch": "main"},
    )


def script(n: int, tasks: int) -> list[Event]:
    rid = format_run_id(n)
    executor = f"bench-executor-{n % EXECUTORS}"
    payloads = [
        created(n, tasks),
        StartRequested(),
        # Its first task held by one of EXECUTORS executors (a lease longer than the bench),
        # and running: what an active run of a CI is between two task edges.
        TaskClaimed(task_id="t0", executor_id=executor, lease_ms=LEASE_MS),
        TaskStatusChanged(task_id="t0", status=TaskStatus.RUNNING, executor_id=executor),
    ]
    return [
        make_event(p, id=f"{rid}.m{i}", run_id=rid, at=T0 + n + i) for i, p in enumerate(payloads)
    ]


def stored_bytes(tasks: int) -> int:
    state = None
    for ev in script(1, tasks):
        state = apply(state, ev).state
    assert state is not None
    return len(encode_state(state))


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def fill(
    producer: EventProducer, lo: int, hi: int, tasks: int, rate: float, bar: tqdm
) -> None:
    """Runs ``lo`` to ``hi - 1``, created at ``rate`` runs a second (0: as fast as it goes)."""
    step = 50
    started = time.monotonic()
    for start in range(lo, hi, step):
        batch = [ev for n in range(start, min(hi, start + step)) for ev in script(n, tasks)]
        await producer.append(batch)
        bar.update(min(hi, start + step) - start)
        if rate > 0:
            ahead = started + (start + step - lo) / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--first", type=int, default=1000, help="active runs at the first reading")
    ap.add_argument("--runs", type=int, default=10_000, help="active runs at the second reading")
    ap.add_argument("--tasks", type=int, default=10, help="tasks per run")
    ap.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="runs created a second (0: as fast as possible; a burst measures the peak)",
    )
    args = ap.parse_args()
    kafka = os.environ.get("RUNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    etcd = os.environ.get("RUNSTREAM_ETCD_ENDPOINT", "127.0.0.1:2379")
    unique = f"bm-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    s = make_settings(unique, kafka, etcd, f"file://{tmp}/objects", checkpoint_interval=2.0)
    await prepare_topics(s)
    worker = Worker(s, tmp / "worker.log").start()
    resources = Resources(s)
    try:
        await wait_healthy(f"http://127.0.0.1:{s.web_port}")
        assert worker.proc is not None
        pid = worker.proc.pid
        readings: list[tuple[int, int]] = []
        async with EventProducer(s.kafka, s.topic_events) as producer:
            bar = tqdm(total=args.runs, unit="run", desc="active runs")
            for lo, hi in ((1, args.first + 1), (args.first + 1, args.runs + 1)):
                await fill(producer, lo, hi, args.tasks, args.rate, bar)
                await wait_until(
                    lambda: caught_up(s, resources), within=300, what="checkpoints to cover the log"
                )
                # Runs that did not move for COLD_AFTER are held as compressed bytes
                # (partition.active), and the heap they left is given back within TRIM_EVERY
                # (agents.runtime.HeapTrimmer): read once they went still, as most active runs are.
                await asyncio.sleep(COLD_AFTER + TRIM_EVERY + 5.0)
                readings.append((hi - 1, rss(pid)))
            bar.close()
        (n1, r1), (n2, r2) = readings
        slope = (r2 - r1) / (n2 - n1)
        floor = stored_bytes(args.tasks)
        load = os.getloadavg()
        print(
            f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {os.cpu_count()} cores"
        )
        print(f"worker RSS at {n1:>7,} active runs : {r1 / 2**20:8.1f} MiB")
        print(f"worker RSS at {n2:>7,} active runs : {r2 / 2**20:8.1f} MiB")
        print(
            f"memory per active {args.tasks}-task run (RSS slope) : {slope:8,.0f} bytes  (target: <= 3,072)"
        )
        print(f"floor: the run's stored state                : {floor:8,} bytes")
        print(f"ratio slope / stored state                   : {slope / floor:8.2f}")
    finally:
        worker.stop()
        await resources.close()


if __name__ == "__main__":
    asyncio.run(main())
