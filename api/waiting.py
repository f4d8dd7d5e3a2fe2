"""Why a run or a task waits: derived from the run's state, never guessed (issue 20).

:func:`waiting` is pure: it reads a run's live state (``events.state.RunState``) and, for a queued
run, what the scheduler decides from (the group's running runs as the run index lists them, and
the scheduler's limit ``max_running_per_group``: 0 when it is off). It answers:

* for a queued run: a **slot** of its group (``k of N running in <group>, held by runs …``), or,
  with the scheduler off, a **start** request;
* for every task that has not ended, in the run config's order:

  - ``run``: the run is queued, its tasks wait for it to start;
  - ``parents``: parents that have not ended (named);
  - ``approval``: the task waits for an approval;
  - ``claim``: the task is ready and no executor holds it;
  - ``executor``: executor X claimed it at T and has not reported it running yet;
  - ``running``: executor X (or an executor that named none) runs it since T: its end is
    awaited;

  with the task's ``attempt`` (from 2 on: an executor was lost and the task went back to ready)
  and the ``reason`` the run service gave, when set.

A run in a final phase waits for nothing: ``None``. The answer is what ``GET /api/v1/runs/{id}``
shows as ``waiting`` (``api.views``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from msgspec import UNSET, Meta, UnsetType

from events import Phase, RunState, TaskStatus
from events.model import (
    FINISHED_TASK_STATUSES,
    Count,
    ExecutorId,
    Millis,
    Name,
    PlannedTask,
    RunId,
    RunTask,
    Shape,
    attempt_of,
    holder_of,
)

__all__ = ["RunWait", "TaskWait", "TaskWaiting", "Waiting", "WaitsFor", "waiting"]

#: How many running runs of a group the text names (the list itself has them all).
_NAMED = 10


class WaitsFor(StrEnum):
    """What a queued run waits for."""

    SLOT = "slot"  # a free slot of its group (the scheduler starts the oldest queued run)
    START = "start"  # a start request: the scheduler is off


class TaskWait(StrEnum):
    """What a task that has not ended waits for."""

    RUN = "run"  # the run is queued
    PARENTS = "parents"  # parents that have not ended
    APPROVAL = "approval"  # an approval
    CLAIM = "claim"  # an executor to claim it (it is ready)
    EXECUTOR = "executor"  # its executor to report it running (claimed, not running yet)
    RUNNING = "running"  # its executor to report its end (running)


#: The waits whose entry names the executor holding the task.
_HELD = frozenset({TaskWait.EXECUTOR, TaskWait.RUNNING})


class RunWait(Shape):
    """What a queued run waits for. ``running``: how many runs of ``group`` run now (the run
    index's view), ``limit``: the scheduler's cap per group (0: the scheduler is off),
    ``held_by``: the running runs."""

    what: WaitsFor
    text: str
    group: str
    running: Count
    limit: Annotated[int, Meta(ge=0, description="max_running_per_group; 0: scheduler off")]
    held_by: tuple[RunId, ...] = ()


class TaskWaiting(Shape):
    """What one task waits for. ``parents``: the parents that have not ended (``parents``);
    ``executor`` and ``since``: who holds it and since when (the claim, or the start while
    running); ``attempt``: set from 2 on; ``reason``: why the run service took it, when set."""

    task_id: Name
    what: TaskWait
    text: str
    parents: tuple[Name, ...] = ()
    executor: ExecutorId | UnsetType = UNSET
    since: Millis | UnsetType = UNSET
    attempt: Annotated[int, Meta(ge=2)] | UnsetType = UNSET
    reason: str | UnsetType = UNSET


class Waiting(Shape):
    """What a run that is not final waits for: ``run`` for a queued run (else null), and one
    entry per task that has not ended, in the run config's order."""

    run: RunWait | None
    tasks: tuple[TaskWaiting, ...]


def waiting(
    state: RunState, *, group_running: Sequence[str] = (), max_running: int = 0
) -> Waiting | None:
    """What run ``state`` waits for (``None`` for a run in a final phase).

    ``group_running``: the ids of the runs of the run's group that run now (only read for a
    queued run); ``max_running``: the scheduler's limit per group (0: off)."""
    run, config = state.run, state.config
    if run.phase.is_final():
        return None
    queued = run.phase is Phase.QUEUED
    run_wait = _run_wait(state, group_running, max_running) if queued else None
    tasks: list[TaskWaiting] = []
    for tid, planned in config.tasks.items():
        task = run.tasks.get(tid)
        if task is None or task.status in FINISHED_TASK_STATUSES:
            continue
        if queued:
            what, text = TaskWait.RUN, "the run to start"
        else:
            what, text = _task_wait(state, planned, task)
        attempt = attempt_of(task)
        holder = holder_of(task)
        since: int | UnsetType = UNSET
        if what is TaskWait.RUNNING and task.start_time is not None:
            since = task.start_time
        elif what is TaskWait.EXECUTOR and task.claim_time is not UNSET:
            since = task.claim_time
        parents = _open_parents(state, planned) if what is TaskWait.PARENTS else ()
        entry = TaskWaiting(
            task_id=tid,
            what=what,
            text=text + _note(attempt, task.released),
            parents=parents,
            executor=holder if holder and what in _HELD else UNSET,
            since=since,
            attempt=attempt if attempt > 1 else UNSET,
            reason=task.reason,
        )
        tasks.append(entry)
    return Waiting(run=run_wait, tasks=tuple(tasks))


def _open_parents(state: RunState, planned: PlannedTask) -> tuple[str, ...]:
    tasks = state.run.tasks
    return tuple(d.task_id for d in planned.depends if tasks[d.task_id].status not in FINISHED_TASK_STATUSES)  # fmt: skip


def _task_wait(state: RunState, planned: PlannedTask, task: RunTask) -> tuple[TaskWait, str]:
    """What a task of a running run that has not ended waits for, and the sentence saying it."""
    holder = holder_of(task)
    if task.status is TaskStatus.RUNNING:
        when = "" if task.start_time is None else f" (running since {_time(task.start_time)})"
        if holder:
            return TaskWait.RUNNING, f"executor {holder} to report its end{when}"
        return TaskWait.RUNNING, f"a report of its end{when}; no executor named"
    parents = _open_parents(state, planned)
    if parents:
        return TaskWait.PARENTS, f"parents to end: {', '.join(parents)}"
    if task.waiting_approval or (planned.needs_approval and not task.approved):
        return TaskWait.APPROVAL, "an approval"
    if holder:
        details = []
        if task.claim_time is not UNSET:
            details.append(f"claimed at {_time(task.claim_time)}")
        if task.lease_ms is not UNSET:
            details.append(f"lease {task.lease_ms / 1000:g} s")
        said = f" ({', '.join(details)})" if details else ""
        return TaskWait.EXECUTOR, f"executor {holder} to report it running{said}"
    return TaskWait.CLAIM, "an executor to claim it (ready)"


def _run_wait(state: RunState, group_running: Sequence[str], max_running: int) -> RunWait:
    run = state.run
    group = run.group
    held = tuple(sorted(r for r in set(group_running) if r != run.id))
    if max_running <= 0:
        # No scheduler, no slots: what else runs in the group does not hold this run back (and
        # naming it would make the answer change with other runs, not with this one).
        return RunWait(
            what=WaitsFor.START,
            text="a start request (scheduler off)",
            group=group,
            running=0,
            limit=0,
        )
    text = f"a group slot: {len(held)} of {max_running} running in {group}"
    if held:
        named = ", ".join(held[:_NAMED])
        more = f" and {len(held) - _NAMED} more" if len(held) > _NAMED else ""
        text += f", held by run{'s' if len(held) > 1 else ''} {named}{more}"
    if len(held) < max_running:
        text += "; a slot is free: the scheduler starts the group's oldest queued run next"
    return RunWait(
        what=WaitsFor.SLOT, text=text, group=group, running=len(held), limit=max_running,
        held_by=held,
    )  # fmt: skip


def _note(attempt: int, released: tuple[str, ...] | UnsetType) -> str:
    """``; attempt 2, executor X lost it`` for a task an executor lost, else ""."""
    if attempt <= 1:
        return ""
    lost = "" if released is UNSET or not released else f", lost by {', '.join(released)}"
    return f"; attempt {attempt}{lost}"


def _time(ms: int) -> str:
    """``2025-11-28T01:17:38Z``: a time in UTC, to the second."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
