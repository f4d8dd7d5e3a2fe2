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
graph of a run config (children, the tasks needing approval; positions and level order on first
use) is built once per config object and cached; a task's parents are read from its ``depends``.
"""

from __future__ import annotations

from collections.abc import Mapping

from msgspec.structs import replace

from events.model import (
    FINISHED_TASK_STATUSES,
    DependCondition,
    PlannedTask,
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
_NO_IDS: list[str] = []  # never changed


class Graph:
    """What advancing a run needs from its config, derived once: the tasks that need approval, the
    roots, each task's children, and (on first use) positions and the tasks in level order. A
    task's parents are its config's ``depends``."""

    __slots__ = ("_by_level", "_order", "approval", "children", "roots", "tasks")

    def __init__(self, config: RunConfig) -> None:
        # Built once per run (at its start), in one pass over the dependencies; what only fan-outs
        # and runs with ended tasks at their start need (positions, level order) waits for use.
        tasks = config.tasks
        approval: list[str] = []
        roots: list[str] = []
        children: dict[str, list[str]] = {}
        for tid, t in tasks.items():
            if t.needs_approval:
                approval.append(tid)
            deps = t.depends
            if not deps:
                roots.append(tid)
                continue
            for d in deps:
                kids = children.get(d.task_id)
                if kids is None:
                    children[d.task_id] = [tid]
                else:
                    kids.append(tid)
        self.tasks: Mapping[str, PlannedTask] = tasks
        self.approval = frozenset(approval)
        self.roots = roots
        #: Each task's children, in run-config order (never changed after this).
        self.children: dict[str, list[str]] = children
        self._order: dict[str, int] | None = None
        self._by_level: tuple[str, ...] | None = None

    @property
    def order(self) -> dict[str, int]:
        """Each task's position in the run config."""
        order = self._order
        if order is None:
            order = self._order = {tid: i for i, tid in enumerate(self.tasks)}
        return order

    @property
    def by_level(self) -> tuple[str, ...]:
        """The tasks by level (a parent's is lower), in run-config order within a level."""
        by_level = self._by_level
        if by_level is None:
            tasks, order = self.tasks, self.order
            by_level = self._by_level = tuple(sorted(tasks, key=lambda tid: (tasks[tid].level, order[tid])))  # fmt: skip
        return by_level


_accepts_of: dict[tuple[DependCondition, ...], frozenset[TaskStatus]] = {}


def _accepted(conditions: tuple[DependCondition, ...]) -> frozenset[TaskStatus]:
    """The parent statuses a dependency with ``conditions`` accepts (shared per conditions)."""
    hit = _accepts_of.get(conditions)
    if hit is None:
        hit = frozenset(_ACCEPTS[c] for c in conditions) or _ON_SUCCESS
        _accepts_of[conditions] = hit
    return hit


#: graph_of's cache: run id (``config.id``) → (config, graph); hot paths read it directly. Keyed
#: by the run id, whose hash a string keeps, and checked by identity of the config: another config
#: object of the same run (a state read back, a test) only rebuilds the entry.
GRAPHS: dict[str, tuple[RunConfig, Graph]] = {}


def graph_of(config: RunConfig) -> Graph:
    """The graph of ``config`` (cached per run id for this config object; the cache is emptied
    when it holds ``_CACHE_MAX`` runs)."""
    hit = GRAPHS.get(config.id)
    if hit is not None and hit[0] is config:
        return hit[1]
    graph = Graph(config)
    if len(GRAPHS) >= _CACHE_MAX:
        GRAPHS.clear()
    GRAPHS[config.id] = (config, graph)
    return graph


def parents_ended(tasks: Mapping[str, RunTask], graph: Graph, tid: str) -> bool:
    """True when every parent of ``tid`` has a finished status (always for a root task)."""
    for d in graph.tasks[tid].depends:  # noqa: SIM110 - all() of a generator is slower here (hot path)
        if tasks[d.task_id].status not in _FINISHED:
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
    for d in graph.tasks[tid].depends:
        status = tasks[d.task_id].status
        if status not in _FINISHED:
            return None
        conditions = d.conditions
        if status not in (_accepted(conditions) if conditions else _ON_SUCCESS):
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
    # _judge, written out inline (once per task end: the hot path of most runs).
    children = graph.children
    todo = list(children.get(ended, _NO_IDS))
    ready: list[str] = []
    skipped = 0
    config = graph.tasks
    while todo:
        tid = todo.pop()
        t = tasks[tid]
        if t.status is not _NOTSTARTED or t.waiting_approval or tid in ready:
            continue
        holds = True
        for d in config[tid].depends:
            status = tasks[d.task_id].status
            if status not in _FINISHED:
                break
            conditions = d.conditions
            if status not in (_accepted(conditions) if conditions else _ON_SUCCESS):
                holds = False
        else:  # every parent has ended: judged now
            if not holds:
                tasks[tid] = replace(t, status=_SKIPPED, end_time=at)
                skipped += 1
                todo.extend(children.get(tid, _NO_IDS))
            elif tid in graph.approval and not t.approved:
                tasks[tid] = replace(t, waiting_approval=True)
            else:
                ready.append(tid)
    if len(ready) > 1:
        ready.sort(key=graph.order.__getitem__)
    return ready, skipped


def judge_at_start(tasks: dict[str, RunTask], graph: Graph, at: int) -> tuple[list[str], int]:
    """When the run starts: judge every task whose parents have all ended (the root tasks, and
    children of kept or ``skip`` tasks), skips cascading. Returns the ready tasks (in run-config
    order) and how many were skipped."""
    for t in tasks.values():
        if t.status is not _NOTSTARTED:
            return _judge_all(tasks, graph, at)
    # The usual run (nothing ended yet): only the roots can be due; skips cascade to children.
    ready: list[str] = []
    skipped = 0
    children = graph.children
    todo = graph.roots[::-1]
    while todo:
        tid = todo.pop()
        if _judge(tasks, graph, tid, at, ready):
            skipped += 1
            todo.extend(children.get(tid, _NO_IDS))
    if len(ready) > 1:
        ready.sort(key=graph.order.__getitem__)
    return ready, skipped


def _judge_all(tasks: dict[str, RunTask], graph: Graph, at: int) -> tuple[list[str], int]:
    """:func:`judge_at_start` when some task has ended already: every task, in level order, so
    that skips cascade in one pass."""
    ready: list[str] = []
    skipped = 0
    for tid in graph.by_level:
        if _judge(tasks, graph, tid, at, ready):
            skipped += 1
    if len(ready) > 1:
        ready.sort(key=graph.order.__getitem__)
    return ready, skipped
