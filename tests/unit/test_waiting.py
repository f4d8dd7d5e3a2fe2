"""What a run and its tasks wait for (api.waiting): derived from states the real reducer made."""

from __future__ import annotations

import msgspec

from api.waiting import TaskWait, Waiting, WaitsFor, waiting
from events import (
    CancelRequested,
    RunState,
    StartRequested,
    TaskApproved,
    TaskClaimed,
    TaskReleased,
    TaskStatus,
    TaskStatusChanged,
)
from events.catalogue import ReleaseReason
from tests.unit.test_events_support import RUN, applied, created, ev, task

# 2025-11-28T01:17:38Z and a few seconds later
T0 = 1_764_292_658_000


def start(*tasks: object, **kw: object) -> RunState:
    state = applied(None, ev(created(*tasks, **kw), at=T0)).state  # type: ignore[arg-type]
    return applied(state, ev(StartRequested(), at=T0 + 1_000)).state


def step(state: RunState, data: object, at: int) -> RunState:
    return applied(state, ev(data, at=at)).state  # type: ignore[arg-type]


def waits(state: RunState, **kw: object) -> Waiting:
    w = waiting(state, **kw)  # type: ignore[arg-type]
    assert w is not None
    return w


def by_task(w: Waiting) -> dict[str, dict[str, object]]:
    """Each task's entry as the API's JSON shows it."""
    return {t.task_id: msgspec.json.decode(msgspec.json.encode(t)) for t in w.tasks}


def test_a_queued_run_waits_for_a_slot_naming_the_runs_that_hold_them() -> None:
    state = applied(None, ev(created(task("a"), task("b", "a")), at=T0)).state
    w = waits(state, group_running=["0000000000000003", "0000000000000002"], max_running=2)
    assert w.run is not None
    assert w.run.what is WaitsFor.SLOT
    assert (w.run.running, w.run.limit) == (2, 2)
    assert w.run.held_by == ("0000000000000002", "0000000000000003")
    assert w.run.text == (
        "a group slot: 2 of 2 running in /project/p1/branch/main, held by runs "
        "0000000000000002, 0000000000000003"
    )
    # Every task waits for the run to start.
    assert [(t.task_id, t.what) for t in w.tasks] == [("a", TaskWait.RUN), ("b", TaskWait.RUN)]


def test_a_free_slot_and_the_scheduler_off_are_said_as_such() -> None:
    state = applied(None, ev(created(task("a")), at=T0)).state
    free = waits(state, group_running=[RUN], max_running=1)  # itself is never counted
    assert free.run is not None
    assert (free.run.running, free.run.held_by) == (0, ())
    assert "0 of 1 running" in free.run.text
    assert "a slot is free" in free.run.text
    off = waits(state, group_running=["0000000000000002"], max_running=0)
    assert off.run is not None
    assert off.run.what is WaitsFor.START
    assert off.run.text == "a start request (scheduler off)"


def test_many_holders_are_named_up_to_ten() -> None:
    state = applied(None, ev(created(task("a")), at=T0)).state
    running = [f"{i:016d}" for i in range(100, 113)]
    w = waits(state, group_running=running, max_running=13)
    assert w.run is not None
    assert len(w.run.held_by) == 13
    assert w.run.text.endswith(" and 3 more")


def test_tasks_wait_for_parents_approval_claim_executor_and_their_end() -> None:
    state = start(
        task("build"),
        task("lint"),
        task("test", "build", "lint"),
        task("deploy", "test", needs_approval=True),
    )
    w = waits(state)
    assert w.run is None  # a running run waits for no slot
    got = by_task(w)
    assert got["build"]["what"] == got["lint"]["what"] == "claim"
    assert got["build"]["text"] == "an executor to claim it (ready)"
    assert got["test"]["what"] == "parents"
    assert got["test"]["parents"] == ["build", "lint"]
    assert got["test"]["text"] == "parents to end: build, lint"
    assert got["deploy"]["parents"] == ["test"]

    state = step(state, TaskClaimed(task_id="build", executor_id="runner-7", lease_ms=20_000), T0 + 5_000)  # fmt: skip
    state = step(state, TaskStatusChanged(task_id="lint", status=TaskStatus.SUCCESS), T0 + 6_000)
    got = by_task(waits(state))
    said = "executor runner-7 to report it running (claimed at 2025-11-28T01:17:43Z, lease 20 s)"
    assert got["build"] == {
        "task_id": "build",
        "what": "executor",
        "text": said,
        "parents": [],
        "executor": "runner-7",
        "since": T0 + 5_000,
    }
    assert "lint" not in got  # ended: waits for nothing
    assert got["test"]["parents"] == ["build"]

    running = TaskStatusChanged(task_id="build", status=TaskStatus.RUNNING, executor_id="runner-7")
    state = step(state, running, T0 + 7_000)
    got = by_task(waits(state))
    assert got["build"]["what"] == "running"
    assert got["build"]["executor"] == "runner-7"
    assert got["build"]["since"] == T0 + 7_000
    assert got["build"]["text"] == "executor runner-7 to report its end (running since 2025-11-28T01:17:45Z)"  # fmt: skip

    done = TaskStatusChanged(task_id="build", status=TaskStatus.SUCCESS, executor_id="runner-7")
    state = step(state, done, T0 + 8_000)
    state = step(state, TaskStatusChanged(task_id="test", status=TaskStatus.RUNNING), T0 + 9_000)
    got = by_task(waits(state))
    assert got["test"]["what"] == "running"
    assert "executor" not in got["test"]
    assert got["test"]["text"].endswith("; no executor named")  # type: ignore[union-attr]
    state = step(state, TaskStatusChanged(task_id="test", status=TaskStatus.SUCCESS), T0 + 9_500)
    got = by_task(waits(state))
    assert (got["deploy"]["what"], got["deploy"]["text"]) == ("approval", "an approval")
    state = step(state, TaskApproved(task_id="deploy"), T0 + 9_800)
    assert by_task(waits(state))["deploy"]["what"] == "claim"


def test_a_task_back_to_ready_after_a_lost_executor_says_its_attempt() -> None:
    state = start(task("build", retries=1))
    state = step(state, TaskClaimed(task_id="build", executor_id="runner-7"), T0 + 2_000)
    lost = TaskReleased(
        task_id="build", executor_id="runner-7", attempt=1, reason=ReleaseReason.EXECUTOR_LOST
    )
    state = step(state, lost, T0 + 40_000)
    [entry] = waits(state).tasks
    assert entry.what is TaskWait.CLAIM
    assert entry.attempt == 2
    assert entry.text == "an executor to claim it (ready); attempt 2, lost by runner-7"
    state = step(state, TaskClaimed(task_id="build", executor_id="runner-8"), T0 + 41_000)
    [entry] = waits(state).tasks
    assert (entry.what, entry.executor, entry.attempt) == (TaskWait.EXECUTOR, "runner-8", 2)


def test_a_final_run_waits_for_nothing() -> None:
    state = applied(None, ev(created(task("a")), at=T0)).state
    state = step(state, CancelRequested(), T0 + 1)
    assert waiting(state, max_running=1) is None
