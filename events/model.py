"""The run domain (Agola's runservice types): phases, results, tasks, run configs and runs.

Times are integer milliseconds since the Unix epoch, UTC (``None`` when not reached yet): they
round-trip exactly through JSON and compare as numbers.

Every type is a frozen, keyword-only dataclass, deliberately *without* slots (STYLE.md asks for
slots; this package is the exception, for speed): the codec and the reducer build several of these
per event, and an instance with a ``__dict__`` is built or copied by installing a ready dict
(``events._fast``: ``build`` / ``evolve``, and in the hot paths the class's own ``__dict__``
descriptor from ``dict_setter``), where a slots instance costs one ``object.__setattr__`` per
field. Measured on the 2-core CI machine (Python 3.11), a ``RunTask`` built and freed: ~890 ns
through ``__init__``, ~310 ns with ``build``, ~190 ns copied with one field changed. They are
still immutable through the normal API.

Mappings held by these types are plain ``dict`` objects typed ``Mapping``: nothing in ``events``
mutates them after construction, and callers must not either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "DependCondition",
    "Phase",
    "Result",
    "Run",
    "RunConfig",
    "RunConfigTask",
    "RunTask",
    "SetupError",
    "Step",
    "TaskDepend",
    "TaskStatus",
]

#: A task step is opaque to the run service (executors interpret it): a JSON object.
Step = Mapping[str, object]


class Phase(StrEnum):
    """A run's phase. ``setuperror``, ``cancelled`` and ``finished`` are final."""

    SETUPERROR = "setuperror"
    QUEUED = "queued"
    CANCELLED = "cancelled"
    RUNNING = "running"
    FINISHED = "finished"

    def is_final(self) -> bool:
        return self in _FINAL_PHASES


_FINAL_PHASES = frozenset({Phase.SETUPERROR, Phase.CANCELLED, Phase.FINISHED})


class Result(StrEnum):
    """A run's result, independent of its phase (a running run can already be failed)."""

    UNKNOWN = "unknown"
    STOPPED = "stopped"
    SUCCESS = "success"
    FAILED = "failed"

    def is_set(self) -> bool:
        return self is not Result.UNKNOWN


class TaskStatus(StrEnum):
    """A run task's status; every status but ``notstarted`` and ``running`` is finished."""

    NOTSTARTED = "notstarted"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    RUNNING = "running"
    STOPPED = "stopped"
    SUCCESS = "success"
    FAILED = "failed"

    def is_finished(self) -> bool:
        return self in FINISHED_TASK_STATUSES


FINISHED_TASK_STATUSES = frozenset(
    {
        TaskStatus.SKIPPED,
        TaskStatus.CANCELLED,
        TaskStatus.STOPPED,
        TaskStatus.SUCCESS,
        TaskStatus.FAILED,
    }
)


class DependCondition(StrEnum):
    """When a dependency lets its child run. No condition at all means ``on_success``."""

    ON_SUCCESS = "on_success"
    ON_FAILURE = "on_failure"
    ON_SKIPPED = "on_skipped"

    def matches(self, parent: TaskStatus) -> bool:
        """True when a parent that ended with status ``parent`` satisfies this condition."""
        return _CONDITION_STATUS[self] is parent


_CONDITION_STATUS = {
    DependCondition.ON_SUCCESS: TaskStatus.SUCCESS,
    DependCondition.ON_FAILURE: TaskStatus.FAILED,
    DependCondition.ON_SKIPPED: TaskStatus.SKIPPED,
}


@dataclass(frozen=True, kw_only=True)
class SetupError:
    """Why a run could not be set up; ``task_ids`` names the tasks involved, if any."""

    message: str
    task_ids: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class TaskDepend:
    """A dependency of a task on ``task_id``."""

    task_id: str
    conditions: tuple[DependCondition, ...] = ()


@dataclass(frozen=True, kw_only=True)
class RunConfigTask:
    """The definition of one task. ``level`` is computed by the service (0 = no parents)."""

    id: str
    name: str
    depends: tuple[TaskDepend, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    steps: tuple[Step, ...] = ()
    ignore_failure: bool = False
    needs_approval: bool = False
    skip: bool = False
    level: int = 0


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The non-state definition of a run; its ``id`` is the run id.

    ``static_environment`` (what the git event produced) never changes on recreation;
    ``environment`` is replaced at every recreation and overrides the rest. ``tasks`` keeps the
    submitted order. ``recreated_from`` is the run this one was recreated from, if any.
    """

    id: str
    name: str
    group: str
    setup_errors: tuple[SetupError, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    static_environment: Mapping[str, str] = field(default_factory=dict)
    environment: Mapping[str, str] = field(default_factory=dict)
    tasks: Mapping[str, RunConfigTask] = field(default_factory=dict)
    recreated_from: str | None = None


@dataclass(frozen=True, kw_only=True)
class RunTask:
    """The state of one task of a run."""

    id: str
    status: TaskStatus = TaskStatus.NOTSTARTED
    skip: bool = False
    waiting_approval: bool = False
    approved: bool = False
    annotations: Mapping[str, str] = field(default_factory=dict)
    start_time: int | None = None
    end_time: int | None = None


@dataclass(frozen=True, kw_only=True)
class Run:
    """The state of a run.

    ``counter`` is the run's number inside its root group; it is supplied by the producer (0
    when unknown) because the materializer owns only some partitions and cannot count across
    them. ``stop`` is set by a stop request.
    """

    id: str
    name: str
    group: str
    counter: int = 0
    annotations: Mapping[str, str] = field(default_factory=dict)
    phase: Phase = Phase.QUEUED
    result: Result = Result.UNKNOWN
    stop: bool = False
    tasks: Mapping[str, RunTask] = field(default_factory=dict)
    enqueue_time: int | None = None
    start_time: int | None = None
    end_time: int | None = None

    def tasks_finished(self) -> bool:
        """True when every task has a finished status (vacuously true without tasks)."""
        return all(t.status in FINISHED_TASK_STATUSES for t in self.tasks.values())
