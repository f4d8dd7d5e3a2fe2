"""The API's request shapes as msgspec Structs: the one declaration the server decodes and
validates with (in one pass) and the OpenAPI components are generated from (``api.openapi``).

Bodies are JSON objects; unknown fields are refused (a typo must not pass silently). Every 400
names the field path and what was expected: msgspec's message (``Expected `str`, got `int` - at
`$.name```), completed with the accepted values or fields where msgspec leaves them out. The
task and setup-error shapes are the events' own (``RunConfigTask``, ``SetupError``); a group is
checked by ``events.validate_group``, as for events, and a listing's group prefix by
``events.group.validate_group_prefix``.

Queries are strict: a parameter the route does not know, one given twice that is not documented
as repeatable (only ``GET /runs``'s ``group``, ``phase`` and ``result`` are), and an integer
written in any form but plain decimal digits (``1e0``, ``2.0``, ``+3``, `` 3``) are 400 naming
the parameter.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any, ClassVar, get_args, get_origin

import msgspec
from msgspec import UNSET, Meta, UnsetType, field
from msgspec.structs import force_setattr

from api.errors import BadRequest
from events import (
    SETUP_ERROR_RUN_NAME,
    Phase,
    Result,
    SetupError,
    TaskStatus,
    is_run_id,
    validate_group,
)
from events.catalogue import CreationFields
from events.errors import BadRequest as EventsBadRequest
from events.errors import validation_message
from events.executors import DEFAULT_LEASE_MS, MAX_EXECUTOR_ID, ExecutorId, LeaseMs
from events.group import Group, GroupPrefix, validate_group_prefix
from events.model import Lease, Name, RunId, Shape
from indexer import DEFAULT_LIMIT, MAX_LIMIT, Order

__all__ = [
    "CURSOR_PATTERN",
    "REQUEST_TYPES",
    "ApproveTask",
    "ClaimTask",
    "CreateRequest",
    "Cursor",
    "HeartbeatRequest",
    "IdempotencyKey",
    "IfMatch",
    "Limit",
    "ListQuery",
    "NewRun",
    "RecreateRequest",
    "RecreateRun",
    "ReportStatus",
    "RunAction",
    "RunActionRequest",
    "SetTaskAnnotations",
    "StuckQuery",
    "TaskAction",
    "TaskActionRequest",
    "parse_claim",
    "parse_create",
    "parse_events_query",
    "parse_expected_seq",
    "parse_heartbeat",
    "parse_idempotency_key",
    "parse_list_query",
    "parse_report",
    "parse_run_action",
    "parse_stuck_query",
    "parse_task_action",
    "require_executor_id",
    "require_run_id",
]


class RunAction(StrEnum):
    START = "start"
    CANCEL = "cancel"
    STOP = "stop"


class TaskAction(StrEnum):
    APPROVE = "approve"
    SET_ANNOTATIONS = "setannotations"

    def needs_annotations(self) -> bool:
        return self is TaskAction.SET_ANNOTATIONS


# -- scalars -------------------------------------------------------------------------------------

#: A listing cursor as ``indexer.cursor`` writes it: base64url (no padding) of version 1, the
#: order byte (0 or 1) and a run id; ``tests/unit/test_api_bodies.py`` keeps the two in step.
CURSOR_PATTERN = "^AQ[A-H][A-Za-z0-9_-]{10}[AQgw]$"
Cursor = Annotated[
    str,
    Meta(
        pattern=CURSOR_PATTERN,
        description="`next_cursor` of the previous page, listed in the same order",
    ),
]
Limit = Annotated[
    int,
    Meta(
        ge=1,
        le=MAX_LIMIT,
        description=f"page size, 1 to {MAX_LIMIT} in decimal digits; 0 and any other form "
        "(`1e0`, `2.0`, `+3`) are refused (400)",
    ),
]
IfMatch = Annotated[
    str,
    Meta(
        pattern='^(?:"[0-9]{1,10}"|[0-9]{1,10})$',
        description='expected revision, `"<seq>"` as in the run\'s ETag (quotes optional)',
    ),
]
#: Visible ASCII, spaces only inside: HTTP strips a header value's outer whitespace.
IdempotencyKey = Annotated[
    str, Meta(min_length=1, max_length=200, pattern="^[!-~](?:[ -~]*[!-~])?$")
]


# -- bodies --------------------------------------------------------------------------------------


# The creation fields of every creation (events.catalogue.CreationFields), three of them taken in
# a wider form: ``group`` documented with its pattern, ``name`` optional, a setup error a message
# too. Made (decoded, or built by a client), a NewRun holds setup errors as SetupError and, when
# it has setup errors, a name; the server then checks it (``check``, by ``parse_create``), after
# which it is a CreationFields like any other. A client sends it unchecked: the server judges.
class NewRun(CreationFields):
    """A new run from its tasks. ``name`` is required unless ``setup_errors`` is given (then it
    defaults to ``Setup Error``); a run needs tasks or setup errors. Inconsistent tasks, or setup
    errors, give a run in phase ``setuperror`` (still 201). A setup error is a message or
    ``{"message", "task_ids"}``."""

    name: Name | UnsetType = UNSET  # type: ignore[assignment]  # a name once checked
    group: Group
    setup_errors: tuple[str | SetupError, ...] = ()  # type: ignore[assignment]  # SetupError once made

    #: What :meth:`check` checks beyond the fields, for the JSON Schema.
    JSON_SCHEMA_RULES: ClassVar[dict[str, Any]] = {
        "anyOf": [
            {"required": ["name", "tasks"], "properties": {"tasks": {"minItems": 1}}},
            {"required": ["setup_errors"], "properties": {"setup_errors": {"minItems": 1}}},
        ]
    }

    def __post_init__(self) -> None:
        if self.name is UNSET and self.setup_errors:
            force_setattr(self, "name", SETUP_ERROR_RUN_NAME)
        if any(isinstance(e, str) for e in self.setup_errors):
            errors = (SetupError(message=e) if isinstance(e, str) else e for e in self.setup_errors)
            force_setattr(self, "setup_errors", tuple(errors))

    def check(self) -> None:
        """400 naming the field unless the group is one, the run has tasks or setup errors, and
        a name (given, or the default of a setup-error run)."""
        try:
            validate_group(self.group)
        except EventsBadRequest as exc:
            raise BadRequest(f"invalid request body: {exc} - at `$.group`") from None
        if not self.tasks and not self.setup_errors:
            raise BadRequest("invalid request body: run has neither tasks nor setup errors - at `$.tasks`")  # fmt: skip
        if self.name is UNSET:
            raise BadRequest("invalid request body: field 'name' is required unless setup_errors is given - at `$`")  # fmt: skip


class RecreateRun(Shape):
    """A new run made from a finished one: successful tasks are kept (all renewed with
    ``from_start``), ``environment`` replaces the old one."""

    run_id: RunId
    from_start: bool = False
    environment: Mapping[str, str] = {}


class RunActionRequest(Shape):
    """start (queued → running), cancel (queued), stop (running)."""

    action_type: RunAction


class ApproveTask(Shape, tag_field="action_type", tag="approve"):
    """Approve a task that waits for approval."""

    action: ClassVar[TaskAction] = TaskAction.APPROVE

    @property
    def annotations(self) -> Mapping[str, str]:
        return {}


class SetTaskAnnotations(Shape, tag_field="action_type", tag="setannotations"):
    """Replace a task's annotations."""

    action: ClassVar[TaskAction] = TaskAction.SET_ANNOTATIONS
    annotations: Mapping[str, str]


class HeartbeatRequest(Shape):
    """The body of an executor's heartbeat (optional: an empty body takes the default lease)."""

    lease_ms: LeaseMs = DEFAULT_LEASE_MS


TaskActionRequest = ApproveTask | SetTaskAnnotations
CreateRequest = NewRun
RecreateRequest = RecreateRun


class ClaimTask(Shape):
    """An executor claims a ready task (``task.claimed``): the first claim wins, the holder's
    claim again renews its lease, any other is refused (409 naming the holder). The claim holds
    while the executor's heartbeats come at least every ``lease_ms``."""

    executor_id: ExecutorId
    lease_ms: Lease = DEFAULT_LEASE_MS


class ReportStatus(Shape):
    """An executor reports a task's status (``task.status_changed``). With ``executor_id``: a
    report for a task another executor holds is refused (409), one for a ready task nobody
    holds claims it; without: accepted only for a task nobody holds."""

    status: TaskStatus
    executor_id: ExecutorId | UnsetType = UNSET


#: The default of ``GET /stuck``'s ``older_than``: ten minutes without progress.
DEFAULT_STUCK_SECONDS = 600


class StuckQuery(Shape):
    """The query of ``GET /stuck``."""

    older_than: Annotated[
        int,
        Meta(
            ge=0,
            le=366 * 86_400,
            description="seconds without progress (default 600: ten minutes)",
        ),
    ] = DEFAULT_STUCK_SECONDS


class ListQuery(Shape):
    """The query of ``GET /runs`` (each field is a query parameter; group, phase and result
    repeat, the others are given once). A group is a prefix by whole elements: ``/project/x``
    matches its branches, ``/a/b`` never ``/a/bc``; ``/`` matches every run, ``/project`` every
    project's, ``/project/x/branch`` x's branches; a trailing ``/`` is the same as none
    (``events.group.validate_group_prefix``)."""

    groups: Annotated[
        tuple[GroupPrefix, ...],
        Meta(
            description="group prefix (repeatable: runs under any of them): `/` every run, "
            "`/project` every project's, `/project/p1` p1's, `/project/p1/branch` p1's "
            "branches; by whole elements (`/a/b` never matches `/a/bc`); a trailing `/` is the "
            "same as none"
        ),
    ] = field(default=(), name="group")
    phases: tuple[Phase, ...] = field(default=(), name="phase")
    results: tuple[Result, ...] = field(default=(), name="result")
    last_run: Annotated[bool, Meta(description="only the last run of each group")] = field(
        default=False, name="lastrun"
    )
    order: Annotated[Order, Meta(description="by run id; newest first by default")] = Order.DESC
    limit: Limit = DEFAULT_LIMIT
    cursor: Cursor | None = None

    def __post_init__(self) -> None:
        for i, group in enumerate(self.groups):
            try:
                validate_group_prefix(group)
            except EventsBadRequest as exc:
                raise ValueError(f"{exc} - at `$.group[{i}]`") from None


#: The request types, for the OpenAPI components.
REQUEST_TYPES = (
    NewRun,
    RecreateRun,
    RunActionRequest,
    TaskActionRequest,
    ListQuery,
    HeartbeatRequest,
    ClaimTask,
    ReportStatus,
)
_QUERY_FIELDS = msgspec.structs.fields(ListQuery)
#: The query parameters of ``GET /runs``; any other is refused, so a typo is not ignored.
LIST_PARAMETERS = tuple(f.encode_name for f in _QUERY_FIELDS)
#: The parameters of ``GET /runs`` that repeat (its tuple fields): group, phase, result.
_REPEATED = frozenset(
    f.encode_name
    for f in _QUERY_FIELDS
    if get_origin(get_args(f.type)[0] if get_origin(f.type) is Annotated else f.type) is tuple
)

# -- decoding ------------------------------------------------------------------------------------

_keys = msgspec.json.Decoder(dict[str, msgspec.Raw])
_new_run = msgspec.json.Decoder(NewRun)
_recreate = msgspec.json.Decoder(RecreateRun)
_run_action = msgspec.json.Decoder(RunActionRequest)
_task_action = msgspec.json.Decoder(TaskActionRequest)
_claim = msgspec.json.Decoder(ClaimTask)
_report = msgspec.json.Decoder(ReportStatus)
_heartbeat = msgspec.json.Decoder(HeartbeatRequest)


def _decode(decoder: msgspec.json.Decoder[Any], raw: bytes) -> Any:
    if not raw:
        raise BadRequest("request body is empty: want a JSON object")
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid request body: {explain(exc, decoder.type)}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def parse_create(raw: bytes) -> NewRun | RecreateRun:
    """A new run (checked: :meth:`NewRun.check`), or a recreation when the body has ``run_id``;
    400 naming the field."""
    keys = _decode(_keys, raw)
    if "run_id" in keys:
        recreation: RecreateRun = _decode(_recreate, raw)
        return recreation
    new: NewRun = _decode(_new_run, raw)
    new.check()
    return new


def parse_run_action(raw: bytes) -> RunAction:
    action: RunAction = _decode(_run_action, raw).action_type
    return action


def parse_task_action(raw: bytes) -> TaskActionRequest:
    req: TaskActionRequest = _decode(_task_action, raw)
    return req


def parse_claim(raw: bytes) -> ClaimTask:
    claim: ClaimTask = _decode(_claim, raw)
    return claim


def parse_report(raw: bytes) -> ReportStatus:
    report: ReportStatus = _decode(_report, raw)
    return report


#: A query parameter's integer as the API takes it: plain decimal digits, no sign, exponent,
#: fraction, spaces or leading zeros (``0`` itself aside). msgspec alone would take ``1e0``.
_INTEGER = re.compile(r"(?:0|[1-9][0-9]{0,17})", re.ASCII)


def query_values(
    query: Any, known: Sequence[str], repeatable: Collection[str] = ()
) -> dict[str, Any]:
    """The parameters of ``query`` (a multidict, ``request.query``) as ``{name: value}``, a list
    of values for those in ``repeatable``; 400 naming every parameter the route does not know
    (``known``), else every one given more than once that is not repeatable."""
    unknown = sorted({k for k in query if k not in known})
    if unknown:
        names = ", ".join(repr(k[:40]) for k in unknown[:10])
        raise BadRequest(
            f"unknown query parameter{'s' if len(unknown) > 1 else ''} {names}; "
            f"want {', '.join(known) if known else 'none'}"
        )
    twice = sorted(k for k in set(query) if k not in repeatable and len(query.getall(k)) > 1)
    if twice:
        names = ", ".join(f"{k!r} ({len(query.getall(k))} times)" for k in twice)
        raise BadRequest(
            f"query parameter{'s' if len(twice) > 1 else ''} {names} given more than once; "
            f"each takes one value{_repeatable_note(repeatable)}"
        )
    return {k: query.getall(k) if k in repeatable else query[k] for k in set(query)}


def _repeatable_note(repeatable: Collection[str]) -> str:
    if not repeatable:
        return ""
    return f" (only {', '.join(sorted(repeatable))} repeat)"


def _is_integer(value: Any) -> bool:
    return isinstance(value, str) and _INTEGER.fullmatch(value) is not None


def parse_events_query(query: Any) -> str | None:
    """``after`` of ``GET /runs/events`` (None when absent or empty); 400 naming an unknown or
    repeated parameter."""
    after: str | None = query_values(query, ("after",)).get("after")
    return after or None


def parse_stuck_query(query: Any) -> int:
    """``older_than`` of ``GET /stuck`` in milliseconds (default 600 s); 400 naming an unknown
    or repeated parameter or a bad value (an integer in plain decimal digits)."""
    values = query_values(query, ("older_than",))
    if "older_than" in values and not _is_integer(values["older_than"]):
        raise BadRequest(
            "invalid query: query parameter `older_than` must be a whole number of seconds in "
            f"decimal digits, got {values['older_than'][:20]!r}"
        )
    try:
        q: StuckQuery = msgspec.convert(values, StuckQuery, strict=False)
    except msgspec.ValidationError as exc:
        text = explain(exc, StuckQuery).replace("`$.", "query parameter `")
        raise BadRequest(f"invalid query: {text}") from None
    return q.older_than * 1000


def parse_heartbeat(raw: bytes) -> int:
    """The lease of a heartbeat's body: ``lease_ms``, or the default for an empty body."""
    if not raw.strip():
        return DEFAULT_LEASE_MS
    req: HeartbeatRequest = _decode(_heartbeat, raw)
    return req.lease_ms


def parse_list_query(query: Any) -> ListQuery:
    """``GET /runs`` parameters from a multidict (``request.query``); 400 naming any unknown
    parameter, one given twice that does not repeat, or a bad value."""
    values = query_values(query, LIST_PARAMETERS, _REPEATED)
    bad_limit = (
        f"invalid query: limit must be between 1 and {MAX_LIMIT} (decimal digits), "
        f"got {str(values.get('limit'))[:20]!r}"
    )
    if "limit" in values and not _is_integer(values["limit"]):
        raise BadRequest(bad_limit)
    try:
        q: ListQuery = msgspec.convert(values, ListQuery, strict=False)
    except msgspec.ValidationError as exc:
        text = explain(exc, ListQuery)
        if "`$.limit`" in text:
            raise BadRequest(bad_limit) from None
        raise BadRequest(f"invalid query: {text}".replace("`$.", "query parameter `")) from None
    return q


def _header(value: str | None, kind: Any, problem: str) -> str | None:
    if value is None:
        return None
    try:
        checked: str = msgspec.convert(value, kind)
    except msgspec.ValidationError:
        raise BadRequest(f"{problem}, got {value[:40]!r}") from None
    return checked


def parse_expected_seq(if_match: str | None) -> int | None:
    """The revision in an ``If-Match: "<seq>"`` header (quotes optional), None if absent."""
    text = _header(if_match, IfMatch, 'header If-Match must be "<seq>", a non-negative integer')
    return None if text is None else int(text.strip('"'))


def parse_idempotency_key(value: str | None) -> str | None:
    """An ``Idempotency-Key`` header: 1–200 visible ASCII characters, None if absent."""
    problem = "header Idempotency-Key must be 1 to 200 printable ASCII characters"
    return _header(value, IdempotencyKey, problem)


def require_executor_id(executor_id: str) -> str:
    """``executor_id`` if it is a valid executor id, else 400."""
    try:
        checked: str = msgspec.convert(executor_id, ExecutorId)
    except msgspec.ValidationError:
        raise BadRequest(
            f"invalid executor id {executor_id[:40]!r}: want 1 to {MAX_EXECUTOR_ID} printable "
            "ASCII characters without spaces"
        ) from None
    return checked


def require_run_id(run_id: str) -> str:
    """``run_id`` if it is a run id's canonical form, else 400."""
    if not is_run_id(run_id):
        raise BadRequest(f"invalid run id {run_id[:40]!r}: want 16 decimal digits, not all zero")
    return run_id


# -- messages ------------------------------------------------------------------------------------

_AT = re.compile(r" - at `\$([^`]*)`")
_STEP = re.compile(r"\.([^.\[]+)|\[([^\]]*)\]")


def explain(exc: msgspec.ValidationError, root: Any) -> str:
    """msgspec's message for ``exc`` with its path (`` - at `$` `` for the root too), plus what
    it leaves out: the accepted values of an enum or a tag, the known fields of an object."""
    message = validation_message(exc, root)
    found = _AT.search(message)
    if found is None:
        message, path = f"{message} - at `$`", ""
    else:
        path = found.group(1)
    steps = _STEP.findall(path)
    if message.startswith("Object contains unknown field"):
        target = _struct_at(msgspec.inspect.type_info(root), steps)
        if target is not None:
            return f"{message} (known: {', '.join(sorted(_fields(target)))})"
    elif message.startswith("Invalid value") and steps:
        tags = _tags_at(msgspec.inspect.type_info(root), steps)
        if tags:
            return f"{message} (want one of: {', '.join(tags)})"
    return message


def _fields(t: Any) -> list[str]:
    tag = [t.tag_field] if t.tag_field else []
    return tag + [f.encode_name for f in t.fields]


def _child(t: Any, step: tuple[str, str]) -> Any:
    mi = msgspec.inspect
    if isinstance(t, mi.Metadata):
        t = t.type
    name, index = step
    if isinstance(t, mi.UnionType):
        kids = (_child(u, step) for u in t.types)
        return next((k for k in kids if k is not None), None)
    if name and isinstance(t, mi.StructType):
        return next((f.type for f in t.fields if f.encode_name == name), None)
    if index and isinstance(t, (mi.VarTupleType, mi.ListType)):
        return t.item_type
    if index and isinstance(t, mi.DictType):
        return t.value_type
    return None


def _walk(t: Any, steps: list[tuple[str, str]]) -> Any:
    for step in steps:
        if t is None:
            return None
        t = _child(t, step)
    return t.type if isinstance(t, msgspec.inspect.Metadata) else t


def _struct_at(t: Any, steps: list[tuple[str, str]]) -> Any:
    t = _walk(t, steps)
    if isinstance(t, msgspec.inspect.UnionType):
        t = next((u for u in t.types if isinstance(u, msgspec.inspect.StructType)), None)
    return t if isinstance(t, msgspec.inspect.StructType) else None


def _tags_at(t: Any, steps: list[tuple[str, str]]) -> list[str]:
    """The tags of the tagged union at ``steps[:-1]`` whose tag field is ``steps[-1]``."""
    parent = _walk(t, steps[:-1])
    members = parent.types if isinstance(parent, msgspec.inspect.UnionType) else (parent,)
    return [
        str(m.tag)
        for m in members
        if isinstance(m, msgspec.inspect.StructType) and m.tag_field == steps[-1][0]
    ]
