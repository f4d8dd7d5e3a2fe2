"""Run-config checks, task levels, group paths and BadRequest messages."""

from __future__ import annotations

import pytest

from events import (
    BadRequest,
    Phase,
    SetupError,
    check_create,
    check_tasks,
    is_group_prefix,
    project_group,
    root_group,
    split_group,
    task_levels,
    user_group,
    validate_group,
)
from tests.unit.test_events_support import task


def messages(errors: tuple[SetupError, ...]) -> list[str]:
    return [e.message for e in errors]


def test_valid_tasks_have_no_errors_and_levels() -> None:
    tasks = [task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c"), task("e")]
    assert check_tasks(tasks) == ()
    assert task_levels({t.id: t for t in tasks}) == {"a": 0, "b": 1, "c": 1, "d": 2, "e": 0}


def test_levels_do_not_depend_on_submission_order() -> None:
    tasks = [task("d", "b", "c"), task("c", "a"), task("b", "a"), task("a")]
    assert task_levels({t.id: t for t in tasks}) == {"a": 0, "b": 1, "c": 1, "d": 2}


def test_levels_refuse_a_cycle() -> None:
    with pytest.raises(ValueError, match="cycle"):
        task_levels({"a": task("a", "b"), "b": task("b", "a")})


def test_missing_dependency() -> None:
    [err] = check_tasks([task("a", "zz")])
    assert err.message == "task 'name-a' depends on a missing task 'zz'"
    assert err.task_ids == ("a",)


def test_self_dependency() -> None:
    assert messages(check_tasks([task("a", "a")])) == ["task 'name-a' depends on itself"]


def test_duplicate_ids_and_names() -> None:
    errs = check_tasks([task("a"), task("a"), task("b", name="x"), task("c", name="x")])
    assert messages(errs) == [
        "duplicate task id 'a'",
        "tasks 'b' and 'c' have the same name 'x'",
    ]


def test_dependency_twice_on_the_same_task() -> None:
    assert "depends twice" in check_tasks([task("a"), task("b", "a", "a")])[0].message


def test_cycles_name_their_tasks_only() -> None:
    tasks = [
        task("a", "c"),
        task("b", "a"),
        task("c", "b"),
        task("x", "a"),
        task("y", "z"),
        task("z", "y"),
    ]
    errs = check_tasks(tasks)
    assert [e.task_ids for e in errs] == [("a", "b", "c"), ("y", "z")]
    assert errs[0].message == "dependency cycle between tasks 'name-a', 'name-b', 'name-c'"


def test_a_long_chain_is_fine() -> None:
    tasks = [task("t0"), *(task(f"t{i}", f"t{i - 1}") for i in range(1, 3000))]
    assert check_tasks(tasks) == ()
    assert task_levels({t.id: t for t in tasks})["t2999"] == 2999


@pytest.mark.parametrize(
    ("group", "tasks", "errors", "message"),
    [
        ("", [task("a")], [], "group is empty"),
        ("project/p", [task("a")], [], "not an absolute path"),
        ("/project", [task("a")], [], "pairs"),
        ("/project//branch/x", [task("a")], [], "empty or relative"),
        ("/project/p/commit/x", [task("a")], [], "is not one of"),
        ("/project/p", [], [], "neither tasks nor setup errors"),
    ],
)
def test_requests_that_cannot_form_a_run(group, tasks, errors, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadRequest, match=message):
        check_create(group=group, tasks=tasks, setup_errors=errors)


def test_setup_errors_alone_form_a_run() -> None:
    check_create(group="/user/u1", tasks=[], setup_errors=[SetupError(message="x")])


def test_group_paths_escape_branch_names_into_one_element() -> None:
    g = project_group("p1", branch="feature/x y")
    assert g == "/project/p1/branch/feature%2Fx%20y"
    assert split_group(g) == [("project", "p1"), ("branch", "feature%2Fx%20y")]
    assert root_group(g) == "p1"
    assert user_group("u", tag="v1.0") == "/user/u/tag/v1.0"
    assert project_group("p", pr="12") == "/project/p/pr/12"
    with pytest.raises(BadRequest):
        project_group("p", branch="a", tag="b")
    with pytest.raises(BadRequest):
        project_group("p", branch="")
    validate_group("/project/p1")


def test_group_prefix_matches_whole_elements() -> None:
    assert is_group_prefix("/project/x", "/project/x/branch/main")
    assert is_group_prefix("/project/x", "/project/x")
    assert not is_group_prefix("/a/b", "/a/bc")


def test_phase_result_status_predicates() -> None:
    assert [p for p in Phase if p.is_final()] == [Phase.SETUPERROR, Phase.CANCELLED, Phase.FINISHED]
