"""Run-config checks (Agola's ``CheckRunConfigTasks`` and ``GenTasksLevels``).

Two kinds of problems, handled differently on purpose:

* a request that cannot even form a run (no group, a relative or malformed group, neither tasks
  nor setup errors) raises :class:`~events.errors.BadRequest`: the API answers 400;
* inconsistent tasks (a missing or self dependency, a cycle, duplicate ids or names, a task and
  one of its parents both depending on a third task) are *setup errors*: the run is created in
  phase ``setuperror`` so the user sees why in the run itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

from events.errors import BadRequest
from events.group import validate_group
from events.model import RunConfigTask, SetupError

__all__ = ["check_create", "check_tasks", "plan_tasks", "redundant_dependencies", "task_levels"]


def check_create(
    *, group: str, tasks: Sequence[RunConfigTask], setup_errors: Sequence[SetupError]
) -> None:
    """Raise ``BadRequest`` (message says what is wrong) unless these can form a run."""
    problem = _group_problem(group)
    if problem is not None:
        raise BadRequest(problem)
    if not tasks and not setup_errors:
        raise BadRequest("run has neither tasks nor setup errors")


@lru_cache(maxsize=4096)
def _group_problem(group: str) -> str | None:
    # Cached: every run of a branch has the same group, and creation cost counts.
    try:
        validate_group(group)
    except BadRequest as exc:
        return str(exc)
    return None


def plan_tasks(tasks: Sequence[RunConfigTask]) -> tuple[dict[str, int], tuple[SetupError, ...]]:
    """``(levels, ())`` for valid tasks, else ``({}, setup errors)``.

    One pass when every task comes after its parents (the usual order); anything unusual
    (a forward reference, a duplicate) falls back to :func:`check_tasks` and :func:`task_levels`.
    """
    levels: dict[str, int] = {}
    names: set[str] = set()
    for t in tasks:
        if t.id in levels or t.name in names:
            break
        level = 0
        for d in t.depends:
            parent = levels.get(d.task_id)
            if parent is None:
                break
            if parent >= level:
                level = parent + 1
        else:
            if len(t.depends) < 2 or len({d.task_id for d in t.depends}) == len(t.depends):
                levels[t.id] = level
                names.add(t.name)
                continue
        break
    else:
        if not redundant_dependencies(tasks):  # () at once unless a task has 2+ dependencies
            return levels, ()
    errors = check_tasks(tasks)
    if errors:
        return {}, errors
    return task_levels({t.id: t for t in tasks}), ()


def check_tasks(tasks: Sequence[RunConfigTask]) -> tuple[SetupError, ...]:
    """The setup errors of ``tasks`` in a stable order; empty when they form a valid graph."""
    errors: list[SetupError] = []
    by_id: dict[str, RunConfigTask] = {}
    names: dict[str, str] = {}
    for t in tasks:
        if t.id in by_id:
            errors.append(SetupError(message=f"duplicate task id {t.id!r}", task_ids=(t.id,)))
            continue
        by_id[t.id] = t
        if t.name in names:
            msg = f"tasks {names[t.name]!r} and {t.id!r} have the same name {t.name!r}"
            errors.append(SetupError(message=msg, task_ids=(names[t.name], t.id)))
        names.setdefault(t.name, t.id)
    for t in tasks:
        seen: set[str] = set()
        for d in t.depends:
            if d.task_id == t.id:
                errors.append(SetupError(message=f"task {t.name!r} depends on itself", task_ids=(t.id,)))  # fmt: skip
            elif d.task_id not in by_id:
                msg = f"task {t.name!r} depends on a missing task {d.task_id!r}"
                errors.append(SetupError(message=msg, task_ids=(t.id,)))
            elif d.task_id in seen:
                msg = f"task {t.name!r} depends twice on task {d.task_id!r}"
                errors.append(SetupError(message=msg, task_ids=(t.id,)))
            seen.add(d.task_id)
    if not errors:
        for cycle in _cycles(by_id):
            listed = ", ".join(repr(by_id[i].name) for i in cycle)
            errors.append(SetupError(message=f"dependency cycle between tasks {listed}", task_ids=cycle))  # fmt: skip
    if not errors:
        errors.extend(redundant_dependencies(tasks))
    return tuple(errors)


def _has_join(tasks: Sequence[RunConfigTask]) -> bool:
    """True when some task has two or more dependencies (only then can one be redundant)."""
    return any(len(t.depends) > 1 for t in tasks)


def redundant_dependencies(tasks: Sequence[RunConfigTask]) -> tuple[SetupError, ...]:
    """Agola's check: "task X and its parent Y both depend on task Z" (Z is a direct dependency
    of X and an ancestor of Y, another direct dependency of X) is a setup error naming the three
    tasks, ``task_ids=(X, Y, Z)``. Only for tasks without missing parents or cycles."""
    if not _has_join(tasks):
        return ()
    by_id = {t.id: t for t in tasks}
    ancestors: dict[str, frozenset[str]] = {}

    def of(tid: str) -> frozenset[str]:
        # Iterative (deep graphs): ancestors of a task = its parents and their ancestors.
        todo = [tid]
        while todo:
            cur = todo[-1]
            if cur in ancestors:
                todo.pop()
                continue
            missing = [d.task_id for d in by_id[cur].depends if d.task_id not in ancestors]
            if missing:
                todo.extend(missing)
                continue
            acc: set[str] = set()
            for d in by_id[cur].depends:
                acc.add(d.task_id)
                acc |= ancestors[d.task_id]
            ancestors[cur] = frozenset(acc)
            todo.pop()
        return ancestors[tid]

    errors: list[SetupError] = []
    for t in tasks:
        if len(t.depends) < 2:
            continue
        direct = [d.task_id for d in t.depends]
        for y in direct:
            for z in direct:
                if z != y and z in of(y):
                    msg = (
                        f"task {t.name!r} and its parent {by_id[y].name!r} both depend on "
                        f"task {by_id[z].name!r}"
                    )
                    errors.append(SetupError(message=msg, task_ids=(t.id, y, z)))
    return tuple(errors)


def _cycles(tasks: Mapping[str, RunConfigTask]) -> list[tuple[str, ...]]:
    """The strongly connected components with more than one task (Tarjan, iterative), each in
    submission order. Assumes every dependency exists and none is a self dependency."""
    order = {tid: i for i, tid in enumerate(tasks)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []
    for root in tasks:
        if root in index:
            continue
        work = [(root, iter([d.task_id for d in tasks[root].depends]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter([d.task_id for d in tasks[child].depends])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(tuple(sorted(comp, key=order.__getitem__)))
    return sorted(found, key=lambda c: order[c[0]])


def task_levels(tasks: Mapping[str, RunConfigTask]) -> dict[str, int]:
    """Each task's level: 0 without dependencies, else one more than its deepest parent.

    Only for tasks that passed :func:`check_tasks`; raises ``ValueError`` on a cycle or a
    missing parent.
    """
    levels: dict[str, int] = {}
    pending = list(tasks.values())
    while pending:
        rest = []
        for t in pending:
            level = 0
            for d in t.depends:
                parent = levels.get(d.task_id)
                if parent is None:
                    rest.append(t)
                    break
                level = max(level, parent + 1)
            else:
                levels[t.id] = level
        if len(rest) == len(pending):
            raise ValueError(f"no level for tasks {[t.id for t in rest]}: cycle or missing parent")
        pending = rest
    return levels
