"""Recreating (restarting) a run: the ``run.created`` data of a new run made from an old one.

Agola's rules: ``static_environment``, annotations, name and group are kept; ``environment`` is
replaced by the request's. Successful tasks keep their ids (their logs and workspace archives
are stored by task id, so children can reuse them) and stay successful (``kept_tasks``); every
other task, and every descendant of one, gets a new id, with the dependencies rewritten.
``from_start`` gives every task a new id. A finished or a cancelled run may be recreated.

New task ids are deterministic, ``uuid5(TASK_ID_NAMESPACE, f"{new_run_id}/{old_task_id}")``, so
that producing the same recreation twice gives the same event.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from events.catalogue import RunCreated
from events.errors import BadRequest, CannotRecreate
from events.ids import is_run_id
from events.model import Phase, Result, RunConfigTask, TaskDepend, TaskStatus
from events.state import RunState

__all__ = ["TASK_ID_NAMESPACE", "can_recreate", "recreate", "recreated_task_id"]

TASK_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://runstream.invalid/task-ids")


def recreated_task_id(new_run_id: str, old_task_id: str) -> str:
    """The id a renewed task gets in run ``new_run_id`` (deterministic)."""
    return str(uuid.uuid5(TASK_ID_NAMESPACE, f"{new_run_id}/{old_task_id}"))


def can_recreate(old: RunState, *, from_start: bool) -> str | None:
    """``None`` when ``old`` may be recreated this way, else the reason it may not."""
    run = old.run
    if run.phase is Phase.SETUPERROR:
        return "run has setup errors"
    # Agola counts cancelled as finished (Phase.IsFinished): a cancelled run is recreated both
    # ways; its tasks never ran, so from its failed tasks means every task.
    if run.phase is not Phase.FINISHED and run.phase is not Phase.CANCELLED:
        return f"run is {run.phase}, not finished"
    if not from_start and run.result is Result.SUCCESS:
        return "run succeeded: there are no failed tasks to restart from"
    return None


def recreate(
    old: RunState,
    *,
    new_run_id: str,
    environment: Mapping[str, str],
    from_start: bool,
    counter: int = 0,
) -> RunCreated:
    """The payload of the ``run.created`` event for ``new_run_id``, recreated from ``old``.

    Raises ``CannotRecreate`` (a ``BadRequest``; message "run cannot be restarted: <reason>")
    when :func:`can_recreate` refuses, and ``BadRequest`` for an invalid ``new_run_id``.
    """
    if not is_run_id(new_run_id) or new_run_id == old.run.id:
        raise BadRequest(f"invalid new run id {new_run_id!r}")
    reason = can_recreate(old, from_start=from_start)
    if reason is not None:
        raise CannotRecreate(reason)
    rc = old.config
    if from_start:
        renew = set(rc.tasks)
    else:
        renew = {tid for tid, t in old.run.tasks.items() if t.status is not TaskStatus.SUCCESS}
    renew = _with_descendants(rc.tasks, renew)
    new_ids = {tid: recreated_task_id(new_run_id, tid) for tid in renew}
    tasks = tuple(_renamed(t, new_ids) for t in rc.tasks.values())
    return RunCreated(
        name=rc.name,
        group=rc.group,
        tasks=tasks,
        environment=dict(environment),
        static_environment=rc.static_environment,
        annotations=rc.annotations,
        recreated_from=old.run.id,
        kept_tasks=tuple(tid for tid in rc.tasks if tid not in renew),
        counter=counter,
        timeout_ms=rc.timeout_ms,
    )


def _with_descendants(tasks: Mapping[str, RunConfigTask], roots: set[str]) -> set[str]:
    children: dict[str, list[str]] = {}
    for t in tasks.values():
        for d in t.depends:
            children.setdefault(d.task_id, []).append(t.id)
    out = set(roots)
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _renamed(t: RunConfigTask, new_ids: Mapping[str, str]) -> RunConfigTask:
    depends = tuple(
        TaskDepend(task_id=new_ids.get(d.task_id, d.task_id), conditions=d.conditions)
        for d in t.depends
    )
    return RunConfigTask(
        id=new_ids.get(t.id, t.id),
        name=t.name,
        depends=depends,
        environment=t.environment,
        steps=t.steps,
        ignore_failure=t.ignore_failure,
        needs_approval=t.needs_approval,
        skip=t.skip,
    )
