"""A seeded, realistic run workload: what tests, faults and benchmarks push through the pipeline.

``generate(seed, runs)`` returns events in one valid global order, runs interleaved as they would
be on a busy system: runs created with 3–10 tasks, started, tasks running and ending (mostly in
success, some failures, some ignored failures), some runs stopped while running, some cancelled
while queued, some created with setup errors, and some refused requests (a stop on a queued run)
that the reducer must record as rejections. The same seed always gives the same events.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from events.catalogue import (
    CancelRequested,
    Event,
    Payload,
    RunCreated,
    StartRequested,
    StopRequested,
    TaskStatusChanged,
    make_event,
)
from events.ids import format_run_id
from events.model import RunConfigTask, SetupError, TaskDepend, TaskStatus

__all__ = ["generate", "run_script"]

T0 = 1_780_000_000_000  # a fixed epoch (ms) so that the same seed gives the same bytes


def _groups(rng: random.Random) -> str:
    project = rng.choice([f"p{i:03d}" for i in range(40)])
    kind = rng.choices(["branch", "tag", "pr"], weights=[8, 1, 2])[0]
    ref = (
        rng.choice(["main", "dev", "feature-x", "release-1.2", "fix/bug"])
        if kind == "branch"
        else str(rng.randint(1, 99))
    )
    return f"/project/{project}/{kind}/{ref.replace('/', '%2F')}"


def run_script(rng: random.Random, run_id: str) -> list[Payload]:
    """The payloads one run goes through, in order."""
    ntasks = rng.randint(3, 10)
    tasks = tuple(
        RunConfigTask(
            id=f"t{i}",
            name=f"task-{i}",
            depends=(TaskDepend(task_id="t0"),) if i > 0 and rng.random() < 0.3 else (),
            environment={"STEP": str(i)},
            ignore_failure=rng.random() < 0.1,
        )
        for i in range(ntasks)
    )
    group = _groups(rng)
    kind = rng.random()
    if kind < 0.03:  # the webhook receiver could not parse the project's config
        return [
            RunCreated(
                name="Setup Error",
                group=group,
                setup_errors=(SetupError(message="config: bad yaml"),),
            )
        ]
    created = RunCreated(
        name=f"build-{run_id[-6:]}",
        group=group,
        tasks=tasks,
        environment={"CI": "true"},
        static_environment={"COMMIT": f"{rng.getrandbits(40):010x}"},
        annotations={"branch": group.rsplit("/", 1)[-1]},
    )
    if kind < 0.08:
        return [created, StopRequested(), CancelRequested()]  # the stop is refused: still queued
    script: list[Payload] = [created, StartRequested()]
    stop_at = rng.randint(1, ntasks) if kind < 0.15 else None
    for i, t in enumerate(tasks):
        if stop_at is not None and i == stop_at:
            script.append(StopRequested())
            break
        script.append(TaskStatusChanged(task_id=t.id, status=TaskStatus.RUNNING))
        end = TaskStatus.FAILED if rng.random() < 0.06 else TaskStatus.SUCCESS
        script.append(TaskStatusChanged(task_id=t.id, status=end))
    return script


def generate(seed: int, runs: int, *, first_run_id: int = 1, in_flight: int = 64) -> list[Event]:
    """``runs`` runs (ids from ``first_run_id``), interleaved with ``in_flight`` runs at a time."""
    return list(iter_events(seed, runs, first_run_id=first_run_id, in_flight=in_flight))


def iter_events(
    seed: int, runs: int, *, first_run_id: int = 1, in_flight: int = 64
) -> Iterator[Event]:
    rng = random.Random(seed)
    pending: list[tuple[str, list[Payload], int]] = []
    next_run, at = 0, T0
    while next_run < runs or pending:
        while next_run < runs and len(pending) < in_flight:
            rid = format_run_id(first_run_id + next_run)
            pending.append((rid, run_script(rng, rid), 0))
            next_run += 1
        i = rng.randrange(len(pending))
        rid, script, pos = pending[i]
        at += rng.randint(1, 50)
        yield make_event(script[pos], id=f"{rid}.{pos}", run_id=rid, at=at)
        if pos + 1 < len(script):
            pending[i] = (rid, script, pos + 1)
        else:
            pending[i] = pending[-1]
            pending.pop()
