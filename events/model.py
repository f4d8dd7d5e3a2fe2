"""The run domain (Agola's runservice types): phases, results, tasks, run configs and runs.

Every shape is a msgspec Struct below :class:`Shape` (frozen, keyword-only, unknown fields refused:
the options are set there, once; constraints in ``Annotated[..., Meta(...)]``): this module is the
one declaration the codec decodes and validates with, and the JSON Schemas come from. Times are
integer milliseconds since the Unix epoch, UTC (``None`` when not reached yet): they round-trip
exactly through JSON and compare as numbers.

Mappings held by these types are plain ``dict`` objects typed ``Mapping``: nothing in ``events``
mutates them after construction, and callers must not either.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, dataclass_transform

from msgspec import UNSET, Meta, Struct, StructMeta, UnsetType, field

__all__ = [
    "RUN_ID_PATTERN",
    "Count",
    "DependCondition",
    "EnvelopeRunId",
    "ExecutorId",
    "Lease",
    "Millis",
    "Name",
    "OpenShape",
    "Phase",
    "PlannedTask",
    "Result",
    "Run",
    "RunConfig",
    "RunConfigTask",
    "RunId",
    "RunTask",
    "SetupError",
    "Shape",
    "Step",
    "TaskDepend",
    "TaskStatus",
    "Timeout",
    "attempt_of",
    "holder_of",
    "retries_of",
]

#: A task step is opaque to the run service (executors interpret it): a JSON object.
Step = Mapping[str, Any]

_INT64 = 2**63 - 1  # what every JSON reader can hold exactly (and what the state writer takes)
#: A non-empty string (ids and names).
Name = Annotated[str, Meta(min_length=1)]
#: A non-negative count or number.
Count = Annotated[int, Meta(ge=0, le=_INT64)]
#: Integer milliseconds since the Unix epoch, UTC.
Millis = Annotated[int, Meta(ge=0, le=_INT64, description="milliseconds since the Unix epoch, UTC")]
#: What a run id's text form matches. No "$": Python's matches before a final newline
#: ("000000000000001\n" would pass); sixteen digits from the start of a 16-character string is the
#: whole string.
RUN_ID_PATTERN = "^(?!0{16})[0-9]{16}"
_RUN_ID_DOC = "16 decimal digits, not all zero (events.ids)"
#: A run id's text form (``events.ids``): 16 decimal digits, not all zero.
RunId = Annotated[
    str, Meta(min_length=16, max_length=16, pattern=RUN_ID_PATTERN, description=_RUN_ID_DOC)
]
#: The ``run_id`` of every event's envelope: the same schema as :data:`RunId`, but the decoder
#: checks only the length and ``events.codec`` checks the digits (``events.ids.is_run_id``): the
#: regular expression msgspec runs for a pattern cost 0.6 µs, more than half the decoding of a
#: task event (1.1 µs → 0.5 µs without it, ``bench/bench_events.py``).
EnvelopeRunId = Annotated[
    str,
    Meta(
        min_length=16,
        max_length=16,
        extra_json_schema={"pattern": RUN_ID_PATTERN},
        description=_RUN_ID_DOC,
    ),
]


#: An executor's id: printable ASCII without spaces, the same for all its claims and heartbeats.
ExecutorId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        pattern="^[!-~]+(?![\\s\\S])",  # the end of the string in every dialect (not "$")
        description="an executor's id: printable ASCII without spaces",
    ),
]
#: How long an executor's claim holds without a heartbeat, in milliseconds (1 s to 1 h).
Lease = Annotated[
    int, Meta(ge=1_000, le=3_600_000, description="milliseconds a claim holds without a heartbeat")
]
#: A timeout in milliseconds (1 ms to 30 days).
Timeout = Annotated[int, Meta(ge=1, le=30 * 86_400_000, description="milliseconds")]


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


class _KwOnly(StructMeta):
    """Makes ``kw_only`` the default of every Struct below :class:`Shape` and
    :class:`OpenShape`: msgspec inherits ``frozen`` and ``forbid_unknown_fields`` from a base
    class, but ``kw_only`` applies to the fields a class declares itself (``msgspec.StructMeta``
    documents this way to change the default).

    And ``gc=False``: the cycle collector does not track shapes. Every shape is frozen, so a
    shape can only refer to what existed before it: shapes form no reference cycle, and
    reference counting frees each one. Tracked, they were most of what a worker allocates (a
    run's new state is a few shapes per event), so every young collection walked thousands of
    them and a dict holding them stayed tracked: applying a replay's records ran 13 % faster
    untracked (130,800 → 149,100 events/s, ``PartitionMaterializer.apply_record`` alone), and
    the worker's longest pauses for a collection under load fell from 30-60 ms to ~20 ms.
    A shape must never be put inside a mutable container it refers to (a dict or a list field):
    that cycle would never be freed."""

    def __new__(
        mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **config: Any
    ) -> Any:
        config.setdefault("kw_only", True)
        config.setdefault("gc", False)
        return super().__new__(mcls, name, bases, namespace, **config)


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(field,))
class Shape(Struct, metaclass=_KwOnly, frozen=True, forbid_unknown_fields=True):
    """The base of every shape runstream decodes: frozen, keyword-only, unknown fields refused
    (a typo must not pass silently). A subclass states only what is its own: ``tag``,
    ``tag_field``, ``omit_defaults``..."""


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(field,))
class OpenShape(Struct, metaclass=_KwOnly, frozen=True):
    """Frozen and keyword-only like :class:`Shape`, but unknown fields are ignored: answers a
    reader must take from a newer writer (an error body, a dead letter), and values that never
    leave the process."""


class SetupError(Shape):
    """Why a run could not be set up; ``task_ids`` names the tasks involved, if any."""

    message: str
    task_ids: tuple[Name, ...] = ()


class TaskDepend(Shape):
    """A dependency of a task on ``task_id``."""

    task_id: Name
    conditions: tuple[DependCondition, ...] = ()


class RunConfigTask(Shape):
    """The definition of one task, as submitted (``run.created``, ``POST /runs``).

    ``level`` is computed by the service: it is 0 here and set in the run config's
    :class:`PlannedTask`; a submitted task never carries one.
    """

    id: Name
    name: Name
    depends: tuple[TaskDepend, ...] = ()
    environment: Mapping[str, str] = {}
    steps: tuple[Step, ...] = ()
    ignore_failure: bool = False
    needs_approval: bool = False
    skip: bool = False
    # Optional since issue 20: left out of the encoded form when not given (UNSET), so runs
    # created before keep their bytes. ``retries``: how many times a task whose executor was
    # lost goes back to ready (default 0); ``timeout_ms``: a task running (or claimed) longer
    # ends failed with the reason ``timeout``.
    retries: Annotated[int, Meta(ge=0, le=100)] | UnsetType = UNSET
    timeout_ms: Timeout | UnsetType = UNSET

    @property
    def level(self) -> int:
        return 0


class PlannedTask(RunConfigTask):
    """A task of a run config: its definition and its ``level`` (0 = no parents)."""

    level: Count = 0


class RunConfig(Shape):
    """The non-state definition of a run; its ``id`` is the run id.

    ``static_environment`` (what the git event produced) never changes on recreation;
    ``environment`` is replaced at every recreation and overrides the rest. ``tasks`` keeps the
    submitted order. ``recreated_from`` is the run this one was recreated from, if any.
    """

    id: RunId
    name: Name
    group: str
    setup_errors: tuple[SetupError, ...] = ()
    annotations: Mapping[str, str] = {}
    static_environment: Mapping[str, str] = {}
    environment: Mapping[str, str] = {}
    tasks: Mapping[str, PlannedTask] = {}
    recreated_from: RunId | None = None
    #: A run running longer than this is asked to stop (issue 20); UNSET: no limit.
    timeout_ms: Timeout | UnsetType = UNSET


class RunTask(Shape):
    """The state of one task of a run."""

    id: Name
    status: TaskStatus = TaskStatus.NOTSTARTED
    skip: bool = False
    waiting_approval: bool = False
    approved: bool = False
    annotations: Mapping[str, str] = {}
    start_time: Millis | None = None
    end_time: Millis | None = None
    # Who holds the task (issue 20), left out of the encoded form while UNSET so that states
    # written before keep their bytes. ``holder``: the executor that claimed it (or reported it
    # first); ``lease_ms`` / ``claim_time``: its claim; ``attempt``: 2, 3, ... once an executor
    # lost it and it went back to ready (UNSET: the first); ``released``: executors that lost
    # it (refused from then on); ``reason``: why the run service ended it (``executor_lost``,
    # ``timeout``).
    holder: ExecutorId | UnsetType = UNSET
    lease_ms: Lease | UnsetType = UNSET
    claim_time: Millis | UnsetType = UNSET
    attempt: Annotated[int, Meta(ge=2)] | UnsetType = UNSET
    released: tuple[ExecutorId, ...] | UnsetType = UNSET
    reason: str | UnsetType = UNSET


def holder_of(task: RunTask) -> str:
    """The executor holding ``task`` ("" when none claimed it)."""
    h = task.holder
    return "" if h is UNSET else h


def attempt_of(task: RunTask) -> int:
    """The number of the task's current attempt (1 until an executor lost it)."""
    a = task.attempt
    return 1 if a is UNSET else a


def retries_of(task: RunConfigTask) -> int:
    """How many times the task goes back to ready when its executor is lost (default 0)."""
    r = task.retries
    return 0 if r is UNSET else r


class Run(Shape):
    """The state of a run.

    ``counter`` is the run's number inside its root group; it is supplied by the producer (0
    when unknown) because the materializer owns only some partitions and cannot count across
    them. ``stop`` is set by a stop request.
    """

    id: RunId
    name: Name
    group: str
    counter: Count = 0
    annotations: Mapping[str, str] = {}
    phase: Phase = Phase.QUEUED
    result: Result = Result.UNKNOWN
    stop: bool = False
    tasks: Mapping[str, RunTask] = {}
    enqueue_time: Millis | None = None
    start_time: Millis | None = None
    end_time: Millis | None = None

    def tasks_finished(self) -> bool:
        """True when every task has a finished status (vacuously true without tasks)."""
        return all(t.status in FINISHED_TASK_STATUSES for t in self.tasks.values())
