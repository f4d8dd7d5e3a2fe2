"""The reducer's rules (Agola's run phases), each refusal, idempotency and derived events."""

from __future__ import annotations

import pytest

from events import (
    CancelRequested,
    EventType,
    Phase,
    PhaseChanged,
    Result,
    RunState,
    SetupError,
    SetupErrorsReported,
    StartRequested,
    StopRequested,
    TaskAnnotationsSet,
    TaskApproved,
    TaskStatus,
    TaskStatusChanged,
    make_event,
)
from events.state import ID_GENERATION
from tests.unit.test_events_support import (
    GROUP,
    RUN,
    applied,
    created,
    ev,
    refused,
    task,
)


def status(tid: str, s: TaskStatus) -> TaskStatusChanged:
    return TaskStatusChanged(task_id=tid, status=s)


def queued(*tasks, **kw) -> RunState:  # type: ignore[no-untyped-def]
    return applied(None, ev(created(*tasks, **kw))).state


def running(*tasks, **kw) -> RunState:  # type: ignore[no-untyped-def]
    return applied(queued(*tasks, **kw), ev(StartRequested())).state


def phases(out) -> list[tuple[Phase, Result, int]]:  # type: ignore[no-untyped-def]
    """The phase changes of ``out`` (its task.ready events left out: test_reducer_advance.py)."""
    return [
        (d.data.phase, d.data.result, d.data.seq)
        for d in out.derived
        if d.type is EventType.PHASE_CHANGED
    ]


def readies(out) -> list[str]:  # type: ignore[no-untyped-def]
    """The tasks ``out`` made ready, in order."""
    return [d.data.task_id for d in out.derived if d.type is EventType.TASK_READY]


# -- creation ------------------------------------------------------------------------------------


def test_created_is_queued_with_tasks_levels_and_first_phase_event() -> None:
    e = ev(created(task("a"), task("b", "a"), task("s", skip=True)), at=5000)
    out = applied(None, e)
    run = out.state.run
    assert (run.phase, run.result, run.enqueue_time, run.start_time) == (
        Phase.QUEUED,
        Result.UNKNOWN,
        5000,
        None,
    )
    assert {t: r.status for t, r in run.tasks.items()} == {
        "a": TaskStatus.NOTSTARTED,
        "b": TaskStatus.NOTSTARTED,
        "s": TaskStatus.SKIPPED,
    }
    assert {t: c.level for t, c in out.state.config.tasks.items()} == {"a": 0, "b": 1, "s": 0}
    assert out.state.open_tasks == 2
    [d] = out.derived
    assert d.type is EventType.PHASE_CHANGED
    assert d.id == f"{RUN}.phase.1"
    assert (d.run_id, d.at) == (RUN, 5000)
    assert d.data == PhaseChanged(
        group=GROUP, phase=Phase.QUEUED, result=Result.UNKNOWN, seq=1, name="build"
    )  # the first change names the run for the index


def test_created_with_setup_errors_is_setuperror_without_tasks() -> None:
    err = SetupError(message="bad yaml")
    out = applied(None, ev(created(task("a"), setup_errors=(err,)), at=9))
    run = out.state.run
    assert run.phase is Phase.SETUPERROR
    assert run.tasks == {}
    assert run.end_time == 9
    assert out.state.config.setup_errors == (err,)
    assert phases(out) == [(Phase.SETUPERROR, Result.UNKNOWN, 1)]


def test_inconsistent_tasks_become_setup_errors_not_rejections() -> None:
    out = applied(None, ev(created(task("a", "ghost"))))
    assert out.state.run.phase is Phase.SETUPERROR
    assert "missing task 'ghost'" in out.state.config.setup_errors[0].message


def test_setup_errors_reported_creates_a_setuperror_run() -> None:
    data = SetupErrorsReported(
        group=GROUP,
        errors=(SetupError(message="parse error"),),
        static_environment={"CI": "true"},
        annotations={"k": "v"},
        counter=3,
    )
    run = applied(None, ev(data)).state.run
    assert (run.name, run.phase, run.counter, run.annotations) == (
        "Setup Error",
        Phase.SETUPERROR,
        3,
        {"k": "v"},
    )


def test_setup_errors_reported_without_errors_is_refused() -> None:
    assert (
        "no setup errors" in refused(None, ev(SetupErrorsReported(group=GROUP, errors=()))).reason
    )


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"group": ""}, "group is empty"),
        ({"group": "project/p1"}, "not an absolute path"),
        ({"group": "/nope/p1"}, "is not one of"),
    ],
)
def test_creation_that_cannot_form_a_run_is_refused(kw: dict[str, str], message: str) -> None:
    assert message in refused(None, ev(created(task("a"), **kw))).reason


def test_creation_without_tasks_nor_errors_is_refused() -> None:
    assert "neither tasks nor setup errors" in refused(None, ev(created())).reason


def test_kept_tasks_must_be_tasks_of_the_run() -> None:
    assert "not tasks of the run" in refused(None, ev(created(task("a"), kept_tasks=("z",)))).reason


def test_kept_tasks_start_successful() -> None:
    state = queued(task("a"), task("b", "a"), kept_tasks=("a",))
    assert state.run.tasks["a"].status is TaskStatus.SUCCESS
    assert state.open_tasks == 1


def test_second_creation_of_a_run_is_refused_and_its_retry_is_a_duplicate() -> None:
    first = ev(created(task("a")))
    state = applied(None, first).state
    assert "already exists" in refused(state, ev(created(task("a")))).reason
    again = applied(state, first)
    assert again.duplicate
    assert again.state is state
    assert again.derived == ()


def test_events_for_an_unknown_run_are_refused() -> None:
    for data in (StartRequested(), status("a", TaskStatus.RUNNING), StopRequested()):
        assert "unknown run" in refused(None, ev(data)).reason


def test_event_for_another_run_is_refused() -> None:
    state = queued(task("a"))
    assert (
        "applied to run" in refused(state, ev(StartRequested(), run_id="0000000000000008")).reason
    )


def test_phase_changed_is_never_accepted_as_input() -> None:
    state = queued(task("a"))
    data = PhaseChanged(group=GROUP, phase=Phase.RUNNING, result=Result.UNKNOWN, seq=2)
    assert "cannot be applied" in refused(state, ev(data)).reason


# -- start, cancel, stop -------------------------------------------------------------------------


def test_start_only_from_queued_sets_start_time() -> None:
    state = queued(task("a"))
    out = applied(state, ev(StartRequested(), at=7777))
    assert out.state.run.phase is Phase.RUNNING
    assert out.state.run.start_time == 7777
    assert phases(out) == [(Phase.RUNNING, Result.UNKNOWN, 2)]
    assert "only a queued run starts" in refused(out.state, ev(StartRequested())).reason


def test_start_of_a_run_whose_tasks_are_all_done_finishes_it() -> None:
    state = queued(task("a", skip=True))
    out = applied(state, ev(StartRequested(), at=50))
    run = out.state.run
    assert (run.phase, run.result, run.start_time, run.end_time) == (
        Phase.FINISHED,
        Result.SUCCESS,
        50,
        50,
    )
    assert phases(out) == [(Phase.RUNNING, Result.UNKNOWN, 2), (Phase.FINISHED, Result.SUCCESS, 3)]


def test_cancel_only_from_queued_cancels_tasks_not_started() -> None:
    state = queued(task("a"), task("s", skip=True))
    out = applied(state, ev(CancelRequested(), at=60))
    run = out.state.run
    assert (run.phase, run.result, run.end_time) == (Phase.CANCELLED, Result.UNKNOWN, 60)
    assert run.tasks["a"].status is TaskStatus.CANCELLED
    assert run.tasks["s"].status is TaskStatus.SKIPPED
    assert "final phase never changes" in refused(out.state, ev(CancelRequested())).reason
    started = running(task("a"))
    assert "only a queued run is cancelled" in refused(started, ev(CancelRequested())).reason


def test_stop_only_while_running() -> None:
    state = queued(task("a"))
    assert "only a running run stops" in refused(state, ev(StopRequested())).reason


def test_stop_sets_flag_result_and_waits_for_running_tasks() -> None:
    state = running(task("a"), task("b", "a"), task("c", needs_approval=True))
    state = applied(state, ev(status("a", TaskStatus.RUNNING))).state
    assert state.run.tasks["c"].waiting_approval
    out = applied(state, ev(StopRequested(), at=70))
    run = out.state.run
    assert run.stop
    assert (run.phase, run.result) == (Phase.RUNNING, Result.STOPPED)
    assert (run.tasks["b"].status, run.tasks["b"].end_time) == (TaskStatus.SKIPPED, 70)
    assert run.tasks["c"].status is TaskStatus.SKIPPED
    assert not run.tasks["c"].waiting_approval
    assert phases(out) == [(Phase.RUNNING, Result.STOPPED, 3)]
    assert readies(out) == []
    # A repeated stop is accepted and changes nothing (a retried stop must not fail).
    again = applied(out.state, ev(StopRequested(), at=75))
    assert again.derived == ()
    assert again.state.run == out.state.run
    assert (again.state.seq, again.state.open_tasks) == (out.state.seq, out.state.open_tasks)
    done = applied(out.state, ev(status("a", TaskStatus.STOPPED), at=80))
    assert (done.state.run.phase, done.state.run.result) == (Phase.FINISHED, Result.STOPPED)
    assert done.state.run.end_time == 80
    assert phases(done) == [(Phase.FINISHED, Result.STOPPED, 4)]


# -- tasks ---------------------------------------------------------------------------------------


def test_all_tasks_succeeding_finishes_with_success_and_times() -> None:
    state = running(task("a"), task("b", "a"))
    state = applied(state, ev(status("a", TaskStatus.RUNNING), at=100)).state
    assert state.run.tasks["a"].start_time == 100
    out = applied(state, ev(status("a", TaskStatus.SUCCESS), at=110))
    assert out.state.run.tasks["a"].end_time == 110
    assert phases(out) == []
    assert readies(out) == ["b"]
    state = applied(out.state, ev(status("b", TaskStatus.RUNNING))).state
    out = applied(state, ev(status("b", TaskStatus.SUCCESS), at=130))
    run = out.state.run
    assert (run.phase, run.result, run.end_time) == (Phase.FINISHED, Result.SUCCESS, 130)
    assert phases(out) == [(Phase.FINISHED, Result.SUCCESS, 3)]


def test_failed_task_fails_the_run_before_it_finishes() -> None:
    state = running(task("a"), task("b"))
    state = applied(state, ev(status("a", TaskStatus.RUNNING))).state
    out = applied(state, ev(status("a", TaskStatus.FAILED)))
    assert (out.state.run.phase, out.state.run.result) == (Phase.RUNNING, Result.FAILED)
    assert phases(out) == [(Phase.RUNNING, Result.FAILED, 3)]
    out = applied(out.state, ev(status("b", TaskStatus.SKIPPED)))
    assert (out.state.run.phase, out.state.run.result) == (Phase.FINISHED, Result.FAILED)


def test_failure_of_a_task_with_ignore_failure_does_not_fail_the_run() -> None:
    state = running(task("a", ignore_failure=True))
    out = applied(state, ev(status("a", TaskStatus.FAILED)))
    assert (out.state.run.phase, out.state.run.result) == (Phase.FINISHED, Result.SUCCESS)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (TaskStatus.SUCCESS, TaskStatus.RUNNING),
        (TaskStatus.RUNNING, TaskStatus.RUNNING),
        (TaskStatus.RUNNING, TaskStatus.NOTSTARTED),
    ],
)
def test_illegal_task_transitions_are_refused(before: TaskStatus, after: TaskStatus) -> None:
    state = running(task("a"), task("b"))
    if before is TaskStatus.SUCCESS:
        state = applied(state, ev(status("a", TaskStatus.RUNNING))).state
    state = applied(state, ev(status("a", before))).state
    assert "cannot go from" in refused(state, ev(status("a", after))).reason


def test_task_events_need_a_running_run_and_a_known_task() -> None:
    assert "not running" in refused(queued(task("a")), ev(status("a", TaskStatus.RUNNING))).reason
    assert "no task 'z'" in refused(running(task("a")), ev(status("z", TaskStatus.RUNNING))).reason


def test_task_needing_approval_waits_until_approved() -> None:
    state = running(task("a", needs_approval=True), task("b"))
    assert "waiting for approval" in refused(state, ev(status("a", TaskStatus.RUNNING))).reason
    assert "not waiting for approval" in refused(state, ev(TaskApproved(task_id="b"))).reason
    assert "no task" in refused(state, ev(TaskApproved(task_id="z"))).reason
    state = applied(state, ev(TaskApproved(task_id="a"))).state
    t = state.run.tasks["a"]
    assert t.approved
    assert not t.waiting_approval
    assert "already approved" in refused(state, ev(TaskApproved(task_id="a"))).reason
    assert applied(state, ev(status("a", TaskStatus.RUNNING))).state.run.tasks["a"].start_time


def test_approval_is_refused_before_the_run_starts() -> None:
    state = queued(task("a", needs_approval=True))
    assert "not waiting for approval" in refused(state, ev(TaskApproved(task_id="a"))).reason


def test_task_annotations_are_replaced() -> None:
    state = queued(task("a"))
    first = TaskAnnotationsSet(task_id="a", annotations={"x": "1"})
    state = applied(state, ev(first)).state
    state = applied(state, ev(TaskAnnotationsSet(task_id="a", annotations={"y": "2"}))).state
    assert state.run.tasks["a"].annotations == {"y": "2"}
    assert "no task" in refused(state, ev(TaskAnnotationsSet(task_id="q", annotations={}))).reason


def test_final_phases_never_change() -> None:
    state = running(task("a"))
    state = applied(state, ev(status("a", TaskStatus.SUCCESS))).state
    assert state.run.phase is Phase.FINISHED
    for data in (
        StartRequested(),
        CancelRequested(),
        StopRequested(),
        status("a", TaskStatus.FAILED),
        TaskAnnotationsSet(task_id="a", annotations={}),
    ):
        assert "final phase" in refused(state, ev(data)).reason


# -- idempotency and the id window ---------------------------------------------------------------


def test_duplicate_event_changes_nothing() -> None:
    state = running(task("a"))
    e = ev(status("a", TaskStatus.RUNNING))
    after = applied(state, e).state
    dup = applied(after, e)
    assert dup.duplicate
    assert dup.state is after
    assert dup.derived == ()


def test_refused_event_is_not_remembered() -> None:
    state = queued(task("a"))
    e = ev(StopRequested())
    refused(state, e)
    assert not state.has_seen(e.id)


def test_id_window_is_bounded_and_keeps_the_latest_ids() -> None:
    state = running(*(task(f"t{i}") for i in range(3 * ID_GENERATION)))
    ids = []
    for i in range(3 * ID_GENERATION):
        e = ev(status(f"t{i}", TaskStatus.RUNNING))
        ids.append(e.id)
        state = applied(state, e).state
    assert ID_GENERATION <= len(state.recent_ids) + len(state.older_ids) <= 2 * ID_GENERATION
    assert all(state.has_seen(i) for i in ids[-ID_GENERATION:])
    assert not state.has_seen(ids[0])


def test_derived_event_ids_and_times_are_deterministic() -> None:
    e = make_event(created(task("a")), id="x", run_id=RUN, at=42)
    one, two = applied(None, e), applied(None, e)
    assert one.state == two.state
    assert one.derived == two.derived
