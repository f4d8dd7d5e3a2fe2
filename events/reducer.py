"""The reducer: ``apply(state, event)`` folds one event into a run's state (Agola's rules).

Contract:

* pure and deterministic: no clock, no randomness. Derived ``run.phase_changed`` events take
  their ``at`` from the triggering event and the id ``f"{run_id}.phase.{seq}"``, so replaying a
  log gives identical states and identical derived events;
* never raises on a legal-but-refused request: it returns ``Rejected(reason, state)`` with the
  state unchanged (the event id is *not* remembered, so a replay refuses it the same way);
* idempotent: an event whose id is in the run's recent-id window returns
  ``Applied(state, derived=(), duplicate=True)`` with the very same state object;
* ``state`` is ``None`` for a run never seen; only ``run.created`` and
  ``run.setup_errors_reported`` are accepted then.

Phase rules: creation gives ``queued`` (``setuperror`` with setup errors: no tasks, final); start
and cancel only from ``queued``; stop only while running (sets ``stop``, cancels tasks not
started, clears ``waiting_approval``). While running, the result becomes ``failed`` when a task
fails without ``ignore_failure``, ``stopped`` when stopped, ``success`` when all tasks finished;
the phase becomes ``finished`` once the result is set and every task is finished. Start sets
``start_time``; every final phase sets ``end_time``. Final phases never change. Every phase or
result change emits one ``run.phase_changed`` with the next per-run ``seq`` (1 at creation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from events._fast import build, evolve
from events.catalogue import (
    CURRENT_VERSIONS,
    Event,
    EventType,
    PhaseChanged,
    TaskAnnotationsSet,
    TaskApproved,
    TaskStatusChanged,
)
from events.creation import create_run
from events.model import FINISHED_TASK_STATUSES, Phase, Result, Run, RunTask, TaskStatus
from events.state import ID_GENERATION, RunState

__all__ = ["Applied", "Outcome", "Rejected", "apply"]

_RUNNING = Phase.RUNNING
_UNKNOWN = Result.UNKNOWN
_FAILED_TASK = TaskStatus.FAILED
_FINISHED = FINISHED_TASK_STATUSES
_EXECUTED = frozenset({TaskStatus.RUNNING, TaskStatus.SUCCESS, TaskStatus.FAILED})
_PHASE_CHANGED = EventType.PHASE_CHANGED
_PHASE_CHANGED_V = CURRENT_VERSIONS[EventType.PHASE_CHANGED]


@dataclass(frozen=True, kw_only=True)
class Applied:
    """The event was applied (or was a duplicate: then ``state`` is the input, unchanged)."""

    state: RunState
    derived: tuple[Event, ...] = ()
    duplicate: bool = False


@dataclass(frozen=True, kw_only=True)
class Rejected:
    """The event was refused; ``state`` is the input state, unchanged (``None`` if no run)."""

    reason: str
    state: RunState | None


Outcome = Applied | Rejected


def apply(state: RunState | None, event: Event) -> Outcome:
    """Fold ``event`` into ``state`` (see the module docstring for the full contract)."""
    if state is None:
        if event.type is EventType.RUN_CREATED or event.type is EventType.SETUP_ERRORS_REPORTED:
            return _created(event)
        return Rejected(reason=f"unknown run {event.run_id}: {event.type} before its creation", state=None)  # fmt: skip
    eid = event.id
    if eid in state.recent_ids or eid in state.older_ids:
        return build(Applied, {"state": state, "derived": (), "duplicate": True})
    run = state.run
    if event.run_id != run.id:
        return Rejected(reason=f"event for run {event.run_id} applied to run {run.id}", state=state)
    handler = _HANDLERS.get(event.type)
    if handler is None:
        return Rejected(reason=f"{event.type} cannot be applied to an existing run", state=state)
    if run.phase in _FINAL_PHASES and handler is not _exists:
        return Rejected(reason=f"run {run.id} is {run.phase}: a final phase never changes", state=state)  # fmt: skip
    return handler(state, event)


def _created(event: Event) -> Outcome:
    made = create_run(event)
    if isinstance(made, str):
        return Rejected(reason=made, state=None)
    run, config, open_tasks = made
    blank = build(Run, {**run.__dict__, "phase": None, "result": None})  # so that seq 1 is emitted
    state = RunState(run=blank, config=config, seq=0, open_tasks=open_tasks)
    return _commit(state, event, run, open_tasks)


def _commit(state: RunState, event: Event, run: Run, open_tasks: int, *mid: Run) -> Applied:
    """The new state with ``event`` remembered, and one ``run.phase_changed`` per phase/result
    change from ``state.run`` through the intermediate runs ``mid`` to ``run``."""
    recent = state.recent_ids
    if len(recent) < ID_GENERATION:
        recent = (*recent, event.id)
        older = state.older_ids
    else:
        older = frozenset(recent)
        recent = (event.id,)
    seq = state.seq
    derived: tuple[Event, ...] = ()
    prev = state.run
    for r in (*mid, run):
        if r.phase is not prev.phase or r.result is not prev.result:
            seq += 1
            derived = (*derived, _phase_event(r, seq, event.at))
        prev = r
    new = build(
        RunState,
        {
            "run": run,
            "config": state.config,
            "seq": seq,
            "recent_ids": recent,
            "older_ids": older,
            "open_tasks": open_tasks,
        },
    )
    return build(Applied, {"state": new, "derived": derived, "duplicate": False})


def _phase_event(run: Run, seq: int, at: int) -> Event:
    data = build(
        PhaseChanged, {"group": run.group, "phase": run.phase, "result": run.result, "seq": seq}
    )
    fields = {
        "type": _PHASE_CHANGED,
        "version": _PHASE_CHANGED_V,
        "id": f"{run.id}.phase.{seq}",
        "run_id": run.id,
        "at": at,
        "data": data,
    }
    return build(Event, fields)


def _settle(run: Run, changes: dict[str, object], open_tasks: int, failed: bool, at: int) -> None:
    """Add to ``changes`` the result and phase a running run reaches (Agola's ``advanceRun``)."""
    result = run.result
    if result is _UNKNOWN:
        if failed:
            result = Result.FAILED
        elif changes.get("stop", run.stop):
            result = Result.STOPPED
        elif open_tasks == 0:
            result = Result.SUCCESS
        if result is not _UNKNOWN:
            changes["result"] = result
    if result is not _UNKNOWN and open_tasks == 0:
        changes["phase"] = Phase.FINISHED
        changes["end_time"] = at


def _task_status(state: RunState, event: Event) -> Outcome:
    run = state.run
    if run.phase is not _RUNNING:
        return Rejected(reason=f"run {run.id} is {run.phase}, not running", state=state)
    data: TaskStatusChanged = event.data  # type: ignore[assignment]
    tid, new = data.task_id, data.status
    task = run.tasks.get(tid)
    if task is None:
        return Rejected(reason=f"run {run.id} has no task {tid!r}", state=state)
    old = task.status
    if old in _FINISHED or new is old or new is TaskStatus.NOTSTARTED:
        return Rejected(reason=f"task {tid!r} cannot go from {old} to {new}", state=state)
    if not task.approved and new in _EXECUTED and state.config.tasks[tid].needs_approval:
        return Rejected(reason=f"task {tid!r} is waiting for approval", state=state)
    at = event.at
    open_tasks = state.open_tasks
    if new in _FINISHED:
        open_tasks -= 1
        new_task = evolve(task, {"status": new, "end_time": at})
    else:
        new_task = evolve(task, {"status": new, "start_time": at})
    tasks = dict(run.tasks)
    tasks[tid] = new_task
    changes: dict[str, object] = {"tasks": tasks}
    failed = new is _FAILED_TASK and not state.config.tasks[tid].ignore_failure
    if failed or open_tasks == 0 or run.result is not _UNKNOWN:
        _settle(run, changes, open_tasks, failed, at)
    return _commit(state, event, evolve(run, changes), open_tasks)


def _start(state: RunState, event: Event) -> Outcome:
    run = state.run
    if run.phase is not Phase.QUEUED:
        return Rejected(reason=f"run {run.id} is {run.phase}: only a queued run starts", state=state)  # fmt: skip
    at = event.at
    tasks = dict(run.tasks)
    for tid, rct in state.config.tasks.items():
        t = tasks[tid]
        if rct.needs_approval and t.status is TaskStatus.NOTSTARTED and not t.approved:
            tasks[tid] = evolve(t, {"waiting_approval": True})
    running = evolve(run, {"phase": _RUNNING, "start_time": at, "tasks": tasks})
    changes: dict[str, object] = {}
    _settle(running, changes, state.open_tasks, False, at)
    if not changes:
        return _commit(state, event, running, state.open_tasks)
    return _commit(state, event, evolve(running, changes), state.open_tasks, running)


def _cancel(state: RunState, event: Event) -> Outcome:
    run = state.run
    if run.phase is not Phase.QUEUED:
        return Rejected(reason=f"run {run.id} is {run.phase}: only a queued run is cancelled", state=state)  # fmt: skip
    at = event.at
    tasks = _cancel_not_started(run.tasks, at)
    changes = {"phase": Phase.CANCELLED, "end_time": at, "tasks": tasks}
    return _commit(state, event, evolve(run, changes), 0)


def _cancel_not_started(tasks: Mapping[str, RunTask], at: int) -> dict[str, RunTask]:
    out: dict[str, RunTask] = {}
    for tid, t in tasks.items():
        if t.status is TaskStatus.NOTSTARTED:
            t = evolve(t, {"status": TaskStatus.CANCELLED, "end_time": at, "waiting_approval": False})  # fmt: skip
        elif t.waiting_approval:
            t = evolve(t, {"waiting_approval": False})
        out[tid] = t
    return out


def _stop(state: RunState, event: Event) -> Outcome:
    run = state.run
    if run.phase is not _RUNNING:
        return Rejected(reason=f"run {run.id} is {run.phase}: only a running run stops", state=state)  # fmt: skip
    if run.stop:
        return Rejected(reason=f"run {run.id} is already stopping", state=state)
    at = event.at
    tasks = _cancel_not_started(run.tasks, at)
    open_tasks = sum(t.status not in _FINISHED for t in tasks.values())
    changes: dict[str, object] = {"stop": True, "tasks": tasks}
    _settle(run, changes, open_tasks, False, at)
    return _commit(state, event, evolve(run, changes), open_tasks)


def _task_approved(state: RunState, event: Event) -> Outcome:
    run = state.run
    data: TaskApproved = event.data  # type: ignore[assignment]
    task = run.tasks.get(data.task_id)
    if task is None:
        return Rejected(reason=f"run {run.id} has no task {data.task_id!r}", state=state)
    if task.approved:
        return Rejected(reason=f"task {task.id!r} is already approved", state=state)
    if not task.waiting_approval:
        return Rejected(reason=f"task {task.id!r} is not waiting for approval", state=state)
    tasks = {**run.tasks, task.id: evolve(task, {"approved": True, "waiting_approval": False})}
    return _commit(state, event, evolve(run, {"tasks": tasks}), state.open_tasks)


def _task_annotations(state: RunState, event: Event) -> Outcome:
    run = state.run
    data: TaskAnnotationsSet = event.data  # type: ignore[assignment]
    task = run.tasks.get(data.task_id)
    if task is None:
        return Rejected(reason=f"run {run.id} has no task {data.task_id!r}", state=state)
    tasks = {**run.tasks, task.id: evolve(task, {"annotations": dict(data.annotations)})}
    return _commit(state, event, evolve(run, {"tasks": tasks}), state.open_tasks)


def _exists(state: RunState, event: Event) -> Outcome:
    return Rejected(reason=f"run {state.run.id} already exists", state=state)


_FINAL_PHASES = frozenset(p for p in Phase if p.is_final())
_HANDLERS = {
    EventType.RUN_CREATED: _exists,
    EventType.SETUP_ERRORS_REPORTED: _exists,
    EventType.TASK_STATUS_CHANGED: _task_status,
    EventType.START_REQUESTED: _start,
    EventType.CANCEL_REQUESTED: _cancel,
    EventType.STOP_REQUESTED: _stop,
    EventType.TASK_APPROVED: _task_approved,
    EventType.TASK_ANNOTATIONS_SET: _task_annotations,
}
