"""Building a new run from ``run.created`` / ``run.setup_errors_reported`` (Agola's ``newRun``).

The request checks run here, in the reducer, so that every producer (the API, the webhook
receiver, a foreign one) gets the same rules: a request that cannot form a run is refused with
the ``BadRequest`` message; inconsistent tasks become setup errors.
"""

from __future__ import annotations

from events._fast import build, evolve
from events.catalogue import Event, RunCreated, SetupErrorsReported
from events.checks import check_create, plan_tasks
from events.errors import BadRequest
from events.model import Phase, Result, Run, RunConfig, RunConfigTask, RunTask, TaskStatus

__all__ = ["create_run"]


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
    levels, task_errors = plan_tasks(data.tasks)
    errors = (*data.setup_errors, *task_errors)
    if data.kept_tasks:
        ids = {t.id for t in data.tasks}
        missing = [k for k in data.kept_tasks if k not in ids]
        if missing:
            return f"kept tasks {missing} are not tasks of the run"
    tasks: dict[str, RunConfigTask] = {}
    run_tasks: dict[str, RunTask] = {}
    if not errors:
        kept = frozenset(data.kept_tasks)
        for t in data.tasks:
            level = levels[t.id]
            tasks[t.id] = t if t.level == level else evolve(t, {"level": level})
            run_tasks[t.id] = _run_task(t, kept)
    config = build(
        RunConfig,
        {
            "id": event.run_id,
            "name": data.name,
            "group": data.group,
            "setup_errors": errors,
            "annotations": data.annotations,
            "static_environment": data.static_environment,
            "environment": data.environment,
            "tasks": tasks,
            "recreated_from": data.recreated_from,
        },
    )
    run = build(
        Run,
        {
            "id": event.run_id,
            "name": data.name,
            "group": data.group,
            "counter": data.counter,
            "annotations": data.annotations,
            "phase": Phase.SETUPERROR if errors else Phase.QUEUED,
            "result": Result.UNKNOWN,
            "stop": False,
            "tasks": run_tasks,
            "enqueue_time": event.at,
            "start_time": None,
            "end_time": event.at if errors else None,
        },
    )
    open_tasks = sum(t.status is TaskStatus.NOTSTARTED for t in run_tasks.values())
    return run, config, open_tasks


def _run_task(t: RunConfigTask, kept: frozenset[str]) -> RunTask:
    if t.id in kept:
        status = TaskStatus.SUCCESS
    elif t.skip:
        status = TaskStatus.SKIPPED
    else:
        status = TaskStatus.NOTSTARTED
    fields = {
        "id": t.id,
        "status": status,
        "skip": t.skip,
        "waiting_approval": False,
        "approved": False,
        "annotations": {},
        "start_time": None,
        "end_time": None,
    }
    return build(RunTask, fields)
