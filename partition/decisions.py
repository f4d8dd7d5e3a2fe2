"""Decisions a partition's owner takes from time: lapsed leases and passed timeouts. No Faust here.

The reducer never reads a clock (``events.reducer``). What depends on time is decided here, by the
owner of the run's partition, and appended to ``runs.events`` as an ordinary event with a
deterministic id (``events.catalogue.decision_id``), so that:

* replay and ``runstream verify`` rebuild the same state from the log alone (the decision is in
  it, with the time it was taken);
* an owner that appends a decision twice (a retry, or a zombie owner after a rebalance) has it
  applied once: the reducer drops a duplicate id, and refuses a release that no longer matches
  the task (``stale_release``);
* a new owner decides again only what is still due in the state it loaded and caught up with:
  a decision its predecessor appended before dying is in the log it reads first.

Two kinds:

* **a lapsed lease**: an executor holding tasks here has not been heard from (``runs.heartbeats``,
  :class:`LivenessView`) for longer than its lease: each task it holds is released with the
  reason ``executor_lost`` (``task.released``: back to ready while retries remain, else failed);
* **a passed timeout**: a task claimed (or started) longer than its ``timeout_ms`` ago is released
  with the reason ``timeout`` (failed); a run running longer than its own ``timeout_ms`` gets a
  ``run.stop_requested`` with the reason ``timeout``.

What to watch is kept incrementally (:meth:`Timekeeper.watch` for each run whose state changed):
executor → the runs where it holds a task (with the shortest claim lease among them), and a heap
of deadlines checked against the state when they fall due, so a sweep costs what changed, not
the partition's size. A sweep looks at an executor's runs only once its shortest lease lapsed:
a run whose task is held by a live executor is not decoded (``partition.active`` keeps such a
run cold, as it keeps every run that sits still). Times: deadlines are in
the log's time (event ``at`` values, ms since the epoch, compared with this machine's clock);
leases in this process's monotonic time (when a heartbeat was received here), so a clock step
never releases a task.

Also here: :func:`stuck`, the runs and tasks with no progress for longer than a threshold (a
metric and ``GET /api/v1/stuck``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from sys import intern
from typing import Protocol

from msgspec import UNSET

from events.catalogue import (
    Event,
    ReleaseReason,
    StopRequested,
    StopRequestedEvent,
    TaskReleased,
    TaskReleasedEvent,
    decision_id,
)
from events.model import (
    FINISHED_TASK_STATUSES,
    Phase,
    RunTask,
    Shape,
    TaskStatus,
    attempt_of,
    holder_of,
)
from events.state import RunState

__all__ = [
    "RETRY_AFTER",
    "LivenessView",
    "Stuck",
    "Timekeeper",
    "busy_tasks",
    "last_progress",
    "stuck",
]

#: Seconds before a decision appended but not applied yet is appended again (same id).
RETRY_AFTER = 5.0
_FINISHED = FINISHED_TASK_STATUSES
_RUNNING = Phase.RUNNING
_RUN = ""  # the task id of a run's own deadline in the heap


class LivenessView(Protocol):
    """What the owner asks about executors (``agents.liveness.Liveness``)."""

    def lapsed(self, executor_id: str, lease_ms: int, since: float, now: float) -> bool:
        """True when ``executor_id`` was last heard from (a heartbeat, or ``since`` if later)
        more than its lease ago (the heartbeat's lease, else ``lease_ms``); monotonic seconds."""
        ...


class Timekeeper:
    """The time decisions of one partition (one per owner)."""

    def __init__(self, liveness: LivenessView | None = None) -> None:
        self.liveness = liveness
        # executor → the run ids where it holds a task, and the shortest claim lease (ms) it
        # took here since it started holding (a lease renewed longer keeps the shorter one: a
        # sweep may look earlier than needed, never later)
        self._held: dict[str, set[str]] = {}
        self._shortest: dict[str, int] = {}
        # run id → the executor holding tasks in it, or the executors when more than one (the
        # reverse of _held; the strings are _held's keys: nothing new per run)
        self._holders: dict[str, str | tuple[str, ...]] = {}
        # executor → when this owner started watching it (monotonic): a full lease from there
        self._since: dict[str, float] = {}
        # (deadline ms, run id, task id or "" for the run, attempt)
        self._heap: list[tuple[int, str, str, int]] = []
        self._queued: set[tuple[int, str, str, int]] = set()
        # decision id → when it was appended (monotonic): not appended again before RETRY_AFTER
        self._pending: dict[str, float] = {}

    # ----------------------------------------------------------------------- watching
    def watch_all(self, states: Mapping[str, RunState], now: float) -> None:
        """Watch every run of ``states`` (after loading a checkpoint)."""
        for run_id, state in states.items():
            self.watch(run_id, state, now)

    def watch(self, run_id: str, state: RunState | None, now: float) -> None:
        """``run_id``'s state changed to ``state`` (``None``: the run is final or gone): note its
        holders and deadlines. ``now``: monotonic seconds."""
        now_held: dict[str, int] = {}  # executor → its least claim lease among its tasks here
        if state is not None and state.run.phase is _RUNNING:
            self._watch_running(run_id, state, now_held)
        if now_held or run_id in self._holders:
            self._rehold(run_id, now_held, now)

    def _rehold(self, run_id: str, now_held: dict[str, int], now: float) -> None:
        """``run_id``'s holders are now those of ``now_held``: the others no longer watch it."""
        held, since = self._held, self._since
        for executor in _as_tuple(self._holders.pop(run_id, None)):
            if executor not in now_held:
                self._unhold(executor, run_id)
        shortest = self._shortest
        for executor, lease in now_held.items():
            runs = held.get(executor)
            if runs is None:
                held[executor] = {run_id}
                since.setdefault(executor, now)
                shortest[executor] = lease
            else:
                runs.add(run_id)
                if lease < shortest[executor]:
                    shortest[executor] = lease
        self._set_holders(run_id, tuple(now_held))

    def _set_holders(self, run_id: str, names: tuple[str, ...]) -> None:
        """The reverse map's entry: one name as itself, several as a tuple, none: no entry."""
        if names:
            self._holders[run_id] = names[0] if len(names) == 1 else names

    def _watch_running(self, run_id: str, state: RunState, now_held: dict[str, int]) -> None:
        run, config = state.run, state.config
        tasks = config.tasks
        for tid, task in run.tasks.items():
            if task.status in _FINISHED:
                continue
            holder = task.holder
            if holder is not UNSET:
                holder = intern(holder)  # one string per executor, however many runs name it
                lease = task.lease_ms if task.lease_ms is not UNSET else 0
                if lease < now_held.get(holder, lease + 1):
                    now_held[holder] = lease
            timeout = tasks[tid].timeout_ms
            if timeout is not UNSET:
                base = task.claim_time if task.claim_time is not UNSET else task.start_time
                if base is not None:
                    self._push(base + timeout, run_id, tid, attempt_of(task))
        if config.timeout_ms is not UNSET and not run.stop and run.start_time is not None:
            self._push(run.start_time + config.timeout_ms, run_id, _RUN, 0)

    def _push(self, deadline: int, run_id: str, task_id: str, attempt: int) -> None:
        entry = (deadline, run_id, task_id, attempt)
        if entry not in self._queued:
            self._queued.add(entry)
            heapq.heappush(self._heap, entry)

    @property
    def watched_executors(self) -> int:
        return len(self._held)

    @property
    def deadlines(self) -> int:
        return len(self._heap)

    # ----------------------------------------------------------------------- deciding
    def due(self, active: Mapping[str, RunState], now_ms: int, now: float) -> list[Event]:
        """The decisions due at ``now_ms`` (the wall clock, ms since the epoch) / ``now``
        (monotonic seconds), as events to append to ``runs.events``; each at most once every
        :data:`RETRY_AFTER` seconds until it is applied (then the state no longer asks for it)."""
        out: list[Event] = []
        self._lapsed(active, now_ms, now, out)
        self._deadlines(active, now_ms, out)
        return self._fresh(out, now)

    def _lapsed(self, active: Mapping[str, RunState], now_ms: int, now: float, out: list[Event]) -> None:  # fmt: skip
        held, since, live = self._held, self._since, self.liveness
        if live is None:
            return
        for executor in list(held):
            runs = held[executor]
            # Not lapsed for its shortest lease here: for none of its tasks (a lease only makes
            # the cut later). The states are not looked at then: a cold run stays cold.
            if not live.lapsed(executor, self._shortest[executor], since[executor], now):
                continue
            for run_id in list(runs):
                state = active.get(run_id)
                mine = _held_by(state, executor)
                if state is None or not mine:  # no longer held by it (not watched yet): let go
                    self._let_go(executor, run_id)
                    continue
                for tid, task in mine:
                    lease = task.lease_ms if task.lease_ms is not UNSET else 0
                    if live.lapsed(executor, lease, since[executor], now):
                        out.append(_release(state, tid, task, ReleaseReason.EXECUTOR_LOST, now_ms))  # fmt: skip

    def _let_go(self, executor: str, run_id: str) -> None:
        """``executor`` holds nothing in ``run_id`` any more (both maps)."""
        holders = _as_tuple(self._holders.pop(run_id, None))
        self._set_holders(run_id, tuple(h for h in holders if h != executor))
        self._unhold(executor, run_id)

    def _unhold(self, executor: str, run_id: str) -> None:
        """``run_id`` leaves ``executor``'s runs; once it holds nothing here at all, it is no
        longer watched (a new claim starts a new watch, with a whole lease)."""
        runs = self._held.get(executor)
        if runs is not None:
            runs.discard(run_id)
            if not runs:
                del self._held[executor]
                self._since.pop(executor, None)
                self._shortest.pop(executor, None)

    def _deadlines(self, active: Mapping[str, RunState], now_ms: int, out: list[Event]) -> None:
        heap, queued = self._heap, self._queued
        while heap and heap[0][0] <= now_ms:
            entry = heapq.heappop(heap)
            queued.discard(entry)
            _, run_id, tid, attempt = entry
            state = active.get(run_id)
            if state is None or state.run.phase is not _RUNNING:
                continue
            if tid == _RUN:
                if not state.run.stop:
                    out.append(_stop_for_timeout(state, now_ms))
                continue
            task = state.run.tasks.get(tid)
            if task is None or task.status in _FINISHED or attempt_of(task) != attempt:
                continue
            if task.status is TaskStatus.NOTSTARTED and task.holder is UNSET:
                continue  # released meanwhile (back to ready): its next claim sets a new deadline
            out.append(_release(state, tid, task, ReleaseReason.TIMEOUT, now_ms))

    def _fresh(self, events: list[Event], now: float) -> list[Event]:
        pending = self._pending
        for eid, when in list(pending.items()):
            if now - when > 12 * RETRY_AFTER:
                del pending[eid]
        out = []
        for ev in events:
            last = pending.get(ev.id)
            if last is not None and now - last < RETRY_AFTER:
                continue
            pending[ev.id] = now
            out.append(ev)
        return out

    def applied(self, event_ids: Iterable[str]) -> None:
        """Decisions now judged by the reducer: never appended again by this owner."""
        pending = self._pending
        for eid in event_ids:
            pending.pop(eid, None)


def _as_tuple(holders: str | tuple[str, ...] | None) -> tuple[str, ...]:
    if holders is None:
        return ()
    return (holders,) if isinstance(holders, str) else holders


def _held_by(state: RunState | None, executor: str) -> list[tuple[str, RunTask]]:
    if state is None or state.run.phase is not _RUNNING:
        return []
    return [
        (tid, t)
        for tid, t in state.run.tasks.items()
        if t.holder == executor and t.status not in _FINISHED
    ]


def _release(state: RunState, tid: str, task: RunTask, reason: ReleaseReason, at: int) -> Event:
    run_id, attempt = state.run.id, attempt_of(task)
    data = TaskReleased(task_id=tid, executor_id=holder_of(task), attempt=attempt, reason=reason)
    eid = decision_id(run_id, "release", tid, attempt)
    return TaskReleasedEvent(version=1, id=eid, run_id=run_id, at=at, data=data)


def _stop_for_timeout(state: RunState, at: int) -> Event:
    run_id = state.run.id
    data = StopRequested(reason=str(ReleaseReason.TIMEOUT))
    return StopRequestedEvent(version=1, id=decision_id(run_id, "timeout"), run_id=run_id, at=at, data=data)  # fmt: skip


# ----------------------------------------------------------------------------- stuck
class Stuck(Shape):
    """A run with no progress since ``since`` (ms since the epoch): its phase, and the tasks that
    have been running (or claimed) since before the threshold."""

    run_id: str
    group: str
    phase: Phase
    since: int
    tasks: tuple[str, ...] = ()


def last_progress(state: RunState) -> int:
    """When the run last moved (ms since the epoch): its enqueue or start time, or a task's
    claim, start or end, whichever is latest."""
    run = state.run
    last = max(run.enqueue_time or 0, run.start_time or 0)
    for t in run.tasks.values():
        for at in (t.start_time, t.end_time):
            if at is not None and at > last:
                last = at
        if t.claim_time is not UNSET and t.claim_time > last:
            last = t.claim_time
    return last


def stuck(states: Iterable[RunState], now_ms: int, older_than_ms: int) -> list[Stuck]:
    """The runs of ``states`` (active ones) that have not moved for ``older_than_ms``, oldest
    first, with their tasks running or claimed since before then."""
    cut = now_ms - older_than_ms
    out = []
    for state in states:
        since = last_progress(state)
        if since > cut:
            continue
        run = state.run
        tasks = tuple(tid for tid, t in run.tasks.items() if _busy(t))
        out.append(Stuck(run_id=run.id, group=run.group, phase=run.phase, since=since, tasks=tasks))
    out.sort(key=lambda s: (s.since, s.run_id))
    return out


def _busy(task: RunTask) -> bool:
    """A task a stuck run lists: running, or held and not finished."""
    return task.status is TaskStatus.RUNNING or (
        task.holder is not UNSET and task.status not in _FINISHED
    )


def busy_tasks(state: RunState) -> int:
    """How many of the run's tasks :func:`stuck` would list for it: what ``partition.active``
    keeps beside a cold run, so that the stuck gauges count without decoding it."""
    return sum(1 for t in state.run.tasks.values() if _busy(t))
