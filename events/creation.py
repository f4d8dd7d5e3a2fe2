"""Building a new run from ``run.created`` / ``run.setup_errors_reported`` (Agola's ``newRun``).

The request checks run here, in the reducer, so that every producer (the API, the webhook
receiver, a foreign one) gets the same rules: a request that cannot form a run is refused with
the ``BadRequest`` message; inconsistent tasks become setup errors.

A creation costs as much as a dozen other events, so the usual case (valid tasks, each after its
parents, no setup errors) is planned and built in one pass (:func:`_build_tasks`); anything else
goes through the general checks of ``events.checks`` with the same outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msgspec.structs import fields

from events.catalogue import Event, RunCreated, SetupErrorsReported
from events.checks import check_create, plan_tasks, redundant_dependencies
from events.errors import BadRequest
from events.model import (
    Phase,
    PlannedTask,
    Result,
    Run,
    RunConfig,
    RunConfigTask,
    RunTask,
    TaskStatus,
)

__all__ = ["create_run"]

_NOTSTARTED = TaskStatus.NOTSTARTED
_SKIPPED = TaskStatus.SKIPPED
_SUCCESS = TaskStatus.SUCCESS
#: The annotations of every new run task: one shared empty map (``events.model``: nothing mutates
#: the maps of a state), not a new dict per task.
_NO_ANNOTATIONS: dict[str, str] = {}

Tasks = tuple[dict[str, PlannedTask], dict[str, RunTask], int]


def create_run(event: Event) -> tuple[Run, RunConfig, int] | str:
    """``(run, config, open task count)`` for a creation event, or the reason it is refused."""
    data = event.data
    if isinstance(data, SetupErrorsReported):
        if not data.errors:
            return "run.setup_errors_reported carries no setup errors"
        data = RunCreated(
            name=data.name,
            group=data.group,
            static_environment=data.static_environment,
            annotations=data.annotations,
            setup_errors=data.errors,
            counter=data.counter,
        )
    assert isinstance(data, RunCreated)  # apply() only routes the two creation types here
    try:
        check_create(group=data.group, tasks=data.tasks, setup_errors=data.setup_errors)
    except BadRequest as exc:
        return str(exc)
    errors = data.setup_errors
    built = None if errors else _build_tasks(data.tasks, data.kept_tasks)
    if built is None:  # setup errors, or tasks out of the usual order: the general path
        built_or_errors = _general(data, errors)
        if isinstance(built_or_errors, str):
            return built_or_errors
        built, errors = built_or_errors
    elif data.kept_tasks:
        missing = [k for k in data.kept_tasks if k not in built[0]]
        if missing:
            return f"kept tasks {missing} are not tasks of the run"
    tasks, run_tasks, open_tasks = built
    return _run(event, data, errors, run_tasks), _config(event, data, errors, tasks), open_tasks


def _build_tasks(tasks: tuple[RunConfigTask, ...], kept_tasks: tuple[str, ...]) -> Tasks | None:
    """Config tasks (with their levels), run tasks and the open task count in one pass, or
    ``None`` unless every task comes after its parents with unique ids, names and parents and
    none depends on a task through a parent as well (checked only when a task has two or more
    dependencies: :func:`~events.checks.redundant_dependencies`)."""
    levels: dict[str, int] = {}
    names: set[str] = set()
    config: dict[str, PlannedTask] = {}
    run_tasks: dict[str, RunTask] = {}
    kept = frozenset(kept_tasks) if kept_tasks else ()
    open_tasks = 0
    joins = False
    for t in tasks:
        tid, name, deps = t.id, t.name, t.depends
        if tid in levels or name in names:
            return None
        level = 0
        if deps:
            for d in deps:
                parent = levels.get(d.task_id)
                if parent is None:
                    return None
                if parent >= level:
                    level = parent + 1
            if len(deps) > 1:
                if len({d.task_id for d in deps}) != len(deps):
                    return None
                joins = True
        levels[tid] = level
        names.add(name)
        config[tid] = planned(t, level)
        if tid in kept:
            status = _SUCCESS
        elif t.skip:
            status = _SKIPPED
        else:
            status = _NOTSTARTED
            open_tasks += 1
        run_tasks[tid] = RunTask(id=tid, status=status, skip=t.skip, annotations=_NO_ANNOTATIONS)
    if joins and redundant_dependencies(tasks):
        return None  # the general path reports it as a setup error
    return config, run_tasks, open_tasks


def planned(t: RunConfigTask, level: int) -> PlannedTask:
    """The task of a run config for the submitted ``t``, at ``level``."""
    if type(t) is PlannedTask and t.level == level:
        return t
    return _plan(t, level)


def _planner() -> Callable[[RunConfigTask, int], PlannedTask]:
    """``_plan(t, level)``: ``PlannedTask(<every field of RunConfigTask>=t.<field>, level=level)``,
    written out from the declared fields. A creation builds one per task, and keyword arguments
    read straight from ``t`` cost 40 % of ``PlannedTask(**asdict(t), level=level)``; generating
    the call keeps the fields declared in one place (``events.model``), as dataclasses do."""
    names = [f.name for f in fields(RunConfigTask)]
    assert {f.name for f in fields(PlannedTask)} == {*names, "level"}, "PlannedTask adds only level"
    args = ", ".join(f"{n}=t.{n}" for n in names)
    namespace: dict[str, Any] = {"PlannedTask": PlannedTask}
    source = f"def _plan(t, level):\n    return PlannedTask({args}, level=level)\n"
    exec(source, namespace)  # the source is made of the declared field names only
    plan: Callable[[RunConfigTask, int], PlannedTask] = namespace["_plan"]
    return plan


_plan = _planner()


def _general(data: RunCreated, errors: tuple[Any, ...]) -> tuple[Tasks, tuple[Any, ...]] | str:
    """The general path: full checks (setup errors for bad tasks), then the tasks if valid."""
    levels, task_errors = plan_tasks(data.tasks)
    errors = (*errors, *task_errors)
    if data.kept_tasks:
        ids = {t.id for t in data.tasks}
        missing = [k for k in data.kept_tasks if k not in ids]
        if missing:
            return f"kept tasks {missing} are not tasks of the run"
    tasks: dict[str, PlannedTask] = {}
    run_tasks: dict[str, RunTask] = {}
    open_tasks = 0
    if not errors:
        kept = frozenset(data.kept_tasks)
        for t in data.tasks:
            level = levels[t.id]
            tasks[t.id] = planned(t, level)
            if t.id in kept:
                status = _SUCCESS
            elif t.skip:
                status = _SKIPPED
            else:
                status = _NOTSTARTED
                open_tasks += 1
            run_tasks[t.id] = RunTask(
                id=t.id, status=status, skip=t.skip, annotations=_NO_ANNOTATIONS
            )
    return (tasks, run_tasks, open_tasks), errors


def _config(
    event: Event, data: RunCreated, errors: tuple[Any, ...], tasks: dict[str, PlannedTask]
) -> RunConfig:
    return RunConfig(
        id=event.run_id,
        name=data.name,
        group=data.group,
        setup_errors=errors,
        annotations=data.annotations,
        static_environment=data.static_environment,
        environment=data.environment,
        tasks=tasks,
        recreated_from=data.recreated_from,
        timeout_ms=data.timeout_ms,
    )


def _run(event: Event, data: RunCreated, errors: tuple[Any, ...], tasks: dict[str, RunTask]) -> Run:
    return Run(
        id=event.run_id,
        name=data.name,
        group=data.group,
        counter=data.counter,
        annotations=data.annotations,
        phase=Phase.SETUPERROR if errors else Phase.QUEUED,
        result=Result.UNKNOWN,
        stop=False,
        tasks=tasks,
        enqueue_time=event.at,
        start_time=None,
        end_time=event.at if errors else None,
    )
