"""An upper bound for decode + apply in CPython on bench_events' stream, beside the reducer.

The same bytes, the same decoder, then a *minimal mutable* fold: one object per run, statuses in
a list changed in place, children made ready when a parent ends, the run dropped when its last
task ends, and the derived ``task.ready`` / ``run.phase_changed`` Structs built as the reducer
builds them. It checks almost nothing (no conditions, approvals, stop, id window bound, creation
planning or checks) and keeps no immutable state, so no reducer keeping the contract of
``events.reducer`` can be faster: it says where the floor of this machine's Python is.

    .venv/bin/python bench/floor_events.py [--runs 20000] [--repeat 5]
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_events as b

from agents.runtime import tune_gc
from events import TaskStatus, decode
from events.catalogue import (
    EventType,
    PhaseChanged,
    PhaseChangedEvent,
    TaskReady,
    TaskReadyEvent,
)

NS, RUN, OK, FAIL = TaskStatus.NOTSTARTED, TaskStatus.RUNNING, TaskStatus.SUCCESS, TaskStatus.FAILED
FIN = frozenset({TaskStatus.SKIPPED, TaskStatus.CANCELLED, TaskStatus.STOPPED, OK, FAIL})
CREATED, START, TSC, APPROVED = (
    EventType.RUN_CREATED,
    EventType.START_REQUESTED,
    EventType.TASK_STATUS_CHANGED,
    EventType.TASK_APPROVED,
)


class S:
    __slots__ = (
        "children",
        "end",
        "id",
        "index",
        "open",
        "phase",
        "recent",
        "rseq",
        "seq",
        "start",
        "status",
        "tasks",
    )


def _ready(s, tid, level, at):
    s.rseq += 1
    data = TaskReady(task_id=tid, level=level, seq=s.rseq)
    return TaskReadyEvent(version=1, id=f"{s.id}.ready.{s.rseq}", run_id=s.id, at=at, data=data)


def _phase(s, phase, result, at):
    s.seq += 1
    data = PhaseChanged(group="g", phase=phase, result=result, seq=s.seq)
    return PhaseChangedEvent(version=1, id=f"{s.id}.phase.{s.seq}", run_id=s.id, at=at, data=data)


def fold(stream):
    states = {}
    n = 0
    for raw in stream:
        ev = decode(raw)
        k = ev.type
        if k is TSC:
            s = states[ev.run_id]
            if ev.id in s.recent:
                continue
            d = ev.data
            i = s.index[d.task_id]
            old = s.status[i]
            if old in FIN or d.status is old:
                continue
            s.status[i] = d.status
            if d.status in FIN:
                s.end[i] = ev.at
                s.open -= 1
                for c in s.children.get(i, ()):
                    _ready(s, s.tasks[c].id, 1, ev.at)
                if s.open == 0:
                    _phase(s, "finished", "success", ev.at)
                    del states[ev.run_id]
                    n += 1
                    continue
            else:
                s.start[i] = ev.at
            s.recent.append(ev.id)
        elif k is CREATED:
            s = S()
            s.id = ev.run_id
            s.tasks = ev.data.tasks
            s.index = {t.id: i for i, t in enumerate(s.tasks)}
            s.status = [NS] * len(s.tasks)
            s.start = [None] * len(s.tasks)
            s.end = [None] * len(s.tasks)
            ch = {}
            for i, t in enumerate(s.tasks):
                for dd in t.depends:
                    ch.setdefault(s.index[dd.task_id], []).append(i)
            s.children = ch
            s.open = len(s.tasks)
            s.seq = 0
            s.rseq = 0
            s.recent = [ev.id]
            s.phase = "queued"
            _phase(s, "queued", "unknown", ev.at)
            states[ev.run_id] = s
        elif k is START:
            s = states[ev.run_id]
            s.phase = "running"
            s.recent.append(ev.id)
            _phase(s, "running", "unknown", ev.at)
            _ready(s, s.tasks[0].id, 0, ev.at)
        else:
            s = states.get(ev.run_id)
            if s is not None:
                s.recent.append(ev.id)
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    tune_gc()
    stream = b.make_stream(args.runs)
    best = bestf = bestl = float("inf")
    for _ in range(args.repeat):
        t = time.perf_counter()
        b.decode_apply(stream)
        best = min(best, time.perf_counter() - t)
        t = time.perf_counter()
        fold(stream)
        bestf = min(bestf, time.perf_counter() - t)
        t = time.perf_counter()
        b.loads_only(stream)
        bestl = min(bestl, time.perf_counter() - t)
    n = len(stream)
    print(f"{n} events from {args.runs} runs")
    print(f"decode+apply (events.reducer): {n / best:12,.0f} events/s ({best / bestl:.2f}× loads)")
    print(
        f"minimal mutable fold (bound) : {n / bestf:12,.0f} events/s ({bestf / bestl:.2f}× loads)"
    )
    print(f"orjson.loads                 : {n / bestl:12,.0f} events/s")


if __name__ == "__main__":
    main()
