"""Issue 20's rules in the pure reducer: one holder per task (claims, reports naming an executor),
releases decided by the owner (lease lapsed: retried while retries remain, else failed; timeout:
failed), the run advancing as for any failure, and a release applied at most once."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec import UNSET

from events import (
    DependCondition,
    EventType,
    Phase,
    ReleaseReason,
    Result,
    RunState,
    StartRequested,
    StopRequested,
    TaskClaimed,
    TaskDepend,
    TaskReleased,
    TaskStatus,
    TaskStatusChanged,
    decision_id,
    decode,
    decode_state,
    encode,
    encode_state,
    make_event,
)
from events.model import RunConfigTask, attempt_of, holder_of
from events.reducer import Applied, Refused, apply
from partition.admission import refusal_code as code_of
from tests.unit.test_events_properties import same_without_derived
from tests.unit.test_events_support import RUN, applied, created, ev, refused, task

S = TaskStatus
LOST = ReleaseReason.EXECUTOR_LOST
TIMEOUT = ReleaseReason.TIMEOUT


def start(*tasks: RunConfigTask) -> RunState:
    state = applied(None, ev(created(*tasks))).state
    return applied(state, ev(StartRequested())).state


def claim(tid: str, executor: str, lease_ms: int = 30_000) -> TaskClaimed:
    return TaskClaimed(task_id=tid, executor_id=executor, lease_ms=lease_ms)


def report(tid: str, status: TaskStatus, executor: str | None = None) -> TaskStatusChanged:
    if executor is None:
        return TaskStatusChanged(task_id=tid, status=status)
    return TaskStatusChanged(task_id=tid, status=status, executor_id=executor)


def release(state: RunState, tid: str, reason: ReleaseReason = LOST) -> TaskReleased:
    t = state.run.tasks[tid]
    return TaskReleased(task_id=tid, executor_id=holder_of(t), attempt=attempt_of(t), reason=reason)


def readies(out: Applied) -> list[str]:
    return [d.data.task_id for d in out.derived if d.type is EventType.TASK_READY]  # type: ignore[union-attr]


def test_the_first_claim_wins_and_a_second_is_refused_naming_the_holder() -> None:
    state = start(task("a"))
    state = applied(state, ev(claim("a", "ex-1"))).state
    t = state.run.tasks["a"]
    assert (t.holder, t.lease_ms, t.status) == ("ex-1", 30_000, S.NOTSTARTED)
    out = refused(state, ev(claim("a", "ex-2")))
    assert out.reason == "task 'a' is held by executor ex-1"
    assert code_of(EventType.TASK_CLAIMED, out.reason) == "task_held"


def test_the_holder_claiming_again_renews_its_lease_only() -> None:
    state = start(task("a"))
    state = applied(state, ev(claim("a", "ex-1", 10_000))).state
    again = applied(state, ev(claim("a", "ex-1", 20_000)))
    assert again.state.run.tasks["a"].lease_ms == 20_000
    assert again.state.run.tasks["a"].claim_time == state.run.tasks["a"].claim_time
    assert again.derived == ()


def test_a_task_not_ready_cannot_be_claimed() -> None:
    state = start(task("a"), task("b", "a"))
    out = refused(state, ev(claim("b", "ex-1")))
    assert code_of(EventType.TASK_CLAIMED, out.reason) == "task_not_ready"
    queued = applied(None, ev(created(task("a")))).state
    assert "not running" in refused(queued, ev(claim("a", "ex-1"))).reason


def test_a_waiting_approval_task_cannot_be_claimed() -> None:
    state = start(task("a", needs_approval=True))
    assert "approval" in refused(state, ev(claim("a", "ex-1"))).reason


def test_reports_from_another_executor_or_anonymous_are_refused_for_a_held_task() -> None:
    state = start(task("a"))
    state = applied(state, ev(claim("a", "ex-1"))).state
    assert "held by executor ex-1" in refused(state, ev(report("a", S.RUNNING, "ex-2"))).reason
    assert "held by executor ex-1" in refused(state, ev(report("a", S.RUNNING))).reason
    state = applied(state, ev(report("a", S.RUNNING, "ex-1"))).state
    out = applied(state, ev(report("a", S.SUCCESS, "ex-1")))
    assert out.state.run.phase is Phase.FINISHED
    assert out.state.run.result is Result.SUCCESS
    assert out.state.run.tasks["a"].holder == "ex-1"  # who ran it stays on record


def test_a_report_naming_an_executor_claims_an_unclaimed_ready_task() -> None:
    state = start(task("a"))
    state = applied(state, ev(report("a", S.RUNNING, "ex-9"), at=5_000)).state
    t = state.run.tasks["a"]
    assert (t.holder, t.claim_time, t.lease_ms) == ("ex-9", 5_000, 30_000)
    assert "held by executor ex-9" in refused(state, ev(report("a", S.SUCCESS, "ex-8"))).reason


def test_anonymous_reports_keep_working_as_before() -> None:
    state = start(task("a"), task("b", "a"))
    state = applied(state, ev(report("a", S.RUNNING))).state
    assert state.run.tasks["a"].holder is UNSET
    state = applied(state, ev(report("a", S.SUCCESS))).state
    assert state.run.tasks["b"].status is S.NOTSTARTED


def test_a_lost_executor_with_retries_left_puts_the_task_back_to_ready() -> None:
    state = start(task("a", retries=1))
    state = applied(state, ev(claim("a", "ex-1"))).state
    state = applied(state, ev(report("a", S.RUNNING, "ex-1"))).state
    out = applied(state, ev(release(state, "a"), id=decision_id(RUN, "release", "a", 1)))
    t = out.state.run.tasks["a"]
    assert (t.status, t.holder, t.attempt, t.released, t.start_time) == (S.NOTSTARTED, UNSET, 2, ("ex-1",), None)  # fmt: skip
    assert readies(out) == ["a"]
    ready_ids = [d.id for d in out.derived]
    assert ready_ids == [f"{RUN}.ready.2"]  # a new ready seq: derived ids stay unique
    # The lost executor is refused for the task from then on; another takes it.
    assert "its lease lapsed" in refused(out.state, ev(report("a", S.SUCCESS, "ex-1"))).reason
    assert "its lease lapsed" in refused(out.state, ev(claim("a", "ex-1"))).reason
    state = applied(out.state, ev(claim("a", "ex-2"))).state
    state = applied(state, ev(report("a", S.RUNNING, "ex-2"))).state
    # The second attempt has no retries left: losing it fails the task and the run.
    out = applied(state, ev(release(state, "a")))
    t = out.state.run.tasks["a"]
    assert (t.status, t.reason, t.released) == (S.FAILED, "executor_lost", ("ex-1", "ex-2"))
    assert (out.state.run.phase, out.state.run.result) == (Phase.FINISHED, Result.FAILED)


def test_a_lost_executor_without_retries_fails_the_task_and_on_failure_children_run() -> None:
    fix = RunConfigTask(
        id="fix",
        name="fix",
        depends=(TaskDepend(task_id="a", conditions=(DependCondition.ON_FAILURE,)),),
    )
    state = start(task("a"), task("b", "a"), fix)
    state = applied(state, ev(claim("a", "ex-1"))).state
    out = applied(state, ev(release(state, "a")))
    tasks = out.state.run.tasks
    assert (tasks["a"].status, tasks["a"].reason) == (S.FAILED, "executor_lost")
    assert tasks["b"].status is S.SKIPPED
    assert readies(out) == ["fix"]
    assert out.state.run.result is Result.FAILED
    assert out.state.run.phase is Phase.RUNNING  # fix still to run


def test_a_timeout_fails_the_task_even_with_retries_left() -> None:
    state = start(task("a", retries=3, timeout_ms=2_000))
    state = applied(state, ev(claim("a", "ex-1"))).state
    out = applied(state, ev(release(state, "a", TIMEOUT)))
    assert (out.state.run.tasks["a"].status, out.state.run.tasks["a"].reason) == (
        S.FAILED,
        "timeout",
    )
    assert out.state.run.phase is Phase.FINISHED


def test_an_anonymous_running_task_times_out_with_no_executor_named() -> None:
    state = start(task("a", timeout_ms=1_000))
    state = applied(state, ev(report("a", S.RUNNING))).state
    data = TaskReleased(task_id="a", executor_id="", attempt=1, reason=TIMEOUT)
    out = applied(state, ev(data))
    assert out.state.run.tasks["a"].status is S.FAILED
    assert out.state.run.tasks["a"].released is UNSET


def test_stale_releases_are_refused_and_change_nothing() -> None:
    state = start(task("a", retries=1), task("b"))
    state = applied(state, ev(claim("a", "ex-1"))).state
    first = release(state, "a")
    state2 = applied(state, ev(first)).state
    # The same decision again with another id (a zombie owner past the id window): refused.
    out = refused(state2, ev(first))
    assert code_of(EventType.TASK_RELEASED, out.reason) == "stale_release"
    # The wrong holder, an unclaimed task, an ended task.
    wrong = TaskReleased(task_id="b", executor_id="ex-3", attempt=1, reason=LOST)
    assert "stale release" in refused(state2, ev(wrong)).reason
    none = TaskReleased(task_id="b", executor_id="", attempt=1, reason=TIMEOUT)
    assert "stale release" in refused(state2, ev(none)).reason


def test_the_same_decision_id_twice_is_a_duplicate() -> None:
    state = start(task("a"))
    state = applied(state, ev(claim("a", "ex-1"))).state
    eid = decision_id(RUN, "release", "a", 1)
    once = applied(state, ev(release(state, "a"), id=eid))
    twice = apply(once.state, ev(release(state, "a"), id=eid))
    assert isinstance(twice, Applied)
    assert twice.duplicate
    assert twice.state is once.state


def test_a_stopping_run_fails_a_lost_task_instead_of_retrying_it() -> None:
    state = start(task("a", retries=2), task("b"))
    state = applied(state, ev(claim("a", "ex-1"))).state
    state = applied(state, ev(report("a", S.RUNNING, "ex-1"))).state
    state = applied(state, ev(StopRequested(reason="timeout"))).state
    out = applied(state, ev(release(state, "a")))
    assert out.state.run.tasks["a"].status is S.FAILED
    assert out.state.run.phase is Phase.FINISHED
    assert readies(out) == []


def test_new_fields_round_trip_and_stay_out_of_the_bytes_when_unset() -> None:
    state = start(task("a", retries=1, timeout_ms=5_000))
    state = applied(state, ev(claim("a", "ex-1"))).state
    again = decode_state(encode_state(state))
    assert again == state
    plain = start(task("b"))
    raw = encode_state(plain)
    for key in (b"retries", b"timeout_ms", b"holder", b"attempt", b"released", b"claim_time"):
        assert key not in raw
    e = ev(report("a", S.RUNNING))
    assert b"executor_id" not in encode(e)
    assert decode(encode(e)) == e


# ---------------------------------------------------------------- interleavings (hypothesis)
EXECUTORS = ("ex-1", "ex-2", "ex-3")
_step = st.one_of(
    st.tuples(st.just("claim"), st.sampled_from(EXECUTORS)),
    st.tuples(
        st.just("report"),
        st.sampled_from((*EXECUTORS, None)),
        st.sampled_from((S.RUNNING, S.SUCCESS, S.FAILED)),
    ),
    st.tuples(st.just("release"), st.sampled_from((LOST, TIMEOUT))),
    st.tuples(st.just("duplicate")),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(_step, max_size=25), retries=st.integers(0, 2))
def test_any_interleaving_keeps_one_holder_and_ends_every_attempt_once(
    steps: list[tuple[object, ...]], retries: int
) -> None:
    """Whatever executors, reporters and the owner do, in any order and repeated: a task has at
    most one holder, only its holder's reports are applied while it holds it, an executor that
    lost it is never applied again, attempts go up by one per release and never past
    ``retries + 1``, and the run finishes once the task has ended."""
    state = start(task("a", retries=retries))
    ids = itertools.count()
    last: tuple[str, object, bool] | None = None
    for step in steps:
        kind = step[0]
        t = state.run.tasks["a"]
        if kind == "claim":
            data: object = claim("a", step[1])  # type: ignore[arg-type]
        elif kind == "report":
            data = report("a", step[2], step[1])  # type: ignore[arg-type]
        elif kind == "release":
            data = release(state, "a", step[1])  # type: ignore[arg-type]
        else:
            if last is None:
                continue
            eid, data, was_applied = last  # the step before, sent again with its id
            out = apply(state, make_event(data, id=eid, run_id=RUN, at=2_000))  # type: ignore[arg-type]
            if was_applied:
                assert isinstance(out, Applied)
                assert out.duplicate
                assert out.state is state
            else:
                assert isinstance(out, Refused)
            continue
        eid = f"s{next(ids)}"
        event = make_event(data, id=eid, run_id=RUN, at=2_000 + len(eid))  # type: ignore[arg-type]
        out = apply(state, event)
        same_without_derived(state, event, out)
        last = (eid, data, isinstance(out, Applied))
        if isinstance(out, Refused):
            assert out.state is state
            continue
        new = out.state.run.tasks["a"]
        if kind in ("claim", "report") and t.holder is not UNSET:
            assert step[1] == t.holder  # only the holder is applied while it holds the task
        if kind in ("claim", "report") and t.released is not UNSET:
            assert step[1] not in t.released  # a lost executor is never applied again
        if kind == "release":
            assert new.status is S.FAILED or attempt_of(new) == attempt_of(t) + 1
        assert attempt_of(new) <= retries + 1
        if new.status.is_finished():
            assert out.state.run.phase is Phase.FINISHED
        state = out.state
