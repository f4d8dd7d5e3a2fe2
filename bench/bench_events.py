"""Decode + apply throughput of ``events`` on realistic event bytes, against plain orjson.loads.

The stream: runs created with 3–10 tasks in a chain (each with environment and a step), one run
in four with a conditional tail (an ``on_failure`` cleanup, an ``on_skipped`` report, a deploy
that needs approval), each then started; an executor follows the ready tasks the reducer derives
(reporting each running then success; in one run in eight some fail) and what waits is approved,
so most records are ~200-byte task events. Like the materializer, the loop keeps only active
runs in memory (a run reaching a final phase is dropped). Both figures are measured in this
process on the same bytes; the ratio is what to compare across machines.

A second part measures the production path: ``PartitionMaterializer.apply_record`` over commits
of 500 events (``agents.workload``, 4 partitions, events grouped by partition as the producer
does), against ``orjson.loads`` of the same commit bytes.

    .venv/bin/python bench/bench_events.py [--runs N] [--repeat R] [--mat-runs N]
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections.abc import Callable
from typing import Any

import orjson
from tqdm import tqdm

from agents.runtime import tune_gc
from agents.workload import generate
from events import (
    DependCondition,
    Event,
    Payload,
    Phase,
    RunConfigTask,
    RunCreated,
    RunState,
    StartRequested,
    TaskApproved,
    TaskDepend,
    TaskReady,
    TaskStatus,
    TaskStatusChanged,
    apply,
    decode,
    encode,
    encode_commit,
    format_run_id,
    make_event,
    project_group,
)
from events.reducer import Applied
from partition.materializer import PartitionMaterializer
from partition.placement import partition_for

FINAL = frozenset(p for p in Phase if p.is_final())


def _run_tasks(rnd: random.Random, n: int) -> tuple[RunConfigTask, ...]:
    """A chain of 3–10 tasks; one run in four also has a conditional tail: ``cleanup`` on the
    chain's failure, ``report`` when ``cleanup`` was skipped, ``deploy`` after an approval."""
    ntasks = rnd.randint(3, 10)
    tids = [f"{rnd.getrandbits(128):032x}" for _ in range(ntasks)]
    tasks = [
        RunConfigTask(
            id=tid,
            name=f"task-{i}",
            depends=(TaskDepend(task_id=tids[i - 1]),) if i else (),
            environment={"GOFLAGS": "-mod=vendor"},
            steps=({"type": "run", "command": f"make step{i}"},),
        )
        for i, tid in enumerate(tids)
    ]
    if n % 4 == 0:
        last = tids[-1]
        on = DependCondition
        tasks += [
            RunConfigTask(
                id="cleanup",
                name="cleanup",
                depends=(TaskDepend(task_id=last, conditions=(on.ON_FAILURE,)),),
            ),
            RunConfigTask(
                id="report",
                name="report",
                depends=(TaskDepend(task_id="cleanup", conditions=(on.ON_SKIPPED,)),),
            ),
            RunConfigTask(
                id="deploy", name="deploy", depends=(TaskDepend(task_id=last),), needs_approval=True
            ),
        ]
    return tuple(tasks)


def _executed(
    rnd: random.Random, rid: str, created: RunCreated, fail: bool, at: int
) -> list[bytes]:
    """The run's events as an executor following the ready stream writes them (and someone
    approving what waits): the reducer itself says what is ready, so every event applies."""
    raws: list[bytes] = []
    state: RunState | None = None
    ready: list[str] = []

    def send(data: Payload) -> None:
        nonlocal state
        e = make_event(data, id=f"{rid}.e{len(raws):04d}", run_id=rid, at=at + 7 * len(raws))
        out = apply(state, e)
        assert isinstance(out, Applied), out
        state = out.state
        ready.extend(d.data.task_id for d in out.derived if isinstance(d.data, TaskReady))
        raws.append(encode(e))

    send(created)
    send(StartRequested())
    while state is not None and not state.run.phase.is_final():
        waiting = [t for t, rt in state.run.tasks.items() if rt.waiting_approval]
        if waiting:
            send(TaskApproved(task_id=waiting[0]))
            continue
        tid = ready.pop(0)
        send(TaskStatusChanged(task_id=tid, status=TaskStatus.RUNNING))
        failing = fail and rnd.random() < 0.3
        send(TaskStatusChanged(task_id=tid, status=TaskStatus.FAILED if failing else TaskStatus.SUCCESS))  # fmt: skip
    return raws


def make_stream(runs: int, seed: int = 7) -> list[bytes]:
    """Encoded events of ``runs`` runs, interleaved a little as a partition would see them."""
    rnd = random.Random(seed)
    per_run: list[list[bytes]] = []
    at = 1_764_292_658_000
    for n in range(1, runs + 1):
        rid = format_run_id(n)
        created = RunCreated(
            name="build",
            group=project_group(f"p{n % 97}", branch="main"),
            tasks=_run_tasks(rnd, n),
            static_environment={"CI": "true", "COMMIT": f"{rnd.getrandbits(160):040x}"},
            annotations={"run_type": "project", "ref": "refs/heads/main"},
        )
        raws = _executed(rnd, rid, created, fail=n % 8 == 0, at=at)
        at += 7 * len(raws)
        per_run.append(raws)
    # interleave runs four at a time, as concurrent runs share a partition
    out: list[bytes] = []
    for i in range(0, len(per_run), 4):
        group = per_run[i : i + 4]
        while any(group):
            for r in group:
                if r:
                    out.append(r.pop(0))
    return out


def decode_apply(stream: list[bytes]) -> int:
    """Decode and apply every record; like the materializer, keep only active runs in memory."""
    states: dict[str, RunState] = {}
    get, pop = states.get, states.pop
    applied = 0
    for raw in stream:
        ev = decode(raw)
        out = apply(get(ev.run_id), ev)
        if isinstance(out, Applied):
            applied += 1
            if out.state.run.phase in FINAL:
                pop(ev.run_id, None)
            else:
                states[ev.run_id] = out.state
    return applied


def breakdown(stream: list[bytes], repeat: int) -> None:
    """Where decode + apply goes, per kind of event: each event's decode and its apply (to the
    state it met in the stream) timed apart, best of ``repeat``; the share is of the summed
    time, amortized per event of the whole stream."""
    states: dict[str, RunState] = {}
    pairs: dict[str, list[tuple[bytes, Event, RunState | None]]] = {}
    for raw in stream:
        ev = decode(raw)
        before = states.get(ev.run_id)
        out = apply(before, ev)
        kind = str(ev.type)
        if isinstance(ev.data, TaskStatusChanged):
            kind += f" → {ev.data.status}"
        pairs.setdefault(kind, []).append((raw, ev, before))
        if isinstance(out, Applied):
            if out.state.run.phase in FINAL:
                states.pop(ev.run_id, None)
            else:
                states[ev.run_id] = out.state
    rows = []
    for kind, items in pairs.items():
        raws = [r for r, _, _ in items]
        args = [(b, e) for _, e, b in items]
        best_d = best_a = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            for r in raws:
                decode(r)
            best_d = min(best_d, time.perf_counter() - t0)
            t0 = time.perf_counter()
            for b, e in args:
                apply(b, e)
            best_a = min(best_a, time.perf_counter() - t0)
        rows.append((kind, len(items), best_d, best_a))
    total = sum(d + a for _, _, d, a in rows)
    n = len(stream)
    print(f"  {'per kind':38} {'events':>7} {'decode µs':>10} {'apply µs':>9} {'µs/event of stream':>19} {'share':>6}")  # fmt: skip
    for kind, count, d, a in sorted(rows, key=lambda r: -(r[2] + r[3])):
        print(f"  {kind:38} {count:7} {1e6 * d / count:10.2f} {1e6 * a / count:9.2f} "
              f"{1e6 * (d + a) / n:19.2f} {100 * (d + a) / total:5.0f}%")  # fmt: skip
    print(f"  {'sum':38} {n:7} {'':10} {'':9} {1e6 * total / n:19.2f}")


def create_only(stream: list[bytes]) -> int:
    for raw in stream:
        apply(None, decode(raw))
    return len(stream)


def decode_only(stream: list[bytes]) -> int:
    for raw in stream:
        decode(raw)
    return len(stream)


def loads_only(stream: list[bytes]) -> int:
    loads = orjson.loads
    for raw in stream:
        loads(raw)
    return len(stream)


def make_commits(runs: int, partitions: int = 4, size: int = 500) -> dict[int, list[bytes]]:
    """Commits of ``size`` events per partition, as the group-committing producer writes them."""
    per: dict[int, list[Event]] = {p: [] for p in range(partitions)}
    for e in generate(seed=1, runs=runs):
        per[partition_for(e.run_id, partitions)].append(e)
    return {p: [encode_commit(evs[i : i + size]) for i in range(0, len(evs), size)] for p, evs in per.items()}  # fmt: skip


def materialize(commits: dict[int, list[bytes]]) -> int:
    """Apply every commit through a fresh materializer per partition; the events applied."""
    n = 0
    for p, records in commits.items():
        m = PartitionMaterializer(None, topic="x", partition=p, phases_topic="y", partitions=len(commits))  # fmt: skip
        for offset, raw in enumerate(records):
            out = m.apply_record(offset, raw)
            assert out.dead is None, out.dead
            n += out.applied + out.refused + out.duplicates
    return n


def loads_commits(commits: dict[int, list[bytes]]) -> int:
    loads = orjson.loads
    return sum(len(loads(raw)) for records in commits.values() for raw in records)


def timed(fn: Callable[[Any], int], stream: Any) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn(stream)
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--mat-runs", type=int, default=5_000, help="runs of the materializer part (0: skip)")  # fmt: skip
    ap.add_argument(
        "--gc",
        choices=["worker", "default"],
        default="worker",
        help="worker: the collector thresholds the worker runs with (agents.runtime); default: CPython's",
    )
    args = ap.parse_args()
    if args.gc == "worker":
        tune_gc()
    print(f"gc thresholds {gc.get_threshold()} ({args.gc})")
    stream = make_stream(args.runs)
    sizes = sorted(len(r) for r in stream)
    print(f"{len(stream)} events from {args.runs} runs; median {sizes[len(sizes) // 2]} B, "
          f"mean {sum(sizes) / len(sizes):.0f} B")  # fmt: skip
    created = [r for r in stream if b'"type":"run.created"' in r]
    best_apply = best_loads = best_create = best_decode = float("inf")
    for _ in tqdm(range(args.repeat), desc="rounds (decode+apply, loads, creations)"):
        dt, n = timed(decode_apply, stream)
        assert n == len(stream), f"only {n} of {len(stream)} applied"
        best_apply = min(best_apply, dt)
        best_loads = min(best_loads, timed(loads_only, stream)[0])
        best_create = min(best_create, timed(create_only, created)[0])
        best_decode = min(best_decode, timed(decode_only, stream)[0])
    rate_apply = len(stream) / best_apply
    rate_loads = len(stream) / best_loads
    others = len(stream) - len(created)
    print(f"decode+apply : {rate_apply:12,.0f} events/s ({1e6 / rate_apply:.2f} µs/event)")
    print(f"orjson.loads : {rate_loads:12,.0f} events/s ({1e6 / rate_loads:.2f} µs/event)")
    print(f"ratio        : decode+apply takes {rate_loads / rate_apply:.2f}× the time of loads")
    print(f"  decode alone         : {len(stream) / best_decode:12,.0f} events/s "
          f"({best_decode / best_loads:.2f}× loads, {100 * best_decode / best_apply:.0f}% of decode+apply)")  # fmt: skip
    print(f"  of which run.created : {1e6 * best_create / len(created):.1f} µs per creation "
          f"({len(created)} events, {100 * best_create / best_apply:.0f}% of the time)")  # fmt: skip
    print(f"  other events (est.)  : {1e6 * (best_apply - best_create) / others:.2f} µs/event")
    breakdown(stream, args.repeat)
    print(f"target 350,000 events/s: {'met' if rate_apply >= 350_000 else 'NOT met'}; "
          f"aim 500,000: {'met' if rate_apply >= 500_000 else 'NOT met'}")  # fmt: skip
    if args.mat_runs:
        materializer_part(args.mat_runs, args.repeat)


def materializer_part(runs: int, repeat: int) -> None:
    commits = make_commits(runs)
    n = loads_commits(commits)
    best_mat = best_loads = float("inf")
    for _ in tqdm(range(repeat), desc="rounds (materializer, loads of the commits)"):
        dt, applied = timed(materialize, commits)
        assert applied == n, f"{applied} of {n} events accounted for"
        best_mat = min(best_mat, dt)
        best_loads = min(best_loads, timed(loads_commits, commits)[0])
    records = sum(len(r) for r in commits.values())
    print(f"materializer : {n / best_mat:12,.0f} events/s ({n} events in {records} commits)")
    print(f"loads commits: {n / best_loads:12,.0f} events/s")
    print(f"ratio        : apply_record takes {best_mat / best_loads:.2f}× the time of loads")
    print(f"target 300,000 events/s: {'met' if n / best_mat >= 300_000 else 'NOT met'}")


if __name__ == "__main__":
    main()
