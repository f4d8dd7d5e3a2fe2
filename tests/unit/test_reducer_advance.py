"""Hypothesis: the reducer's task advancement against a plain reference written from Agola's rules.

Random task graphs (random parents, conditions, ``needs_approval``, ``ignore_failure``, ``skip``),
then random approvals, random outcomes of ready tasks, premature reports and sometimes a stop,
until nothing is ready, running or waiting. The reference below is written independently of
``events.advance``: after every event it repeats Agola's ``advanceRunTasks`` loop over the tasks
not started until nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from events import (
    Applied,
    DependCondition,
    Event,
    EventType,
    Payload,
    Phase,
    Result,
    RunConfigTask,
    RunCreated,
    RunState,
    StartRequested,
    StopRequested,
    TaskApproved,
    TaskDepend,
    TaskStatus,
    TaskStatusChanged,
    apply,
    encode,
    format_run_id,
    make_event,
)

S = TaskStatus
RUN = format_run_id(13)
FINISHED = {S.SKIPPED, S.CANCELLED, S.STOPPED, S.SUCCESS, S.FAILED}
MATCHES = {
    DependCondition.ON_SUCCESS: S.SUCCESS,
    DependCondition.ON_FAILURE: S.FAILED,
    DependCondition.ON_SKIPPED: S.SKIPPED,
}


# -- the reference ------------------------------------------------------------------------------


@dataclass
class Reference:
    tasks: list[RunConfigTask]
    status: dict[str, TaskStatus] = field(default_factory=dict)
    waiting: set[str] = field(default_factory=set)
    approved: set[str] = field(default_factory=set)
    published: set[str] = field(default_factory=set)
    ready: list[tuple[str, int, int]] = field(default_factory=list)  # (task, level, seq)
    stop: bool = False
    result: Result = Result.UNKNOWN

    def __post_init__(self) -> None:
        self.by_id = {t.id: t for t in self.tasks}
        self.status = {t.id: S.SKIPPED if t.skip else S.NOTSTARTED for t in self.tasks}

    def level(self, tid: str) -> int:
        deps = self.by_id[tid].depends
        return 1 + max(self.level(d.task_id) for d in deps) if deps else 0

    def parent_ok(self, d: TaskDepend) -> bool:
        conditions = d.conditions or (DependCondition.ON_SUCCESS,)
        return any(MATCHES[c] is self.status[d.task_id] for c in conditions)

    def advance(self) -> None:
        """Agola's loop: judge every task not started whose parents all ended, until stable."""
        new: list[str] = []
        changed = True
        while changed:
            changed = False
            for t in self.tasks:
                tid = t.id
                if self.status[tid] is not S.NOTSTARTED or tid in self.waiting or tid in self.published:  # fmt: skip
                    continue
                if not all(self.status[d.task_id] in FINISHED for d in t.depends):
                    continue
                if not all(self.parent_ok(d) for d in t.depends):
                    self.status[tid] = S.SKIPPED
                elif t.needs_approval and tid not in self.approved:
                    self.waiting.add(tid)
                else:
                    self.published.add(tid)
                    new.append(tid)
                changed = True
        self.publish(new)

    def publish(self, new: list[str]) -> None:
        order = [t.id for t in self.tasks]
        for tid in sorted(new, key=order.index):
            self.ready.append((tid, self.level(tid), len(self.ready) + 1))

    def settle(self, failed_now: bool) -> None:
        if self.result is Result.UNKNOWN:
            if failed_now:
                self.result = Result.FAILED
            elif self.stop:
                self.result = Result.STOPPED
            elif all(s in FINISHED for s in self.status.values()):
                self.result = Result.SUCCESS

    def report(self, tid: str, s: TaskStatus) -> None:
        self.status[tid] = s
        self.advance()
        self.settle(s is S.FAILED and not self.by_id[tid].ignore_failure)

    def approve(self, tid: str) -> None:
        self.waiting.discard(tid)
        self.approved.add(tid)
        self.published.add(tid)
        self.publish([tid])

    def do_stop(self) -> None:
        self.stop = True
        self.waiting.clear()
        for tid, s in self.status.items():
            if s is S.NOTSTARTED:
                self.status[tid] = S.SKIPPED
        self.settle(False)

    def startable(self) -> list[str]:
        """Published tasks not started yet, and running tasks: what an executor may report."""
        return [
            t
            for t in self.published
            if self.status[t] is S.NOTSTARTED or self.status[t] is S.RUNNING
        ]


# -- random graphs and runs ---------------------------------------------------------------------


@st.composite
def graphs(draw: st.DrawFn) -> list[RunConfigTask]:
    n = draw(st.integers(1, 7))
    tasks: list[RunConfigTask] = []
    ancestors: dict[str, set[str]] = {}
    for i in range(n):
        tid = f"t{i}"
        chosen = draw(st.lists(st.sampled_from([f"t{j}" for j in range(i)]), unique=True, max_size=3)) if i else []  # fmt: skip
        # drop a dependency another chosen parent already has (Agola refuses that graph)
        parents = [p for p in chosen if not any(p in ancestors[q] for q in chosen if q != p)]
        depends = tuple(
            TaskDepend(
                task_id=p,
                conditions=tuple(
                    draw(st.lists(st.sampled_from(list(DependCondition)), unique=True, max_size=3))
                ),
            )
            for p in parents
        )
        ancestors[tid] = set(parents).union(*(ancestors[p] for p in parents))
        tasks.append(
            RunConfigTask(
                id=tid,
                name=f"task {i}",
                depends=depends,
                needs_approval=draw(st.booleans()),
                ignore_failure=draw(st.booleans()),
                skip=draw(st.integers(0, 5)) == 0,
            )
        )
    return tasks


@dataclass
class Played:
    ref: Reference
    events: list[Event]
    outcomes: list[Applied | None]  # None: rejected
    stop_at: int | None  # index in events of the stop, if any


def play(data: st.DataObject, tasks: list[RunConfigTask]) -> Played:
    ref = Reference(tasks)
    events: list[Event] = []
    outcomes: list[Applied | None] = []
    state: RunState | None = None
    stop_at: int | None = None

    def send(body: Payload) -> Applied | None:
        nonlocal state
        e = make_event(body, id=f"e{len(events)}", run_id=RUN, at=1000 + len(events))
        events.append(e)
        out = apply(state, e)
        if isinstance(out, Applied):
            state = out.state
            outcomes.append(out)
            return out
        outcomes.append(None)
        return None

    assert send(RunCreated(name="r", group="/project/p", tasks=tuple(tasks))) is not None
    assert send(StartRequested()) is not None
    ref.advance()
    ref.settle(False)
    for _ in range(60):
        choices = [("report", t) for t in sorted(ref.startable())]
        choices += [("approve", t) for t in sorted(ref.waiting)]
        if not choices:
            break
        premature = [t for t, s in ref.status.items() if s is S.NOTSTARTED and t not in ref.published]  # fmt: skip
        choices += [("premature", t) for t in sorted(premature)]
        if not ref.stop:
            choices.append(("stop", ""))
        kind, tid = data.draw(st.sampled_from(choices))
        if kind == "report":
            s = data.draw(
                st.sampled_from([S.RUNNING, S.SUCCESS, S.FAILED, S.SKIPPED, S.CANCELLED])
                if ref.status[tid] is S.NOTSTARTED
                else st.sampled_from([S.SUCCESS, S.FAILED, S.STOPPED])
            )
            needs = ref.by_id[tid].needs_approval and tid not in ref.approved
            assert not needs
            assert send(TaskStatusChanged(task_id=tid, status=s)) is not None
            ref.report(tid, s)
        elif kind == "approve":
            assert send(TaskApproved(task_id=tid)) is not None
            ref.approve(tid)
        elif kind == "premature":  # an executor reporting a task that is not ready: refused
            assert send(TaskStatusChanged(task_id=tid, status=S.RUNNING)) is None
        else:
            stop_at = len(events)
            assert send(StopRequested()) is not None
            ref.do_stop()
    return Played(ref, events, outcomes, stop_at)


def ready_of(played: Played) -> list[tuple[int, Event]]:
    return [
        (i, d)
        for i, out in enumerate(played.outcomes)
        if out is not None
        for d in out.derived
        if d.type is EventType.TASK_READY
    ]


def final_state(played: Played) -> RunState:
    last = [o for o in played.outcomes if o is not None][-1]
    return last.state


SETTINGS = settings(max_examples=300, deadline=None)


@SETTINGS
@given(graphs(), st.data())
def test_once_every_ready_task_ended_the_run_is_finished(
    tasks: list[RunConfigTask], data: st.DataObject
) -> None:
    played = play(data, tasks)
    assert not played.ref.startable()  # the loop ran out of work
    assert not played.ref.waiting
    run = final_state(played).run
    assert run.phase is Phase.FINISHED
    assert run.result is played.ref.result
    assert all(t.status in FINISHED for t in run.tasks.values())


@SETTINGS
@given(graphs(), st.data())
def test_statuses_and_the_skipped_set_equal_the_reference(
    tasks: list[RunConfigTask], data: st.DataObject
) -> None:
    played = play(data, tasks)
    state = final_state(played)
    got = {tid: t.status for tid, t in state.run.tasks.items()}
    assert got == played.ref.status
    assert {t for t, s in got.items() if s is S.SKIPPED} == {
        t for t, s in played.ref.status.items() if s is S.SKIPPED
    }


@SETTINGS
@given(graphs(), st.data())
def test_each_task_is_ready_at_most_once_never_after_a_stop_and_as_the_reference_says(
    tasks: list[RunConfigTask], data: st.DataObject
) -> None:
    played = play(data, tasks)
    ready = ready_of(played)
    ids = [d.data.task_id for _, d in ready]  # type: ignore[union-attr]
    assert len(ids) == len(set(ids))
    if played.stop_at is not None:
        assert all(i < played.stop_at for i, _ in ready)
    got = [(d.data.task_id, d.data.level, d.data.seq) for _, d in ready]  # type: ignore[union-attr]
    assert got == played.ref.ready
    for i, d in ready:
        assert d.id == f"{RUN}.ready.{d.data.seq}"  # type: ignore[union-attr]
        assert d.at == played.events[i].at


@SETTINGS
@given(graphs(), st.data())
def test_replaying_the_same_events_gives_identical_derived_bytes(
    tasks: list[RunConfigTask], data: st.DataObject
) -> None:
    played = play(data, tasks)
    first = [encode(d) for out in played.outcomes if out is not None for d in out.derived]
    state: RunState | None = None
    again: list[bytes] = []
    for e in played.events:
        out = apply(state, e)
        if isinstance(out, Applied):
            state = out.state
            again.extend(encode(d) for d in out.derived)
    assert again == first
