"""Task advancement (Agola's ``advanceRunTasks``): which tasks are skipped, wait or become ready.

The rules, applied by the reducer while a run is running and not stopping:

* a task is *judged* once, when its last parent has ended (a root task: when the run starts).
  Each dependency holds when the parent's status is one its conditions accept (``on_success``
  → ``success``, ``on_failure`` → ``failed``, ``on_skipped`` → ``skipped``; no condition means
  ``on_success``). ``ignore_failure`` does not change the parent's status: a failed task with
  ``ignore_failure`` is ``failed`` for its children (its ``on_success`` children are skipped, its
  ``on_failure`` children run); it only keeps the run's result from becoming ``failed``. A parent
  that ended ``stopped`` or ``cancelled`` satisfies no condition;
* when every dependency holds, the task becomes *ready*, or, when it needs approval and is not
  approved, waits for approval (``waiting_approval``) and becomes ready when approved;
  otherwise it is ``skipped``, and its own children are judged in turn (the skip cascades);
* a task not started may only be reported started or ended once it is ready.

These functions work on a fresh ``dict`` of the run's tasks, which they change in place; the
graph of a run config (parents with the statuses they accept, children, level order) is built once
per config object and cached.
"""

from __future__ import annotations

from collections.abc import Mapping

from msgspec.structs import replace

from events.model import (
    FINISHED_TASK_STATUSES,
    DependCondition,
    RunConfig,
    RunTask,
    TaskStatus,
)

__all__ = ["GRAPHS", "Graph", "graph_of", "judge_at_start", "judge_children", "parents_ended"]

_NOTSTARTED = TaskStatus.NOTSTARTED
_SKIPPED = TaskStatus.SKIPPED
_FINISHED = FINISHED_TASK_STATUSES
_ACCEPTS = {
    DependCondition.ON_SUCCESS: TaskStatus.SUCCESS,
    DependCondition.ON_FAILURE: TaskStatus.FAILED,
    DependCondition.ON_SKIPPED: TaskStatus.SKIPPED,
}
_ON_SUCCESS = frozenset({TaskStatus.SUCCESS})
_CACHE_MAX = 1 << 16
_NO_IDS: tuple[str, ...] = ()


class Graph:
    """What advancing a run needs from its config, derived once: each task's parents with the
    statuses each dependency accepts, its children, its position, and the tasks in level order."""

    __slots__ = ("approval", "by_level", "children", "levels", "order", "parents")

    def __init__(self, config: RunConfig) -> None:
        tasks = config.tasks
        order: dict[str, int] = {}
        levels: dict[str, int] = {}
        approval: list[str] = []
        parents: dict[str, tuple[tuple[str, frozenset[TaskStatus]], ...]] = {}
        children: dict[str, list[str]] = {}
        topological = True  # every task after its parents (the usual order): no sort needed
        for i, (tid, t) in enumerate(tasks.items()):
            order[tid] = i
            levels[tid] = t.level
            if t.needs_approval:
                approval.append(tid)
            deps = t.depends
            if not deps:
                parents[tid] = ()
                continue
            parents[tid] = tuple((d.task_id, _accepted(d.conditions)) for d in deps)
            for d in deps:
                pid = d.task_id
                if pid not in order:
                    topological = False
                if pid in children:
                    children[pid].append(tid)
                else:
                    children[pid] = [tid]
        self.order = order
        self.levels = levels
        self.approval = frozenset(approval)
        self.parents = parents
        self.children = {tid: tuple(c) for tid, c in children.items()}
        self.by_level = (
            tuple(tasks)
            if topological
            else tuple(sorted(tasks, key=lambda tid: (levels[tid], order[tid])))
        )


_accepts_of: dict[tuple[DependCondition, ...], frozenset[TaskStatus]] = {}


def _accepted(conditions: tuple[DependCondition, ...]) -> frozenset[TaskStatus]:
    """The parent statuses a dependency with ``conditions`` accepts (shared per conditions)."""
    hit = _accepts_of.get(conditions)
    if hit is None:
        hit = frozenset(_ACCEPTS[c] for c in conditions) or _ON_SUCCESS
        _accepts_of[conditions] = hit
    return hit


#: graph_of's cache: id(config) → (config, graph); hot paths read it directly.
GRAPHS: dict[int, tuple[RunConfig, Graph]] = {}


def graph_of(config: RunConfig) -> Graph:
    """The graph of ``config`` (cached by object: the entry holds the config, so its id is not
    reused while cached; the cache is emptied when it holds ``_CACHE_MAX`` configs)."""
    hit = GRAPHS.get(id(config))
    if hit is not None and hit[0] is config:
        return hit[1]
    graph = Graph(config)
    if len(GRAPHS) >= _CACHE_MAX:
        GRAPHS.clear()
    GRAPHS[id(config)] = (config, graph)
    return graph


def parents_ended(tasks: Mapping[str, RunTask], graph: Graph, tid: str) -> bool:
    """True when every parent of ``tid`` has a finished status (always for a root task)."""
    for pid, _ in graph.parents[tid]:  # noqa: SIM110 - all() of a generator is slower here (hot path)
        if tasks[pid].status not in _FINISHED:
            return False
    return True


def _judge(
    tasks: dict[str, RunTask], graph: Graph, tid: str, at: int, ready: list[str]
) -> bool | None:
    """Judge ``tid`` if it is due: ``None`` when not (started, judged, a parent still open),
    ``True`` when it was skipped, ``False`` when it became ready or waits for approval."""
    t = tasks[tid]
    if t.status is not _NOTSTARTED or t.waiting_approval or tid in ready:
        return None
    holds = True
    for pid, accepted in graph.parents[tid]:
        status = tasks[pid].status
        if status not in _FINISHED:
            return None
        if status not in accepted:
            holds = False
    if not holds:
        tasks[tid] = replace(t, status=_SKIPPED, end_time=at)
        return True
    if tid in graph.approval and not t.approved:
        tasks[tid] = replace(t, waiting_approval=True)
    else:
        ready.append(tid)
    return False


def judge_children(
    tasks: dict[str, RunTask], graph: Graph, ended: str, at: int
) -> tuple[list[str], int]:
    """After task ``ended`` ended: judge its children whose parents have all ended, cascading
    skips. Returns the tasks that became ready (in run-config order) and how many were skipped."""
    todo = list(graph.children.get(ended, _NO_IDS))
    ready: list[str] = []
    skipped = 0
    children = graph.children
    while todo:
        tid = todo.pop()
        if _judge(tasks, graph, tid, at, ready):
            skipped += 1
            todo.extend(children.get(tid, _NO_IDS))
    if len(ready) > 1:
        ready.sort(key=graph.order.__getitem__)
    return ready, skipped


def judge_at_start(tasks: dict[str, RunTask], graph: Graph, at: int) -> tuple[list[str], int]:
    """When the run starts: judge every task whose parents have all ended (the root tasks, and
    children of kept or ``skip`` tasks), in level order so that skips cascade in one pass.
    Returns the ready tasks (in run-config order) and how many were skipped."""
    ready: list[str] = []
    skipped = 0
    for tid in graph.by_level:
        if _judge(tasks, graph, tid, at, ready):
            skipped += 1
    if len(ready) > 1:
        ready.sort(key=graph.order.__getitem__)
    return ready, skipped
