"""The reducer: ``apply(state, event)`` folds one event into a run's state (Agola's rules).

Contract:

* pure and deterministic: no clock, no randomness. Derived ``run.phase_changed`` events take
  their ``at`` from the triggering event and the id ``f"{run_id}.phase.{seq}"``, so replaying a
  log gives identical states and identical derived events;
* never raises on a legal-but-refused request: it returns ``Refused(reason, state)`` with the
  state unchanged (the event id is *not* remembered, so a replay refuses it the same way);
* idempotent: an event whose id is in the run's recent-id window returns
  ``Applied(state, derived=(), duplicate=True)`` with the very same state object;
* ``state`` is ``None`` for a run never seen; only ``run.created`` and
  ``run.setup_errors_reported`` are accepted then.

Phase rules: creation gives ``queued`` (``setuperror`` with setup errors: no tasks, final); start
and cancel only from ``queued``; stop only while running (sets ``stop``, marks the tasks not
started ``skipped`` as Agola's scheduler does, clears ``waiting_approval``; a stop of a run already
stopping is accepted and changes nothing but the id window). While running, the result becomes
``failed`` when a task fails without ``ignore_failure``, ``stopped`` when stopped, ``success``
when all tasks finished; the phase becomes ``finished`` once the result is set and every task is
finished. Start sets ``start_time``; every final phase sets ``end_time``. Final phases never
change. Every phase or result change emits one ``run.phase_changed`` with the next per-run ``seq``
(1 at creation).

Task rules (``events.advance``, Agola's ``advanceRunTasks``): when the run starts, and whenever a
task ends, every task whose parents have all ended is judged by its dependency conditions:
skipped (cascading) when they do not hold, else ready, or waiting for approval first when it needs
one (approving it makes it ready). A task not started may only be reported started or ended once
it is ready. Every task that becomes ready emits one ``task.ready`` with the next per-run ready
``seq`` (id ``f"{run_id}.ready.{seq}"``), after the event's ``run.phase_changed`` if any, several
in run-config order. After a stop no task becomes ready: there is none left not started.

Holder rules (issue 20): a ready task is *claimed* by one executor (``task.claimed``): the first
claim wins, a claim by the holder again renews its lease, any other is refused naming the holder.
A status report naming an executor (``executor_id``) for a task another executor holds is refused;
one for an unclaimed ready task claims it (with the default lease), so a producer that never
claims keeps working; a report naming no executor is accepted only for a task nobody holds. The
owner takes time decisions and appends them as ``task.released`` (never a clock here): a release
that matches the task's attempt and holder either puts it back to ready (``executor_lost`` while
the task has retries left: a new attempt, a new ``task.ready``, and the lost executor refused for
it from then on) or ends it ``failed`` with the release's reason, and the run advances as for any
failure. A release that no longer matches (the task ended, another attempt, another holder) is
refused: a second owner's or a retried append changes nothing.

Why ``skipped``, not ``cancelled``, on stop: it is what Agola's scheduler does, and a ``skipped``
task reads right to whoever looks at the run (it was never run because of how the run went);
``cancelled`` stays the status of the tasks of a run cancelled while queued.
"""

from __future__ import annotations

from collections.abc import Mapping

from msgspec import UNSET
from msgspec.structs import replace

from events.advance import GRAPHS, graph_of, judge_at_start, judge_children
from events.catalogue import (
    DEFAULT_LEASE_MS,
    Event,
    EventType,
    PhaseChanged,
    PhaseChangedEvent,
    ReleaseReason,
    TaskAnnotationsSet,
    TaskApproved,
    TaskClaimed,
    TaskReady,
    TaskReadyEvent,
    TaskReleased,
    TaskStatusChangedEvent,
)
from events.creation import create_run
from events.model import (
    FINISHED_TASK_STATUSES,
    OpenShape,
    Phase,
    PlannedTask,
    Result,
    Run,
    RunConfig,
    RunTask,
    TaskStatus,
    attempt_of,
    holder_of,
    retries_of,
)
from events.state import ID_GENERATION, RunState

__all__ = ["Applied", "Refused", "Verdict", "apply"]

_RUNNING = Phase.RUNNING
_UNKNOWN = Result.UNKNOWN
_FAILED_TASK = TaskStatus.FAILED
_FINISHED = FINISHED_TASK_STATUSES
_EXECUTED = frozenset({TaskStatus.RUNNING, TaskStatus.SUCCESS, TaskStatus.FAILED})
_RUN_CREATED = EventType.RUN_CREATED
_NOTSTARTED = TaskStatus.NOTSTARTED
_NO_IDS: frozenset[str] = frozenset()


class Applied(OpenShape):
    """The event was applied (or was a duplicate: then ``state`` is the input, unchanged)."""

    state: RunState
    derived: tuple[Event, ...] = ()
    duplicate: bool = False


class Refused(OpenShape):
    """The event was refused; ``state`` is the input state, unchanged (``None`` if no run)."""

    reason: str
    state: RunState | None


#: The reducer's verdict on one event (what :func:`apply` returns).
Verdict = Applied | Refused


def apply(state: RunState | None, event: Event, derive: bool = True) -> Verdict:
    """Fold ``event`` into ``state`` (see the module docstring for the full contract).

    ``derive=False``: the same verdict and the same state, without the derived events (``derived``
    is always empty). A replay rebuilds state only and drops them: building them was about 9 % of
    its applying."""
    kind = event.type
    if state is None:
        if kind is _RUN_CREATED or kind is EventType.SETUP_ERRORS_REPORTED:
            return _created(event, derive)
        return Refused(reason=f"unknown run {event.run_id}: {kind} before its creation", state=None)  # fmt: skip
    eid = event.id
    if eid in state.recent_ids or eid in state.older_ids:
        return _applied(state, (), True)
    run = state.run
    if event.run_id != run.id:
        return Refused(reason=f"event for run {event.run_id} applied to run {run.id}", state=state)
    if type(event) is TaskStatusChangedEvent:  # most events: no table, no final-phase check
        return _task_status(state, event, derive)
    handler = _HANDLERS.get(kind)
    if handler is None:
        return Refused(reason=f"{kind} cannot be applied to an existing run", state=state)
    if run.phase in _FINAL_PHASES and handler is not _exists:
        return Refused(reason=f"run {run.id} is {run.phase}: a final phase never changes", state=state)  # fmt: skip
    return handler(state, event, derive)


def _applied(state: RunState, derived: tuple[Event, ...], duplicate: bool) -> Applied:
    return Applied(state=state, derived=derived, duplicate=duplicate)


def _state(
    state: RunState,
    event_id: str,
    run: Run,
    seq: int,
    open_tasks: int,
    config: RunConfig,
    ready_seq: int,
) -> RunState:
    """The next state: ``run`` and ``event_id`` remembered in the recent-id window."""
    recent = state.recent_ids
    if len(recent) < ID_GENERATION:
        recent = (*recent, event_id)
        older = state.older_ids
    else:
        older = frozenset(recent)
        recent = (event_id,)
    return RunState(
        run=run,
        config=config,
        seq=seq,
        recent_ids=recent,
        older_ids=older,
        open_tasks=open_tasks,
        ready_seq=ready_seq,
    )


def _created(event: Event, derive: bool) -> Verdict:
    made = create_run(event)
    if isinstance(made, str):
        return Refused(reason=made, state=None)
    run, config, open_tasks = made
    # The run did not exist before: its first phase and result are always a change (seq 1).
    derived = (_phase_event(run, 1, event.at),) if derive else ()
    state = RunState(
        run=run,
        config=config,
        seq=1,
        recent_ids=(event.id,),
        older_ids=_NO_IDS,
        open_tasks=open_tasks,
    )
    return _applied(state, derived, False)


def _commit(
    state: RunState,
    event: Event,
    run: Run,
    open_tasks: int,
    *mid: Run,
    ready: list[str] | None = None,
    derive: bool,
) -> Applied:
    """The new state with ``event`` remembered, one ``run.phase_changed`` per phase/result change
    from ``state.run`` through the intermediate runs ``mid`` to ``run``, then one ``task.ready``
    per task of ``ready``."""
    seq = state.seq
    derived: tuple[Event, ...] = ()
    prev = state.run
    for r in (*mid, run):
        if r.phase is not prev.phase or r.result is not prev.result:
            seq += 1
            if derive:
                derived = (*derived, _phase_event(r, seq, event.at))
        prev = r
    ready_seq = state.ready_seq
    if ready:
        if derive:
            derived = (*derived, *_ready_events(run.id, state.config.tasks, ready, ready_seq, event.at))  # fmt: skip
        ready_seq += len(ready)
    new = _state(state, event.id, run, seq, open_tasks, state.config, ready_seq)
    return _applied(new, derived, False)


def _phase_event(run: Run, seq: int, at: int) -> Event:
    if seq == 1:  # the first change names the run for the index (listings show name and number)
        data = PhaseChanged(
            group=run.group,
            phase=run.phase,
            result=run.result,
            seq=1,
            name=run.name,
            counter=run.counter,
        )
    else:
        data = PhaseChanged(group=run.group, phase=run.phase, result=run.result, seq=seq)
    rid = run.id
    return PhaseChangedEvent(version=1, id=f"{rid}.phase.{seq}", run_id=rid, at=at, data=data)


def _ready_events(
    rid: str, tasks: Mapping[str, PlannedTask], ready: list[str], seq: int, at: int
) -> tuple[Event, ...]:
    """One ``task.ready`` per task of ``ready`` (``tasks``: the run config's), numbered from
    ``seq + 1``."""
    if len(ready) == 1:  # the usual case (a chain): no list to build
        tid = ready[0]
        seq += 1
        data = TaskReady(task_id=tid, level=tasks[tid].level, seq=seq)
        return (TaskReadyEvent(version=1, id=f"{rid}.ready.{seq}", run_id=rid, at=at, data=data),)  # fmt: skip
    out: list[Event] = []
    for tid in ready:
        seq += 1
        data = TaskReady(task_id=tid, level=tasks[tid].level, seq=seq)
        out.append(TaskReadyEvent(version=1, id=f"{rid}.ready.{seq}", run_id=rid, at=at, data=data))  # fmt: skip
    return tuple(out)


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
        # A finished run never advances again: its graph leaves the cache now, not with the
        # next 65,536 runs' (GRAPHS would otherwise keep that many finished runs' configs alive).
        GRAPHS.pop(run.id, None)


def _task_status(state: RunState, event: TaskStatusChangedEvent, derive: bool) -> Verdict:
    # The hot path (most events): the phase check of _commit is done for the one possible change,
    # and _state and _applied are written out inline (a call costs as much as a line here).
    run = state.run
    if run.phase is not _RUNNING:
        if run.phase in _FINAL_PHASES:  # apply() leaves this check to us
            return Refused(reason=f"run {run.id} is {run.phase}: a final phase never changes", state=state)  # fmt: skip
        return Refused(reason=f"run {run.id} is {run.phase}, not running", state=state)
    data = event.data
    tid, new = data.task_id, data.status
    task = run.tasks.get(tid)
    if task is None:
        return Refused(reason=f"run {run.id} has no task {tid!r}", state=state)
    old = task.status
    if old in _FINISHED or new is old or new is _NOTSTARTED:
        return Refused(reason=f"task {tid!r} cannot go from {old} to {new}", state=state)
    executor = data.executor_id
    holder = task.holder
    claim = False  # a report naming an executor claims an unclaimed ready task
    if holder is not UNSET:
        if executor != holder:
            return Refused(reason=f"task {tid!r} is held by executor {holder}", state=state)
    elif executor is not UNSET:
        if task.released is not UNSET and executor in task.released:
            return Refused(reason=f"executor {executor} lost task {tid!r}: its lease lapsed", state=state)  # fmt: skip
        claim = old is _NOTSTARTED
    config = state.config
    if old is _NOTSTARTED:  # parents_ended and the approval check, inlined (no graph needed)
        planned = config.tasks[tid]
        current = run.tasks
        for d in planned.depends:
            if current[d.task_id].status not in _FINISHED:
                return Refused(reason=f"task {tid!r} is not ready: a parent has not ended", state=state)  # fmt: skip
        if planned.needs_approval and not task.approved and new in _EXECUTED:
            return Refused(reason=f"task {tid!r} is waiting for approval", state=state)
    at = event.at
    open_tasks = state.open_tasks
    tasks = dict(run.tasks)
    ready: list[str] | None = None
    if claim:
        task = replace(task, holder=executor, lease_ms=DEFAULT_LEASE_MS, claim_time=at)
    if new in _FINISHED:
        open_tasks -= 1
        if task.waiting_approval:
            tasks[tid] = replace(task, status=new, end_time=at, waiting_approval=False)
        else:
            tasks[tid] = replace(task, status=new, end_time=at)
        if not run.stop:
            hit = GRAPHS.get(run.id)  # graph_of, inlined
            graph = hit[1] if hit is not None and hit[0] is config else graph_of(config)
            if tid in graph.children:
                ready, skipped = judge_children(tasks, graph, tid, at)
                open_tasks -= skipped
    else:
        tasks[tid] = replace(task, status=new, start_time=at)
    failed = new is _FAILED_TASK and not config.tasks[tid].ignore_failure
    seq = state.seq
    derived: tuple[Event, ...] = ()
    if failed or open_tasks == 0 or run.result is not _UNKNOWN:
        changes: dict[str, object] = {}
        _settle(run, changes, open_tasks, failed, at)
        new_run = replace(run, tasks=tasks, **changes)
        if new_run.phase is not run.phase or new_run.result is not run.result:
            seq += 1
            if derive:
                derived = (_phase_event(new_run, seq, at),)
    else:  # neither phase nor result can change
        new_run = replace(run, tasks=tasks)
    ready_seq = state.ready_seq
    if ready:
        if derive:
            ready_events = _ready_events(run.id, config.tasks, ready, ready_seq, at)
            derived = (*derived, *ready_events) if derived else ready_events
        ready_seq += len(ready)
    recent = state.recent_ids  # _state, inlined
    if len(recent) < ID_GENERATION:
        recent = (*recent, event.id)
        older = state.older_ids
    else:
        older = frozenset(recent)
        recent = (event.id,)
    new_state = RunState(
        run=new_run,
        config=config,
        seq=seq,
        recent_ids=recent,
        older_ids=older,
        open_tasks=open_tasks,
        ready_seq=ready_seq,
    )
    return Applied(state=new_state, derived=derived)


def _start(state: RunState, event: Event, derive: bool) -> Verdict:
    run = state.run
    if run.phase is not Phase.QUEUED:
        return Refused(reason=f"run {run.id} is {run.phase}: only a queued run starts", state=state)  # fmt: skip
    at = event.at
    graph = graph_of(state.config)
    tasks = dict(run.tasks)
    ready, skipped = judge_at_start(tasks, graph, at)
    open_tasks = state.open_tasks - skipped
    running = replace(run, phase=_RUNNING, start_time=at, tasks=tasks)
    changes: dict[str, object] = {}
    _settle(run, changes, open_tasks, False, at)  # result and stop are those of ``running``
    if not changes:
        return _commit(state, event, running, open_tasks, ready=ready, derive=derive)
    done = replace(running, **changes)
    return _commit(state, event, done, open_tasks, running, ready=ready, derive=derive)


def _cancel(state: RunState, event: Event, derive: bool) -> Verdict:
    run = state.run
    if run.phase is not Phase.QUEUED:
        return Refused(reason=f"run {run.id} is {run.phase}: only a queued run is cancelled", state=state)  # fmt: skip
    at = event.at
    tasks = _end_not_started(run.tasks, TaskStatus.CANCELLED, at)
    return _commit(
        state,
        event,
        replace(run, phase=Phase.CANCELLED, end_time=at, tasks=tasks),
        0,
        derive=derive,
    )


def _end_not_started(tasks: Mapping[str, RunTask], status: TaskStatus, at: int) -> dict[str, RunTask]:  # fmt: skip
    """``tasks`` with every task not started ended with ``status``; no task waits for approval."""
    out: dict[str, RunTask] = {}
    for tid, t in tasks.items():
        if t.status is TaskStatus.NOTSTARTED:
            t = replace(t, status=status, end_time=at, waiting_approval=False)
        elif t.waiting_approval:
            t = replace(t, waiting_approval=False)
        out[tid] = t
    return out


def _stop(state: RunState, event: Event, derive: bool) -> Verdict:
    run = state.run
    if run.phase is not _RUNNING:
        return Refused(reason=f"run {run.id} is {run.phase}: only a running run stops", state=state)  # fmt: skip
    if run.stop:  # a retried stop must not fail (Agola): accepted, nothing changes
        return _commit(state, event, run, state.open_tasks, derive=derive)
    at = event.at
    tasks = _end_not_started(run.tasks, TaskStatus.SKIPPED, at)
    open_tasks = sum(t.status not in _FINISHED for t in tasks.values())
    changes: dict[str, object] = {"stop": True, "tasks": tasks}
    _settle(run, changes, open_tasks, False, at)
    return _commit(state, event, replace(run, **changes), open_tasks, derive=derive)


def _task_approved(state: RunState, event: Event, derive: bool) -> Verdict:
    run = state.run
    data = event.data
    assert isinstance(data, TaskApproved)  # the table routes task.approved here
    task = run.tasks.get(data.task_id)
    if task is None:
        return Refused(reason=f"run {run.id} has no task {data.task_id!r}", state=state)
    if task.approved:
        return Refused(reason=f"task {task.id!r} is already approved", state=state)
    if not task.waiting_approval:
        return Refused(reason=f"task {task.id!r} is not waiting for approval", state=state)
    # Only a task of a running run that is not stopping waits for approval: now it is ready.
    tasks = {**run.tasks, task.id: replace(task, approved=True, waiting_approval=False)}
    return _commit(
        state, event, replace(run, tasks=tasks), state.open_tasks, ready=[task.id], derive=derive
    )


def _task_annotations(state: RunState, event: Event, derive: bool) -> Verdict:
    run = state.run
    data = event.data
    assert isinstance(data, TaskAnnotationsSet)  # the table routes task.annotations_set here
    task = run.tasks.get(data.task_id)
    if task is None:
        return Refused(reason=f"run {run.id} has no task {data.task_id!r}", state=state)
    tasks = {**run.tasks, task.id: replace(task, annotations=dict(data.annotations))}
    return _commit(state, event, replace(run, tasks=tasks), state.open_tasks, derive=derive)


def _task_claimed(state: RunState, event: Event, derive: bool) -> Verdict:
    run = state.run
    data = event.data
    assert isinstance(data, TaskClaimed)  # the table routes task.claimed here
    tid, executor = data.task_id, data.executor_id
    if run.phase is not _RUNNING:
        return Refused(reason=f"run {run.id} is {run.phase}, not running", state=state)
    task = run.tasks.get(tid)
    if task is None:
        return Refused(reason=f"run {run.id} has no task {tid!r}", state=state)
    holder = task.holder
    if holder is not UNSET and holder != executor:
        return Refused(reason=f"task {tid!r} is held by executor {holder}", state=state)
    if task.status in _FINISHED:
        return Refused(reason=f"task {tid!r} cannot be claimed: it ended {task.status}", state=state)  # fmt: skip
    if holder is not UNSET:  # the holder claims again: its lease is renewed
        tasks = {**run.tasks, tid: replace(task, lease_ms=data.lease_ms)}
        return _commit(state, event, replace(run, tasks=tasks), state.open_tasks, derive=derive)
    if task.released is not UNSET and executor in task.released:
        return Refused(reason=f"executor {executor} lost task {tid!r}: its lease lapsed", state=state)  # fmt: skip
    if task.status is not _NOTSTARTED:
        return Refused(reason=f"task {tid!r} is {task.status} without a holder: not ready to claim", state=state)  # fmt: skip
    planned = state.config.tasks[tid]
    for d in planned.depends:
        if run.tasks[d.task_id].status not in _FINISHED:
            return Refused(reason=f"task {tid!r} is not ready: a parent has not ended", state=state)  # fmt: skip
    if task.waiting_approval or (planned.needs_approval and not task.approved):
        return Refused(reason=f"task {tid!r} is waiting for approval", state=state)
    if run.stop:
        return Refused(reason=f"run {run.id} is stopping: task {tid!r} will not run", state=state)  # fmt: skip
    claimed = replace(task, holder=executor, lease_ms=data.lease_ms, claim_time=event.at)
    tasks = {**run.tasks, tid: claimed}
    return _commit(state, event, replace(run, tasks=tasks), state.open_tasks, derive=derive)


def _task_released(state: RunState, event: Event, derive: bool) -> Verdict:
    run = state.run
    data = event.data
    assert isinstance(data, TaskReleased)  # the table routes task.released here
    tid = data.task_id
    if run.phase is not _RUNNING:
        return Refused(reason=f"run {run.id} is {run.phase}, not running", state=state)
    task = run.tasks.get(tid)
    if task is None:
        return Refused(reason=f"run {run.id} has no task {tid!r}", state=state)
    holder, attempt = holder_of(task), attempt_of(task)
    if task.status in _FINISHED:
        return Refused(reason=f"stale release of task {tid!r}: it ended {task.status}", state=state)  # fmt: skip
    if attempt != data.attempt or holder != data.executor_id or (not holder and task.status is _NOTSTARTED):  # fmt: skip
        held = f"held by {holder}" if holder else "held by no executor"
        return Refused(reason=f"stale release of task {tid!r}: attempt {attempt} is {task.status}, {held}", state=state)  # fmt: skip
    released = task.released if task.released is not UNSET else ()
    if holder:
        released = (*released, holder)
    lost = data.reason is ReleaseReason.EXECUTOR_LOST
    if lost and attempt <= retries_of(state.config.tasks[tid]) and not run.stop:
        again = RunTask(
            id=tid,
            skip=task.skip,
            approved=task.approved,
            annotations=task.annotations,
            attempt=attempt + 1,
            released=released,
        )
        tasks = {**run.tasks, tid: again}
        return _commit(
            state, event, replace(run, tasks=tasks), state.open_tasks, ready=[tid], derive=derive
        )
    at = event.at
    ended = replace(task, status=_FAILED_TASK, end_time=at, reason=str(data.reason))
    if released:
        ended = replace(ended, released=released)
    return _end_task(state, event, tid, ended, derive)


def _end_task(state: RunState, event: Event, tid: str, ended: RunTask, derive: bool) -> Verdict:
    """``state`` with task ``tid`` ended as ``ended``: its children judged (unless the run is
    stopping), the run's result and phase settled, as when an executor reports the end."""
    run, config, at = state.run, state.config, event.at
    tasks = dict(run.tasks)
    tasks[tid] = ended
    open_tasks = state.open_tasks - 1
    ready: list[str] | None = None
    if not run.stop:
        graph = graph_of(config)
        if tid in graph.children:
            ready, skipped = judge_children(tasks, graph, tid, at)
            open_tasks -= skipped
    failed = ended.status is _FAILED_TASK and not config.tasks[tid].ignore_failure
    changes: dict[str, object] = {"tasks": tasks}
    _settle(run, changes, open_tasks, failed, at)
    return _commit(state, event, replace(run, **changes), open_tasks, ready=ready, derive=derive)


def _exists(state: RunState, event: Event, derive: bool) -> Verdict:
    return Refused(reason=f"run {state.run.id} already exists", state=state)


_FINAL_PHASES = frozenset(p for p in Phase if p.is_final())
_HANDLERS = {
    EventType.RUN_CREATED: _exists,
    EventType.SETUP_ERRORS_REPORTED: _exists,
    EventType.START_REQUESTED: _start,
    EventType.CANCEL_REQUESTED: _cancel,
    EventType.STOP_REQUESTED: _stop,
    EventType.TASK_APPROVED: _task_approved,
    EventType.TASK_ANNOTATIONS_SET: _task_annotations,
    EventType.TASK_CLAIMED: _task_claimed,
    EventType.TASK_RELEASED: _task_released,
}
