"""runstream's run domain: pure types, events, codec and reducer (no I/O; stdlib, msgspec, orjson).

Modules: ``model`` (runs, tasks, configs), ``group`` (group paths), ``catalogue`` (event types and
the envelope), ``codec`` (bytes), ``upcast``, ``reducer`` (``apply``), ``checks`` (run-config
checks), ``recreate`` (restarting runs), ``state`` (``RunState``), ``errors``.
"""

from events.catalogue import (
    CURRENT_VERSIONS,
    SETUP_ERROR_RUN_NAME,
    CancelRequested,
    Event,
    EventType,
    Payload,
    PhaseChanged,
    RunCreated,
    SetupErrorsReported,
    StartRequested,
    StopRequested,
    TaskAnnotationsSet,
    TaskApproved,
    TaskStatusChanged,
    make_event,
)
from events.checks import check_create, check_tasks, task_levels
from events.codec import (
    DEFAULT_MAX_RECORD_SIZE,
    decode,
    decode_record,
    decode_state,
    encode,
    encode_commit,
    encode_state,
)
from events.errors import BadRequest, CannotRecreate, DecodeError, DecodeReason, EventsError
from events.group import (
    is_group_prefix,
    project_group,
    root_group,
    split_group,
    user_group,
    validate_group,
)
from events.ids import RUN_ID_WIDTH, format_run_id, is_run_id, parse_run_id
from events.model import (
    DependCondition,
    Phase,
    PlannedTask,
    Result,
    Run,
    RunConfig,
    RunConfigTask,
    RunTask,
    SetupError,
    TaskDepend,
    TaskStatus,
)
from events.recreate import can_recreate, recreate, recreated_task_id
from events.reducer import Applied, Outcome, Rejected, apply
from events.state import ID_GENERATION, RunState

__all__ = [
    "CURRENT_VERSIONS",
    "DEFAULT_MAX_RECORD_SIZE",
    "ID_GENERATION",
    "RUN_ID_WIDTH",
    "SETUP_ERROR_RUN_NAME",
    "Applied",
    "BadRequest",
    "CancelRequested",
    "CannotRecreate",
    "DecodeError",
    "DecodeReason",
    "DependCondition",
    "Event",
    "EventType",
    "EventsError",
    "Outcome",
    "Payload",
    "Phase",
    "PhaseChanged",
    "PlannedTask",
    "Rejected",
    "Result",
    "Run",
    "RunConfig",
    "RunConfigTask",
    "RunCreated",
    "RunState",
    "RunTask",
    "SetupError",
    "SetupErrorsReported",
    "StartRequested",
    "StopRequested",
    "TaskAnnotationsSet",
    "TaskApproved",
    "TaskDepend",
    "TaskStatus",
    "TaskStatusChanged",
    "apply",
    "can_recreate",
    "check_create",
    "check_tasks",
    "decode",
    "decode_record",
    "decode_state",
    "encode",
    "encode_commit",
    "encode_state",
    "format_run_id",
    "is_group_prefix",
    "is_run_id",
    "make_event",
    "parse_run_id",
    "project_group",
    "recreate",
    "recreated_task_id",
    "root_group",
    "split_group",
    "task_levels",
    "user_group",
    "validate_group",
]
