"""Recreating runs: what is kept, what gets new ids, and each refusal."""

from __future__ import annotations

import pytest

from events import (
    BadRequest,
    CancelRequested,
    CannotRecreate,
    DependCondition,
    Phase,
    Result,
    RunConfigTask,
    RunState,
    SetupError,
    StartRequested,
    TaskDepend,
    TaskStatus,
    TaskStatusChanged,
    recreate,
    recreated_task_id,
)
from tests.unit.test_events_support import applied, created, ev, fold, task

NEW = "0000000000000100"


def finished(*outcomes: tuple[str, TaskStatus]) -> RunState:
    """a -> b -> c, d independent; each task ends as given."""
    tasks = (task("a"), task("b", "a"), task("c", "b"), task("d"))
    data = created(
        *tasks,
        environment={"SECRET": "old"},
        static_environment={"CI": "true"},
        annotations={"k": "v"},
        counter=4,
    )
    events = [ev(data), ev(StartRequested())]
    for tid, st in outcomes:
        events.append(ev(TaskStatusChanged(task_id=tid, status=TaskStatus.RUNNING)))
        events.append(ev(TaskStatusChanged(task_id=tid, status=st)))
    state = fold(events)
    assert state is not None
    assert state.run.phase is Phase.FINISHED
    return state


FAILED_B = (
    ("a", TaskStatus.SUCCESS),
    ("b", TaskStatus.FAILED),
    ("c", TaskStatus.CANCELLED),
    ("d", TaskStatus.SUCCESS),
)


def test_from_failed_tasks_keeps_successful_ids_and_renews_descendants() -> None:
    old = finished(*FAILED_B)
    data = recreate(old, new_run_id=NEW, environment={"SECRET": "new"}, from_start=False)
    ids = [t.id for t in data.tasks]
    nb, nc = recreated_task_id(NEW, "b"), recreated_task_id(NEW, "c")
    assert ids == ["a", nb, nc, "d"]
    assert data.tasks[1].depends == (TaskDepend(task_id="a"),)
    assert data.tasks[2].depends == (TaskDepend(task_id=nb),)
    assert data.kept_tasks == ("a", "d")
    assert data.environment == {"SECRET": "new"}
    assert (data.static_environment, data.annotations, data.name, data.group) == (
        {"CI": "true"},
        {"k": "v"},
        old.config.name,
        old.config.group,
    )
    assert data.recreated_from == old.run.id
    run = applied(None, ev(data, run_id=NEW)).state.run
    assert run.phase is Phase.QUEUED
    assert run.counter == 0
    assert run.tasks["a"].status is TaskStatus.SUCCESS
    assert run.tasks[nb].status is TaskStatus.NOTSTARTED


def test_successful_descendant_of_a_failed_task_is_renewed() -> None:
    on_failure = TaskDepend(task_id="a", conditions=(DependCondition.ON_FAILURE,))
    tasks = (task("a"), RunConfigTask(id="h", name="h", depends=(on_failure,)))
    state = fold(
        [ev(created(*tasks)), ev(StartRequested())]
        + [
            ev(TaskStatusChanged(task_id=t, status=s))
            for t, s in (
                ("a", TaskStatus.RUNNING),
                ("a", TaskStatus.FAILED),
                ("h", TaskStatus.RUNNING),
                ("h", TaskStatus.SUCCESS),
            )
        ]
    )
    assert state is not None
    assert state.run.result is Result.FAILED
    data = recreate(state, new_run_id=NEW, environment={}, from_start=False)
    assert data.kept_tasks == ()
    assert data.tasks[1].depends[0].conditions == (DependCondition.ON_FAILURE,)


def test_from_start_renews_every_task_and_is_deterministic() -> None:
    old = finished(*((t, TaskStatus.SUCCESS) for t in "abcd"))
    one = recreate(old, new_run_id=NEW, environment={}, from_start=True)
    two = recreate(old, new_run_id=NEW, environment={}, from_start=True)
    assert one == two
    assert one.kept_tasks == ()
    assert {t.id for t in one.tasks}.isdisjoint(set("abcd"))


def test_refusals() -> None:
    ok = finished(*((t, TaskStatus.SUCCESS) for t in "abcd"))
    with pytest.raises(CannotRecreate, match="run cannot be restarted: run succeeded"):
        recreate(ok, new_run_id=NEW, environment={}, from_start=False)
    bad = applied(None, ev(created(setup_errors=(SetupError(message="x"),)))).state
    for from_start in (True, False):
        with pytest.raises(CannotRecreate, match="setup errors"):
            recreate(bad, new_run_id=NEW, environment={}, from_start=from_start)
    queued = applied(None, ev(created(task("a")))).state
    with pytest.raises(CannotRecreate, match="not finished"):
        recreate(queued, new_run_id=NEW, environment={}, from_start=True)
    running = applied(queued, ev(StartRequested())).state
    with pytest.raises(CannotRecreate, match="running, not finished"):
        recreate(running, new_run_id=NEW, environment={}, from_start=True)
    with pytest.raises(BadRequest, match="invalid new run id"):
        recreate(ok, new_run_id="12", environment={}, from_start=True)


@pytest.mark.parametrize("from_start", [True, False])
def test_a_cancelled_run_is_recreated_both_ways(from_start: bool) -> None:
    # Agola counts cancelled as finished (issue 13): its tasks never ran, so all are renewed.
    queued = applied(None, ev(created(task("a"), task("b", "a")))).state
    cancelled = applied(queued, ev(CancelRequested())).state
    assert cancelled.run.phase is Phase.CANCELLED
    data = recreate(cancelled, new_run_id=NEW, environment={"E": "1"}, from_start=from_start)
    assert data.kept_tasks == ()
    assert data.recreated_from == cancelled.run.id
    assert {t.id for t in data.tasks}.isdisjoint({"a", "b"})
    new = applied(None, ev(data, run_id=NEW)).state
    assert new.run.phase is Phase.QUEUED
