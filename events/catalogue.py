"""The event catalogue: the envelope and one typed payload per event type.

Every event type has a stable type string and a version (``CURRENT_VERSIONS``); a type is never
renamed and a version never reused. On the wire an event is the envelope
``{"type", "version", "id", "run_id", "at", "data"}`` (see ``events.codec``):

* ``id``: the event id, unique per run; the reducer ignores an id it has already applied.
* ``run_id``: the run's 16-digit text form (``events.ids``); the Kafka key.
* ``at``: integer milliseconds since the Unix epoch, UTC (exact through JSON).

Producers state facts and requests; only the reducer emits ``run.phase_changed``, whose envelope
carries the run id and time and whose payload carries group, phase, result and the per-run
sequence number (1 at creation, then +1 at every phase or result change).

Payloads are frozen keyword-only dataclasses without slots (the codec builds them from the
decoded dict in one call, see ``events._fast``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from events.model import Phase, Result, RunConfigTask, SetupError, TaskStatus

__all__ = [
    "CURRENT_VERSIONS",
    "PAYLOAD_TYPES",
    "SETUP_ERROR_RUN_NAME",
    "CancelRequested",
    "Event",
    "EventType",
    "Payload",
    "PhaseChanged",
    "RunCreated",
    "SetupErrorsReported",
    "StartRequested",
    "StopRequested",
    "TaskAnnotationsSet",
    "TaskApproved",
    "TaskStatusChanged",
    "make_event",
]

#: The name of the run a webhook receiver creates when a project's config does not parse.
SETUP_ERROR_RUN_NAME = "Setup Error"


class EventType(StrEnum):
    RUN_CREATED = "run.created"
    SETUP_ERRORS_REPORTED = "run.setup_errors_reported"
    START_REQUESTED = "run.start_requested"
    CANCEL_REQUESTED = "run.cancel_requested"
    STOP_REQUESTED = "run.stop_requested"
    TASK_STATUS_CHANGED = "task.status_changed"
    TASK_APPROVED = "task.approved"
    TASK_ANNOTATIONS_SET = "task.annotations_set"
    PHASE_CHANGED = "run.phase_changed"

    def is_derived(self) -> bool:
        """True for events only the reducer emits (producers must not send them)."""
        return self is EventType.PHASE_CHANGED


@dataclass(frozen=True, kw_only=True)
class RunCreated:
    """A new run from its tasks (the service builds the config and computes task levels).

    A run with ``setup_errors`` (or whose tasks fail the checks) is created in ``setuperror``
    with no tasks. For a recreation, ``recreated_from`` names the old run and ``kept_tasks``
    lists the ids of tasks that keep their success from it. ``counter`` is the run number in its
    root group, supplied by the producer (0 when unknown).
    """

    name: str
    group: str
    tasks: tuple[RunConfigTask, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    static_environment: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    setup_errors: tuple[SetupError, ...] = ()
    recreated_from: str | None = None
    kept_tasks: tuple[str, ...] = ()
    counter: int = 0


@dataclass(frozen=True, kw_only=True)
class SetupErrorsReported:
    """What the webhook receiver sends when a project's config does not parse: a run in
    ``setuperror`` named ``name`` (default ``Setup Error``) in ``group``."""

    group: str
    errors: tuple[SetupError, ...]
    name: str = SETUP_ERROR_RUN_NAME
    static_environment: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    counter: int = 0


@dataclass(frozen=True, kw_only=True)
class StartRequested:
    """The scheduler moves a queued run to running."""


@dataclass(frozen=True, kw_only=True)
class CancelRequested:
    """Cancel a queued run."""


@dataclass(frozen=True, kw_only=True)
class StopRequested:
    """Stop a running run (sets its stop flag)."""


@dataclass(frozen=True, kw_only=True)
class TaskStatusChanged:
    """An executor reports a task's new status."""

    task_id: str
    status: TaskStatus


@dataclass(frozen=True, kw_only=True)
class TaskApproved:
    """Someone approved a task that waits for approval."""

    task_id: str


@dataclass(frozen=True, kw_only=True)
class TaskAnnotationsSet:
    """Replace a task's annotations (approval metadata such as ``approvers``)."""

    task_id: str
    annotations: Mapping[str, str]


@dataclass(frozen=True, kw_only=True)
class PhaseChanged:
    """Derived: the run's phase or result changed. ``seq`` goes up by one per run, from 1."""

    group: str
    phase: Phase
    result: Result
    seq: int


Payload = (
    RunCreated
    | SetupErrorsReported
    | StartRequested
    | CancelRequested
    | StopRequested
    | TaskStatusChanged
    | TaskApproved
    | TaskAnnotationsSet
    | PhaseChanged
)

PAYLOAD_TYPES: Mapping[EventType, type[Payload]] = {
    EventType.RUN_CREATED: RunCreated,
    EventType.SETUP_ERRORS_REPORTED: SetupErrorsReported,
    EventType.START_REQUESTED: StartRequested,
    EventType.CANCEL_REQUESTED: CancelRequested,
    EventType.STOP_REQUESTED: StopRequested,
    EventType.TASK_STATUS_CHANGED: TaskStatusChanged,
    EventType.TASK_APPROVED: TaskApproved,
    EventType.TASK_ANNOTATIONS_SET: TaskAnnotationsSet,
    EventType.PHASE_CHANGED: PhaseChanged,
}
_TYPE_OF = {cls: t for t, cls in PAYLOAD_TYPES.items()}

#: The version each type is written with today; decoding upcasts older versions to it.
CURRENT_VERSIONS: Mapping[EventType, int] = dict.fromkeys(EventType, 1)


@dataclass(frozen=True, kw_only=True)
class Event:
    """The envelope: ``data`` is the payload of ``type`` at ``version``; ``at`` is ms since epoch."""

    type: EventType
    version: int
    id: str
    run_id: str
    at: int
    data: Payload


def make_event(data: Payload, *, id: str, run_id: str, at: int) -> Event:
    """An event carrying ``data``, with the type and current version that go with its class."""
    kind = _TYPE_OF[type(data)]
    return Event(type=kind, version=CURRENT_VERSIONS[kind], id=id, run_id=run_id, at=at, data=data)
