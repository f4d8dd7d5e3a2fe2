"""The event catalogue: the envelope and one typed payload per event type.

Every event type has a stable type string and a version (``CURRENT_VERSIONS``); a type is never
renamed and a version never reused. On the wire an event is the envelope
``{"type", "version", "id", "run_id", "at", "data"}`` (see ``events.codec``):

* ``id``: the event id, unique per run; the reducer ignores an id it has already applied.
* ``run_id``: the run's 16-digit text form (``events.ids``); the Kafka key.
* ``at``: integer milliseconds since the Unix epoch, UTC (exact through JSON).

Producers state facts and requests; only the reducer emits the derived types:

* ``run.phase_changed``, whose envelope carries the run id and time and whose payload carries
  group, phase, result and the per-run sequence number (1 at creation, then +1 at every phase or
  result change); id ``<run id>.phase.<seq>``;
* ``task.ready``: a task may be executed now (its parents ended and their conditions hold, it is
  approved if it needs approval, the run is not stopping). Each task is ready at most once; the
  payload carries the task id, its level and the per-run ready sequence number (1 for the first
  ready task of the run, then +1); id ``<run id>.ready.<seq>``.

Every payload and every envelope is a msgspec Struct. The envelope of each type is its own
Struct (``RunCreatedEvent``, ...), a subclass of :class:`Event` tagged with the type string: the
tag is the envelope's ``type`` key, so one tagged union decodes and validates a whole record (an
event or a commit) in one pass, and the encoded keys keep the order
``type, version, id, run_id, at, data``. ``event.type`` is the class's :class:`EventType`.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from msgspec import UNSET, Meta, UnsetType

from events.model import (
    Count,
    EnvelopeRunId,
    ExecutorId,
    Lease,
    Millis,
    Name,
    Phase,
    Result,
    RunConfigTask,
    RunId,
    SetupError,
    Shape,
    TaskStatus,
    Timeout,
)

__all__ = [
    "CURRENT_VERSIONS",
    "DEFAULT_LEASE_MS",
    "EVENT_TYPES",
    "PAYLOAD_TYPES",
    "SETUP_ERROR_RUN_NAME",
    "AnyEvent",
    "CancelRequested",
    "CancelRequestedEvent",
    "CreationFields",
    "Event",
    "EventType",
    "Payload",
    "PhaseChanged",
    "PhaseChangedEvent",
    "ReleaseReason",
    "RunCreated",
    "RunCreatedEvent",
    "SetupErrorsReported",
    "SetupErrorsReportedEvent",
    "StartRequested",
    "StartRequestedEvent",
    "StopRequested",
    "StopRequestedEvent",
    "TaskAnnotationsSet",
    "TaskAnnotationsSetEvent",
    "TaskApproved",
    "TaskApprovedEvent",
    "TaskClaimed",
    "TaskClaimedEvent",
    "TaskReady",
    "TaskReadyEvent",
    "TaskReleased",
    "TaskReleasedEvent",
    "TaskStatusChanged",
    "TaskStatusChangedEvent",
    "decision_id",
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
    TASK_CLAIMED = "task.claimed"
    TASK_RELEASED = "task.released"
    PHASE_CHANGED = "run.phase_changed"
    TASK_READY = "task.ready"

    def is_derived(self) -> bool:
        """True for events only the reducer emits (producers must not send them)."""
        return self is EventType.PHASE_CHANGED or self is EventType.TASK_READY


class CreationFields(Shape):
    """What a creation gives a new run, declared once: ``run.created``'s payload
    (:class:`RunCreated`), a creation request of ``runs.requests``
    (``events.requests.RunRequest``) and the body of ``POST /runs`` (``api.bodies.NewRun``) are
    these fields, in this order, plus their own. A run with ``setup_errors`` (or whose tasks
    fail the checks) is created in ``setuperror`` with no tasks."""

    name: Name
    group: str
    tasks: tuple[RunConfigTask, ...] = ()
    environment: Mapping[str, str] = {}
    static_environment: Mapping[str, str] = {}
    annotations: Mapping[str, str] = {}
    setup_errors: tuple[SetupError, ...] = ()


class RunCreated(CreationFields):
    """A new run from its tasks (the service builds the config and computes task levels).

    A run with ``setup_errors`` (or whose tasks fail the checks) is created in ``setuperror``
    with no tasks. For a recreation, ``recreated_from`` names the old run and ``kept_tasks``
    lists the ids of tasks that keep their success from it. ``counter`` is the run number in its
    root group, supplied by the producer (0 when unknown).
    """

    recreated_from: RunId | None = None
    kept_tasks: tuple[Name, ...] = ()
    counter: Count = 0
    timeout_ms: Timeout | UnsetType = UNSET  # the run's own timeout (issue 20); UNSET: none


#: The fields a creation request copies into its ``run.created``.
_CREATION_FIELDS = CreationFields.__struct_fields__


def run_created(req: CreationFields) -> RunCreated:
    """The ``run.created`` payload of a creation request (``POST /runs``'s body, a
    ``runs.requests`` record): its :class:`CreationFields`, no recreation, no run number yet."""
    return RunCreated(**{f: getattr(req, f) for f in _CREATION_FIELDS})


class SetupErrorsReported(Shape):
    """What the webhook receiver sends when a project's config does not parse: a run in
    ``setuperror`` named ``name`` (default ``Setup Error``) in ``group``."""

    group: str
    errors: tuple[SetupError, ...]
    name: Name = SETUP_ERROR_RUN_NAME
    static_environment: Mapping[str, str] = {}
    annotations: Mapping[str, str] = {}
    counter: Count = 0


class StartRequested(Shape):
    """The scheduler moves a queued run to running."""


class CancelRequested(Shape):
    """Cancel a queued run."""


class StopRequested(Shape):
    """Stop a running run (sets its stop flag). ``reason`` says why when the run service asked
    (``timeout``: the run ran past its own timeout); absent when a person or a producer asked."""

    reason: Annotated[str, Meta(max_length=200)] | UnsetType = UNSET


class TaskStatusChanged(Shape):
    """An executor reports a task's new status. ``executor_id`` names the executor: a report for
    a task another executor holds is refused, and one for an unclaimed ready task claims it. A
    report without it is accepted only for a task no executor holds."""

    task_id: Name
    status: TaskStatus
    executor_id: ExecutorId | UnsetType = UNSET


#: The lease of a claim that does not give one (and of a task claimed by a report).
DEFAULT_LEASE_MS = 30_000


class TaskClaimed(Shape):
    """Executor ``executor_id`` takes ready task ``task_id``: the first claim wins, the others are
    refused naming the holder. The claim holds while the executor heartbeats at least every
    ``lease_ms`` (``runs.heartbeats``); a claim by the holder again only renews its lease."""

    task_id: Name
    executor_id: ExecutorId
    lease_ms: Lease = DEFAULT_LEASE_MS


class ReleaseReason(StrEnum):
    """Why the run service took a task from its executor."""

    EXECUTOR_LOST = "executor_lost"  # the executor's lease lapsed: retried while retries remain
    TIMEOUT = "timeout"  # the task ran (or was held) past its timeout: it fails


class TaskReleased(Shape):
    """A decision the partition's owner took from time (never from a clock in the reducer):
    attempt ``attempt`` of task ``task_id``, held by ``executor_id`` ("" when no executor claimed
    it), is taken back. ``executor_lost``: back to ready while the task has retries left (the
    executor is refused for it from then on), else ``failed``; ``timeout``: ``failed``. Its id is
    :func:`decision_id`, so an owner that appends it twice has it applied once; a release that
    no longer matches the task (another attempt, another holder, ended) is refused."""

    task_id: Name
    executor_id: Annotated[str, Meta(max_length=200)]
    attempt: Annotated[int, Meta(ge=1)]
    reason: ReleaseReason


def decision_id(run_id: str, kind: str, task_id: str = "", attempt: int = 0) -> str:
    """The deterministic id of an event the owner appends from a decision on time:
    ``<run>.release.<attempt>.<task>`` (``kind`` = ``release``, both reasons share it: a task's
    attempt is released once) or ``<run>.timeout`` (the run's own timeout: ``kind`` =
    ``timeout``)."""
    if kind == "timeout":
        return f"{run_id}.timeout"
    return f"{run_id}.{kind}.{attempt}.{task_id}"


class TaskApproved(Shape):
    """Someone approved a task that waits for approval."""

    task_id: Name


class TaskAnnotationsSet(Shape):
    """Replace a task's annotations (approval metadata such as ``approvers``)."""

    task_id: Name
    annotations: Mapping[str, str]


class PhaseChanged(Shape, omit_defaults=True):
    """Derived: the run's phase or result changed. ``seq`` goes up by one per run, from 1.

    The first change (seq 1) also carries the run's ``name`` and ``counter``, so the index can
    list them; later ones omit both (and so does every change written before they existed:
    ``omit_defaults`` keeps those bytes as they were)."""

    group: str
    phase: Phase
    result: Result
    seq: Annotated[int, Meta(ge=1)]
    name: Annotated[str, Meta(description="the run's name; only at seq 1")] = ""
    counter: Annotated[Count, Meta(description="the run's number; only at seq 1, 0 = none")] = 0


class TaskReady(Shape):
    """Derived: task ``task_id`` (at ``level``) may be executed now. ``seq`` goes up by one per
    run, from 1, independently of ``run.phase_changed``'s."""

    task_id: Name
    level: Count
    seq: Annotated[int, Meta(ge=1)]


Payload = (
    RunCreated
    | SetupErrorsReported
    | StartRequested
    | CancelRequested
    | StopRequested
    | TaskStatusChanged
    | TaskApproved
    | TaskAnnotationsSet
    | TaskClaimed
    | TaskReleased
    | PhaseChanged
    | TaskReady
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
    EventType.TASK_CLAIMED: TaskClaimed,
    EventType.TASK_RELEASED: TaskReleased,
    EventType.PHASE_CHANGED: PhaseChanged,
    EventType.TASK_READY: TaskReady,
}

#: The version each type is written with today; decoding upcasts older versions to it.
CURRENT_VERSIONS: Mapping[EventType, int] = dict.fromkeys(EventType, 1)


class Event(Shape, tag_field="type"):
    """The envelope: ``data`` is the payload of ``type`` at ``version``; ``at`` is ms since epoch.

    Abstract: every event is an instance of the subclass of its type (see :func:`make_event`).
    """

    type: ClassVar[EventType]
    version: int
    id: Name
    run_id: EnvelopeRunId  # its digits are checked by events.codec
    at: Millis
    data: Payload


# One envelope per type; ``version`` is the current one (older ones are upcast before decoding).
class RunCreatedEvent(Event, tag="run.created"):
    type: ClassVar[EventType] = EventType.RUN_CREATED
    version: Literal[1]
    data: RunCreated


class SetupErrorsReportedEvent(Event, tag="run.setup_errors_reported"):
    type: ClassVar[EventType] = EventType.SETUP_ERRORS_REPORTED
    version: Literal[1]
    data: SetupErrorsReported


class StartRequestedEvent(Event, tag="run.start_requested"):
    type: ClassVar[EventType] = EventType.START_REQUESTED
    version: Literal[1]
    data: StartRequested


class CancelRequestedEvent(Event, tag="run.cancel_requested"):
    type: ClassVar[EventType] = EventType.CANCEL_REQUESTED
    version: Literal[1]
    data: CancelRequested


class StopRequestedEvent(Event, tag="run.stop_requested"):
    type: ClassVar[EventType] = EventType.STOP_REQUESTED
    version: Literal[1]
    data: StopRequested


class TaskStatusChangedEvent(Event, tag="task.status_changed"):
    type: ClassVar[EventType] = EventType.TASK_STATUS_CHANGED
    version: Literal[1]
    data: TaskStatusChanged


class TaskApprovedEvent(Event, tag="task.approved"):
    type: ClassVar[EventType] = EventType.TASK_APPROVED
    version: Literal[1]
    data: TaskApproved


class TaskAnnotationsSetEvent(Event, tag="task.annotations_set"):
    type: ClassVar[EventType] = EventType.TASK_ANNOTATIONS_SET
    version: Literal[1]
    data: TaskAnnotationsSet


class TaskClaimedEvent(Event, tag="task.claimed"):
    type: ClassVar[EventType] = EventType.TASK_CLAIMED
    version: Literal[1]
    data: TaskClaimed


class TaskReleasedEvent(Event, tag="task.released"):
    type: ClassVar[EventType] = EventType.TASK_RELEASED
    version: Literal[1]
    data: TaskReleased


class PhaseChangedEvent(Event, tag="run.phase_changed"):
    type: ClassVar[EventType] = EventType.PHASE_CHANGED
    version: Literal[1]
    data: PhaseChanged


class TaskReadyEvent(Event, tag="task.ready"):
    type: ClassVar[EventType] = EventType.TASK_READY
    version: Literal[1]
    data: TaskReady


#: Every event, as a tagged union on ``type`` (what the codec decodes).
AnyEvent = (
    RunCreatedEvent
    | SetupErrorsReportedEvent
    | StartRequestedEvent
    | CancelRequestedEvent
    | StopRequestedEvent
    | TaskStatusChangedEvent
    | TaskApprovedEvent
    | TaskAnnotationsSetEvent
    | TaskClaimedEvent
    | TaskReleasedEvent
    | PhaseChangedEvent
    | TaskReadyEvent
)

#: The envelope class of each type.
EVENT_TYPES: Mapping[EventType, type[AnyEvent]] = {
    cls.type: cls
    for cls in (
        RunCreatedEvent,
        SetupErrorsReportedEvent,
        StartRequestedEvent,
        CancelRequestedEvent,
        StopRequestedEvent,
        TaskStatusChangedEvent,
        TaskApprovedEvent,
        TaskAnnotationsSetEvent,
        TaskClaimedEvent,
        TaskReleasedEvent,
        PhaseChangedEvent,
        TaskReadyEvent,
    )
}
_EVENT_OF = {PAYLOAD_TYPES[t]: cls for t, cls in EVENT_TYPES.items()}


def make_event(data: Payload, *, id: str, run_id: str, at: int) -> Event:
    """An event carrying ``data``, with the type and current version that go with its class."""
    cls = _EVENT_OF[type(data)]
    return cls(version=CURRENT_VERSIONS[cls.type], id=id, run_id=run_id, at=at, data=data)  # type: ignore[arg-type]
