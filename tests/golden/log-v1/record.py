"""Record ``tests/golden/log-v1``: a log as the producer writes it, and what replaying it gives.

Run once with the version whose output is the reference (it was the orjson + dataclass codec,
before the msgspec rewrite of issue 12); ``tests/unit/test_wire_compat.py`` replays the recorded
records through the code of the day and compares byte for byte. Running this again with the
current code must rewrite identical files (``--check`` says whether it does).

Regenerated once, deliberately, for issue 13 (the records are the same bytes; only what replaying
them gives changed: ``record.py --rederive``). Each line gained ``ready``, the ``task.ready`` events (every run that
started has some), and every started run's state gained ``ready_seq``. Beyond that, these runs
changed, and nothing else did:

* workload runs 11, 14, 202, 209, 223: a task others depend on failed, so its ``on_success``
  children are skipped by the reducer; the executor's later reports for them are refused (not
  ready, or the run is final), and runs 14 and 223 finish (``finished/failed``) when their last
  unskipped task ends, earlier than before;
* workload runs 24, 66, 110, 132, 151, 168, 174, 178, 193, 214, 219, 224, 225, 230 (stopped):
  their tasks not started are ``skipped`` at the stop, not ``cancelled``;
* extra runs 255, 265, ..., 325 (kind 4: conditions and skips): ``t1`` (``on_failure`` of a kept
  success) and ``t4`` (child of the ``skip`` task ``t3``) are skipped when the run starts, so the
  reports for them are refused and the run finishes when ``t2`` ends;
* extra runs 256, 266, ..., 326 (kind 5: stop twice): the second stop is accepted and changes
  nothing but the id window; the tasks not started are ``skipped``.

Re-derived again, deliberately, for issue 13's listing entries (``record.py --rederive``; the
records and ``states.jsonl.zst`` are byte for byte what they were): every run's first
``run.phase_changed`` (seq 1, 314 of them, one per run) gained the run's ``name`` in its data, and
the 24 of those runs whose creation carried a counter gained ``counter`` too. Nothing else
changed: every other derived event (later phase changes, ``task.ready``), every state, every
rejection and dead letter is the same bytes (``PhaseChanged`` omits both fields when empty).

The log: ``agents.workload.generate`` (seeded) plus runs that exercise what the workload does
not: approvals, task annotations, setup errors reported by the webhook receiver and found by the
checks (cycles, missing parents), refused creations (bad groups), recreations with kept tasks,
dependency conditions and skipped tasks, non-ASCII and control characters, floats and nesting in
steps, requests the reducer refuses, duplicates (redelivered events), events for unknown runs,
and records that go to the dead letters (invalid JSON, unknown type or version, schema errors,
misrouted creations). Events are cut into records per partition (4 partitions) as commits of
1–60 events or single-event records (a foreign producer).

    .venv/bin/python tests/golden/log-v1/record.py [--check] [--rederive]
"""

from __future__ import annotations

import argparse
import pathlib
import random
import sys
from typing import Any

import orjson
import zstandard

from agents.workload import generate
from events import (
    CancelRequested,
    DependCondition,
    Event,
    EventType,
    Payload,
    RunConfigTask,
    RunCreated,
    SetupError,
    SetupErrorsReported,
    StartRequested,
    StopRequested,
    TaskAnnotationsSet,
    TaskApproved,
    TaskDepend,
    TaskStatus,
    TaskStatusChanged,
    encode,
    encode_commit,
    encode_state,
    format_run_id,
    make_event,
)
from partition.materializer import PartitionMaterializer
from partition.placement import partition_for

HERE = pathlib.Path(__file__).parent
PARTITIONS = 4
SEED = 12
WORKLOAD_RUNS = 250
T0 = 1_790_000_000_000
S = TaskStatus
_READY = EventType.TASK_READY


def _task(i: int, *parents: str, **kw: Any) -> RunConfigTask:
    conds = kw.pop("conds", ())
    return RunConfigTask(
        id=f"t{i}",
        name=kw.pop("name", f"task-{i}"),
        depends=tuple(TaskDepend(task_id=p, conditions=conds) for p in parents),
        **kw,
    )


def _steps(rng: random.Random) -> tuple[dict[str, Any], ...]:
    return (
        {"type": "run", "command": "make test", "shell": "/bin/sh"},
        {
            "type": "save_cache",
            "key": "cache-{{ arch }}",
            "contents": [{"source_dir": "/go/pkg", "paths": ["**"]}],
            "timeout": rng.choice([0.5, 1e-7, 12.25, 1e16, 3.0, -0.0]),
            "retries": rng.randint(0, 2**62),
            "nothing": None,
            "nested": {"z": 1, "a": [True, False, None, "x\u2028y"]},
        },
    )


def extra_scripts(rng: random.Random, first: int, count: int) -> dict[str, list[Payload]]:
    """Runs that exercise what ``agents.workload`` does not (see the module docstring)."""
    out: dict[str, list[Payload]] = {}
    for n in range(count):
        rid = format_run_id(first + n)
        group = f"/project/x{n % 7}/branch/" + rng.choice(["main", "dév", "fix%2Fa", "ü✓"])
        kind = n % 10
        steps = _steps(rng)
        tasks: tuple[RunConfigTask, ...]
        if kind == 0:  # approvals and annotations
            tasks = (
                _task(0, environment={"A": "1", "Ä": "naïve\t\n\u0001"}, steps=steps),
                _task(1, "t0", needs_approval=True),
                _task(2, "t1", ignore_failure=True),
            )
            out[rid] = [
                RunCreated(
                    name="deploy",
                    group=group,
                    tasks=tasks,
                    counter=n + 1,
                    annotations={"ü": "ß", "a": '"q" \\ /'},
                ),
                TaskApproved(task_id="t1"),  # refused: not running yet
                StartRequested(),
                TaskStatusChanged(task_id="t1", status=S.RUNNING),  # refused: waiting approval
                TaskStatusChanged(task_id="t0", status=S.RUNNING),
                TaskStatusChanged(task_id="t0", status=S.SUCCESS),
                TaskAnnotationsSet(task_id="t1", annotations={"approvers": "alice,bob", "é": "1"}),
                TaskApproved(task_id="t1"),
                TaskApproved(task_id="t1"),  # refused: already approved
                TaskAnnotationsSet(task_id="nope", annotations={}),  # refused: no such task
                TaskStatusChanged(task_id="t1", status=S.RUNNING),
                TaskStatusChanged(task_id="t1", status=S.SUCCESS),
                TaskStatusChanged(task_id="t2", status=S.RUNNING),
                TaskStatusChanged(task_id="t2", status=S.FAILED),  # ignored failure: success
                TaskStatusChanged(task_id="t2", status=S.SUCCESS),  # refused: final
            ]
        elif kind == 1:  # the webhook receiver's setup errors
            out[rid] = [
                SetupErrorsReported(
                    group=group,
                    errors=(
                        SetupError(message="config.yml:3: bad indentation", task_ids=("a", "b")),
                        SetupError(message=""),
                    ),
                    static_environment={"COMMIT": f"{rng.getrandbits(64):016x}"},
                    annotations={"run_type": "project"},
                    counter=rng.randint(0, 10**12),
                ),
                StartRequested(),  # refused: final
            ]
        elif kind == 2:  # the checks turn inconsistent tasks into setup errors
            tasks = (_task(0, "t2"), _task(1, "t0"), _task(2, "t1"), _task(3, "missing"))
            out[rid] = [RunCreated(name="cyclic", group=group, tasks=tasks), CancelRequested()]
        elif kind == 3:  # refused creation (relative group), then events for a run that is not
            out[rid] = [
                RunCreated(name="bad", group="/project/../x", tasks=(_task(0),)),
                StartRequested(),
                TaskStatusChanged(task_id="t0", status=S.RUNNING),
            ]
        elif kind == 4:  # a recreation with kept tasks; conditions and skips
            tasks = (
                _task(0),
                _task(1, "t0", conds=(DependCondition.ON_FAILURE,)),
                _task(2, "t0", conds=(DependCondition.ON_SUCCESS, DependCondition.ON_SKIPPED)),
                _task(3, skip=True),
                _task(4, "t3", "t0"),
            )
            out[rid] = [
                RunCreated(
                    name="rebuild",
                    group=group,
                    tasks=tasks,
                    recreated_from=format_run_id(n + 1),
                    kept_tasks=("t0",),
                    environment={"SECRET": "s"},
                    counter=n,
                ),
                StartRequested(),
                StartRequested(),  # refused: running
                # t1 (on_failure of a kept success) and t4 (child of the skip task t3) are
                # skipped at the start (issue 13): the reports for t1 and t4 are refused.
                TaskStatusChanged(task_id="t1", status=S.RUNNING),
                TaskStatusChanged(task_id="t1", status=S.NOTSTARTED),  # refused
                TaskStatusChanged(task_id="t1", status=S.SKIPPED),
                TaskStatusChanged(task_id="t2", status=S.RUNNING),
                TaskStatusChanged(task_id="t2", status=S.RUNNING),  # refused: no change
                TaskStatusChanged(task_id="t2", status=S.SUCCESS),
                TaskStatusChanged(task_id="t4", status=S.RUNNING),
                TaskStatusChanged(task_id="t4", status=S.STOPPED),
            ]
        elif kind == 5:  # stop twice, a stop with a task waiting for approval
            tasks = (_task(0), _task(1, needs_approval=True), _task(2, "t0"))
            out[rid] = [
                RunCreated(name="stopme", group=group, tasks=tasks),
                StartRequested(),
                TaskStatusChanged(task_id="t0", status=S.RUNNING),
                StopRequested(),
                StopRequested(),  # accepted, changes nothing (issue 13; refused before)
                TaskStatusChanged(task_id="t0", status=S.CANCELLED),
            ]
        elif kind == 6:  # cancel while queued, then every kind of late event
            out[rid] = [
                RunCreated(
                    name="cancel", group=group, tasks=(_task(0), _task(1, needs_approval=True))
                ),
                CancelRequested(),
                CancelRequested(),
                StopRequested(),
                TaskApproved(task_id="t1"),
            ]
        elif kind == 7:  # an empty creation is refused; a setup-errors report with none too
            out[rid] = [
                RunCreated(name="empty", group=group),
                SetupErrorsReported(group=group, errors=()),
            ]
        elif kind == 8:  # a run created twice (a second producer), failed task
            tasks = (_task(0), _task(1))
            out[rid] = [
                RunCreated(name="twice", group=group, tasks=tasks),
                RunCreated(name="twice", group=group, tasks=tasks),
                StartRequested(),
                TaskStatusChanged(task_id="t0", status=S.RUNNING),
                TaskStatusChanged(task_id="t0", status=S.FAILED),
                TaskStatusChanged(task_id="t1", status=S.RUNNING),
                TaskStatusChanged(task_id="t9", status=S.RUNNING),  # refused: no such task
                TaskStatusChanged(task_id="t1", status=S.SUCCESS),
            ]
        else:  # setup errors in a run.created, and a status before any creation
            out[rid] = [
                TaskStatusChanged(task_id="t0", status=S.RUNNING),
                RunCreated(
                    name="Setup Error",
                    group=group,
                    setup_errors=(SetupError(message="x", task_ids=("t0",)),),
                ),
            ]
    return out


def interleave(
    rng: random.Random, base: list[Event], scripts: dict[str, list[Payload]]
) -> list[Event]:
    """``base`` with the events of ``scripts`` merged in at random places, each run in order."""
    out = list(base)
    for rid, script in scripts.items():
        at = T0 + rng.randint(0, 10**7)
        positions = sorted(rng.randrange(len(out) + 1) for _ in script)
        for k, (pos, data) in reversed(list(enumerate(zip(positions, script, strict=True)))):
            out.insert(pos, make_event(data, id=f"{rid}.x{k}", run_id=rid, at=at + 13 * k))
    return out


def bad_records(rng: random.Random) -> list[bytes]:
    good = {
        "type": "task.status_changed",
        "version": 1,
        "id": "bad-1",
        "run_id": "0000000000000003",
        "at": 5,
        "data": {"task_id": "t0", "status": "running"},
    }
    raws = [
        b"{not json",
        b"",
        b"[]",
        b'"text"',
        b"\xff\xfe",
        orjson.dumps({**good, "type": "run.exploded"}),
        orjson.dumps({**good, "type": 3}),
        orjson.dumps({**good, "version": 2}),
        orjson.dumps({**good, "version": 0}),
        orjson.dumps({**good, "version": "1"}),
        orjson.dumps({**good, "extra": 1}),
        orjson.dumps({k: v for k, v in good.items() if k != "at"}),
        orjson.dumps({**good, "run_id": "0" * 16}),
        orjson.dumps({**good, "run_id": "12"}),
        orjson.dumps({**good, "at": -1}),
        orjson.dumps({**good, "at": 1.5}),
        orjson.dumps({**good, "id": ""}),
        orjson.dumps({**good, "data": {"task_id": "t0", "status": "bogus"}}),
        orjson.dumps({**good, "data": {"task_id": "", "status": "running"}}),
        orjson.dumps({**good, "type": "run.start_requested", "data": {"x": 1}}),
        orjson.dumps(
            {
                **good,
                "type": "run.created",
                "data": {
                    "name": "n",
                    "group": "/p/x",
                    "tasks": [{"id": "a", "name": "a", "level": 1}],
                },
            }
        ),
        orjson.dumps([good, {**good, "type": "run.exploded"}]),
    ]
    rng.shuffle(raws)
    return raws


def build_records(rng: random.Random, events: list[Event]) -> list[tuple[int, bytes]]:
    """(partition, bytes) in log order: per partition, commits and single-event records, with
    duplicates (an earlier event again), dead letters and misrouted creations mixed in."""
    per: dict[int, list[Event]] = {p: [] for p in range(PARTITIONS)}
    for e in events:
        per[partition_for(e.run_id, PARTITIONS)].append(e)
    records: list[tuple[int, bytes]] = []
    bad = bad_records(rng)
    for p, evs in per.items():
        for _ in range(len(evs) // 40):  # redeliveries
            i = rng.randrange(len(evs))
            evs.insert(rng.randrange(i, len(evs)) + 1, evs[i])
        i = 0
        while i < len(evs):
            if rng.random() < 0.3:
                records.append((p, encode(evs[i])))
                i += 1
            else:
                size = rng.randint(1, 60)
                records.append((p, encode_commit(evs[i : i + size])))
                i += size
            if bad and rng.random() < 0.1:
                records.append((p, bad.pop()))
        # a creation for a run of another partition (alone, and inside a commit)
        other = next(n for n in range(1, 100) if partition_for(format_run_id(n), PARTITIONS) != p)
        stray = make_event(
            RunCreated(name="stray", group="/project/s", tasks=(_task(0),)),
            id="stray",
            run_id=format_run_id(other),
            at=T0,
        )
        records.append((p, encode(stray)))
        records.append((p, encode_commit([evs[0], stray])))
    records.extend((0, raw) for raw in bad)
    # partitions interleave at random; each keeps its own order
    queues: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    for p, raw in records:
        queues[p].append(raw)
    order = [p for p, _ in records]
    rng.shuffle(order)
    for q in queues.values():
        q.reverse()
    return [(p, queues[p].pop()) for p in order]


def replay(records: list[tuple[int, bytes]]) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    mats = {
        p: PartitionMaterializer(
            None,
            topic="runs.events",
            partition=p,
            phases_topic="runs.phases",
            partitions=PARTITIONS,
        )
        for p in range(PARTITIONS)
    }
    offsets = dict.fromkeys(mats, 0)
    lines: list[dict[str, Any]] = []
    for p, raw in records:
        out = mats[p].apply_record(offsets[p], raw)
        lines.append(
            {
                "partition": p,
                "offset": offsets[p],
                **_raw_field(raw),
                "applied": out.applied,
                "duplicates": out.duplicates,
                "rejected": out.refused,
                "dead": None if out.dead is None else out.dead.reason,
                "derived": [encode(d).decode() for d in out.derived if d.type is not _READY],
                "ready": [encode(d).decode() for d in out.derived if d.type is _READY],
            }
        )
        offsets[p] += 1
    states: dict[str, bytes] = {}
    for m in mats.values():
        snap = m.prepare()
        for rid, s in (*snap.dirty.items(), *snap.finished.items()):
            states[rid] = encode_state(s)
    return lines, dict(sorted(states.items()))


def _raw_field(raw: bytes) -> dict[str, str]:
    """The record's bytes as text, or in hex when they are not UTF-8 (a dead letter)."""
    try:
        return {"raw": raw.decode()}
    except UnicodeDecodeError:
        return {"raw_hex": raw.hex()}


def recorded() -> list[tuple[int, bytes]]:
    """(partition, bytes) of the records as recorded (the encoder of the day may format some
    floats differently: the recorded bytes are the log, never re-encoded)."""
    out = []
    for line in zstandard.decompress((HERE / "records.jsonl.zst").read_bytes()).splitlines():
        x = orjson.loads(line)
        raw = x["raw"].encode() if "raw" in x else bytes.fromhex(x["raw_hex"])
        out.append((x["partition"], raw))
    return out


def dump(lines: list[dict[str, Any]]) -> bytes:
    body = b"".join(orjson.dumps(x, option=orjson.OPT_SORT_KEYS) + b"\n" for x in lines)
    return zstandard.ZstdCompressor(level=19).compress(body)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="compare with the files, write nothing")
    ap.add_argument(
        "--rederive",
        action="store_true",
        help="keep the recorded record bytes, rewrite what replaying them gives (a rule change)",
    )
    args = ap.parse_args()
    if args.rederive:
        records = recorded()
    else:
        rng = random.Random(SEED)
        events = generate(seed=SEED, runs=WORKLOAD_RUNS)
        events = interleave(rng, events, extra_scripts(rng, WORKLOAD_RUNS + 1, 80))
        records = build_records(rng, events)
    lines, states = replay(records)
    files = {
        "records.jsonl.zst": dump(lines),
        "states.jsonl.zst": dump([{"run_id": k, "state": v.decode()} for k, v in states.items()]),
    }
    for name, data in files.items():
        path = HERE / name
        if args.check:
            same = zstandard.decompress(path.read_bytes()) == zstandard.decompress(data)
            print(f"{name}: {'identical' if same else 'DIFFERENT'}")
            if not same:
                return 1
        else:
            path.write_bytes(data)
            print(f"{name}: {len(data):,} bytes")
    n = sum(x["applied"] + x["duplicates"] + x["rejected"] for x in lines)
    dead = sum(x["dead"] is not None for x in lines)
    print(f"{len(lines)} records, {n} events, {dead} dead letters, {len(states)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
