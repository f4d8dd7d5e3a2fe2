"""Issue 13's rules, one test each: task advancement, approvals in order, stop, the
redundant-dependency check on every creation path."""

from __future__ import annotations

import pytest

from events import (
    DependCondition,
    EventType,
    Phase,
    Result,
    RunConfigTask,
    RunState,
    StartRequested,
    StopRequested,
    TaskApproved,
    TaskDepend,
    TaskStatus,
    TaskStatusChanged,
    check_tasks,
)
from events.checks import plan_tasks
from tests.unit.test_events_support import RUN, applied, created, ev, refused, task

S = TaskStatus
C = DependCondition


def status(tid: str, s: TaskStatus, at: int | None = None) -> TaskStatusChanged:
    return TaskStatusChanged(task_id=tid, status=s)


def on(tid: str, *parents: tuple[str, tuple[DependCondition, ...]], **kw: object) -> RunConfigTask:
    kw.setdefault("name", f"name-{tid}")
    depends = tuple(TaskDepend(task_id=p, conditions=c) for p, c in parents)
    return RunConfigTask(id=tid, depends=depends, **kw)  # type: ignore[arg-type]


def start(*tasks: RunConfigTask) -> tuple[RunState, list[str]]:
    state = applied(None, ev(created(*tasks))).state
    out = applied(state, ev(StartRequested()))
    return out.state, readies(out)


def readies(out) -> list[str]:  # type: ignore[no-untyped-def]
    return [d.data.task_id for d in out.derived if d.type is EventType.TASK_READY]


def end(state: RunState, tid: str, s: TaskStatus) -> tuple[RunState, list[str]]:
    state = applied(state, ev(status(tid, S.RUNNING))).state
    out = applied(state, ev(status(tid, s)))
    return out.state, readies(out)


def statuses(state: RunState) -> dict[str, TaskStatus]:
    return {tid: t.status for tid, t in state.run.tasks.items()}


def test_roots_are_ready_at_start_children_when_their_parents_end() -> None:
    state, ready = start(task("a"), task("b"), task("c", "a", "b"))
    assert ready == ["a", "b"]
    state, ready = end(state, "a", S.SUCCESS)
    assert ready == []  # b has not ended
    assert "not ready" in refused(state, ev(status("c", S.RUNNING))).reason
    state, ready = end(state, "b", S.SUCCESS)
    assert ready == ["c"]


def test_conditions_skip_and_the_skip_cascades_then_the_run_finishes_by_itself() -> None:
    state, ready = start(
        task("a"),
        on("cleanup", ("a", (C.ON_FAILURE,))),
        task("deploy", "a"),
        task("notify", "deploy"),
        on("report", ("deploy", (C.ON_SKIPPED,))),
    )
    assert ready == ["a"]
    out_state, ready = end(state, "a", S.FAILED)
    assert ready == ["cleanup", "report"]
    assert statuses(out_state)["deploy"] is S.SKIPPED
    assert statuses(out_state)["notify"] is S.SKIPPED  # cascaded
    assert out_state.run.tasks["notify"].end_time is not None
    state, _ = end(out_state, "cleanup", S.SUCCESS)
    assert state.run.phase is Phase.RUNNING
    state, _ = end(state, "report", S.SUCCESS)
    assert (state.run.phase, state.run.result) == (Phase.FINISHED, Result.FAILED)


def test_ignore_failure_counts_as_failed_for_the_children_not_for_the_run() -> None:
    # Agola: the parent's status is what the conditions see; ignore_failure only spares the run.
    state, _ = start(
        task("a", ignore_failure=True),
        task("next", "a"),
        on("fix", ("a", (C.ON_FAILURE,))),
    )
    state, ready = end(state, "a", S.FAILED)
    assert ready == ["fix"]
    assert statuses(state)["next"] is S.SKIPPED
    assert state.run.result is Result.UNKNOWN
    state, _ = end(state, "fix", S.SUCCESS)
    assert (state.run.phase, state.run.result) == (Phase.FINISHED, Result.SUCCESS)


def test_stopped_and_cancelled_parents_satisfy_no_condition() -> None:
    every = (C.ON_SUCCESS, C.ON_FAILURE, C.ON_SKIPPED)
    for s in (S.STOPPED, S.CANCELLED):
        state, _ = start(task("a"), on("b", ("a", every)))
        state, ready = end(state, "a", s)
        assert (ready, statuses(state)["b"]) == ([], S.SKIPPED)


def test_waiting_approval_only_once_the_task_would_be_ready_and_approval_makes_it_ready() -> None:
    state, ready = start(task("a"), task("gate", "a", needs_approval=True), task("after", "gate"))
    assert ready == ["a"]
    assert not state.run.tasks["gate"].waiting_approval  # its parent has not ended
    assert "not waiting" in refused(state, ev(TaskApproved(task_id="gate"))).reason
    state, ready = end(state, "a", S.SUCCESS)
    assert ready == []
    assert state.run.tasks["gate"].waiting_approval
    assert "waiting for approval" in refused(state, ev(status("gate", S.RUNNING))).reason
    out = applied(state, ev(TaskApproved(task_id="gate"), at=5))
    assert readies(out) == ["gate"]
    [d] = out.derived
    assert (d.id, d.at, d.data.seq, d.data.level) == (f"{RUN}.ready.2", 5, 2, 1)  # type: ignore[union-attr]


def test_a_skipped_task_needing_approval_never_waits() -> None:
    state, _ = start(task("a"), task("gate", "a", needs_approval=True))
    state, _ = end(state, "a", S.FAILED)
    assert statuses(state)["gate"] is S.SKIPPED
    assert not state.run.tasks["gate"].waiting_approval
    assert state.run.phase is Phase.FINISHED


def test_stop_skips_tasks_not_started_and_no_task_becomes_ready_after_it() -> None:
    state, _ = start(task("a"), task("b"), task("c", "a"), task("w", needs_approval=True))
    state = applied(state, ev(status("a", S.RUNNING))).state
    out = applied(state, ev(StopRequested(), at=90))
    state = out.state
    assert readies(out) == []
    assert {t: s for t, s in statuses(state).items() if t != "a"} == dict.fromkeys("bcw", S.SKIPPED)
    assert not any(t.waiting_approval for t in state.run.tasks.values())
    out = applied(state, ev(status("a", S.SUCCESS)))
    assert readies(out) == []
    assert (out.state.run.phase, out.state.run.result) == (Phase.FINISHED, Result.STOPPED)


def test_a_repeated_stop_is_accepted_and_changes_nothing() -> None:
    state, _ = start(task("a"))
    state = applied(state, ev(status("a", S.RUNNING))).state
    stopping = applied(state, ev(StopRequested())).state
    again = applied(stopping, ev(StopRequested()))
    assert not again.duplicate
    assert again.derived == ()
    assert again.state.run == stopping.run
    assert again.state.seq == stopping.seq
    assert again.state.ready_seq == stopping.ready_seq


def test_ready_events_number_per_run_and_follow_the_phase_change() -> None:
    state = applied(None, ev(created(task("a"), task("b")))).state
    out = applied(state, ev(StartRequested(), at=77))
    kinds = [(d.type, d.id) for d in out.derived]
    assert kinds == [
        (EventType.PHASE_CHANGED, f"{RUN}.phase.2"),
        (EventType.TASK_READY, f"{RUN}.ready.1"),
        (EventType.TASK_READY, f"{RUN}.ready.2"),
    ]
    assert all(d.at == 77 for d in out.derived)
    assert out.state.ready_seq == 2


# -- the redundant-dependency check (Agola's CheckRunConfigTasks) ------------------------------


def redundant_tasks() -> list[RunConfigTask]:
    # x depends on y and z; y depends on z already: "x and its parent y both depend on z".
    return [task("z"), task("y", "z"), task("x", "y", "z")]


def test_redundant_dependency_is_a_setup_error_naming_the_three_tasks() -> None:
    [err] = check_tasks(redundant_tasks())
    assert err.message == "task 'name-x' and its parent 'name-y' both depend on task 'name-z'"
    assert err.task_ids == ("x", "y", "z")
    levels, errors = plan_tasks(redundant_tasks())
    assert (levels, errors) == ({}, (err,))


def test_redundant_dependency_through_a_deeper_ancestor() -> None:
    tasks = [task("z"), task("m", "z"), task("y", "m"), task("x", "y", "z")]
    [err] = check_tasks(tasks)
    assert err.task_ids == ("x", "y", "z")


@pytest.mark.parametrize("order", ["parents first", "children first"])
def test_every_creation_path_runs_the_redundant_dependency_check(order: str) -> None:
    # Parents first goes through the one-pass build; children first through the general path.
    tasks = redundant_tasks() if order == "parents first" else redundant_tasks()[::-1]
    run = applied(None, ev(created(*tasks))).state
    assert run.run.phase is Phase.SETUPERROR
    assert [e.task_ids for e in run.config.setup_errors] == [("x", "y", "z")]


def test_a_diamond_is_not_redundant() -> None:
    tasks = [task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c")]
    assert check_tasks(tasks) == ()
    assert applied(None, ev(created(*tasks))).state.run.phase is Phase.QUEUED
