"""Dead letters over HTTP: ``GET /api/v1/dlq``, ``GET /api/v1/dlq/{partition}/{offset}`` and
``POST /api/v1/dlq/redrive`` (issue 21), the operator's routes beside ``runstream dlq``.

The shapes, the query and body parsing, the order of a listing and its cursor, the handlers and
the OpenAPI paths live here; the records come from a :class:`api.ports.DeadLetters` (the worker
wires ``agents.dlq``, which reads ``runs.dlq`` with a bare consumer). Every path is under
``/api/v1/dlq``: the routes an ``admin`` scope guards.

A listing is newest first (the record's time, then partition and offset, descending); its
``next_cursor`` names the last record of the page (``TIME-PARTITION-OFFSET``) and the next page
starts after it, so records dead-lettered meanwhile never shift a page.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Protocol

import msgspec
import orjson
from aiohttp import web

from api.errors import BadRequest, NotFound, Unavailable
from api.views import json_response
from events.model import OpenShape, Shape

__all__ = [
    "DLQ_CURSOR_PATTERN",
    "DLQ_ID_PATTERN",
    "DeadLetter",
    "DeadLetterHandlers",
    "DeadLetterPage",
    "DeadLetterSummary",
    "DeadLetterValue",
    "DeadLetters",
    "DlqCursor",
    "DlqSelection",
    "PageBuilder",
    "RedriveItem",
    "RedriveRequest",
    "RedriveResult",
    "dlq_paths",
    "parse_time",
    "sort_key",
]

DLQ_ID_PATTERN = r"^[0-9]{1,9}:[0-9]{1,18}$"
DLQ_CURSOR_PATTERN = r"^[0-9]{1,18}-[0-9]{1,9}-[0-9]{1,18}$"
#: A time ago (``10m``) or an ISO 8601 time (``2026-11-30T12:00:00Z``).
TIME_PATTERN = (
    r"^([0-9]{1,5}(\.[0-9]{1,3})?(s|m|h|d|w)"
    r"|[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])(T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{1,6})?(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])?)?)$"
)
DlqId = Annotated[str, msgspec.Meta(pattern=DLQ_ID_PATTERN)]
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
SourcePartition = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
#: The document states TIME_PATTERN (days to 28, so every match is a date); the server takes any
#: time ``parse_time`` reads (400 otherwise).
When = Annotated[
    str,
    msgspec.Meta(
        pattern=TIME_PATTERN,
        description="a time ago (10m, 2h, 1d) or an ISO 8601 time; any valid date is accepted",
    ),
]
#: Most records a listing page holds, and the items a redrive answer lists one by one.
MAX_LIMIT = 1000
DEFAULT_LIMIT = 50
MAX_ITEMS = 1000

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """``2026-11-30T12:00:00Z`` (ISO 8601; UTC when no zone) or a time ago: ``90s``, ``10m``,
    ``2h``, ``1d``, ``1w``. Raises ``ValueError`` naming the text."""
    now = now or datetime.now(UTC)
    m = _RELATIVE.match(text.strip())
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"bad time {text!r}: want ISO 8601 or a time ago like 10m, 2h, 1d"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# ------------------------------------------------------------------------------ shapes
class DeadLetterSummary(OpenShape):
    """One dead letter in a listing (what ``runstream dlq list --json`` prints)."""

    id: str  # PARTITION:OFFSET in the dead-letter topic
    partition: int
    offset: int
    time: str  # when it was dead-lettered, ISO 8601
    reason: str  # runstream-error: no_key, wrong_partition, undecodable, ...
    message: str | None = None  # runstream-error-message
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    size: int  # bytes of the value held here
    truncated_from: int | None = None  # the original's size when only its start is held
    key: str | None = None


class DeadLetterPage(OpenShape):
    dead_letters: list[DeadLetterSummary]
    #: Pass as ``cursor`` for the next (older) page; absent on the last page.
    next_cursor: str | None = None


class DeadLetterValue(OpenShape):
    """The record's bytes: ``json`` (UTF-8 JSON, as text) or ``base64``."""

    encoding: Literal["json", "base64"]
    text: str


class DeadLetter(DeadLetterSummary):
    """One dead letter decoded (``runstream dlq show --json`` plus its value)."""

    headers: dict[str, str]
    truncated: bool  # only the start of the original record is held (truncated_from says)
    value: DeadLetterValue
    decoded: list[Any] | None = None  # its events in their current version, when they decode
    decode_error: str | None = None  # else why they do not


class RedriveRequest(Shape):
    """What to redrive: named dead letters and/or filters (they all apply); ``all`` to take every
    dead letter when nothing else is given. ``dry_run``: say what would be sent, send nothing."""

    ids: Sequence[DlqId] = []
    reasons: Sequence[Reason] = []
    source_partitions: Sequence[SourcePartition] = []
    since: When | None = None
    until: When | None = None
    all: bool = False
    dry_run: bool = False


class _RedriveBody(RedriveRequest):
    """What the server decodes: ``since``/``until`` any text ``parse_time`` reads."""

    since: str | None = None
    until: str | None = None


class RedriveItem(OpenShape):
    id: str
    outcome: Literal["redriven", "would_redrive", "skipped"]
    topic: str | None = None  # where it went (or would go)
    partition: int | None = None  # where murmur2 of its key puts it, when known
    why: str | None = None  # why it was skipped


class RedriveResult(OpenShape):
    dry_run: bool
    redriven: int  # sent (or, dry run, that would be)
    skipped: int
    by_topic: dict[str, int]
    items: list[RedriveItem]  # one per selected dead letter, the first MAX_ITEMS
    items_truncated: bool = False


DLQ_TYPES = (DeadLetterPage, DeadLetter, RedriveRequest, RedriveResult)


@dataclass(frozen=True, slots=True, kw_only=True)
class DlqSelection:
    """Which dead letters (all of them when every field is empty), as ``agents.dlq.Selection``."""

    reasons: frozenset[str] = frozenset()
    source_partitions: frozenset[int] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    ids: frozenset[tuple[int, int]] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.reasons or self.source_partitions or self.since or self.until or self.ids)


@dataclass(frozen=True, slots=True, order=True)
class DlqCursor:
    """Where a listing page ended: the sort key of its last record."""

    timestamp_ms: int
    partition: int
    offset: int

    def encode(self) -> str:
        return f"{self.timestamp_ms}-{self.partition}-{self.offset}"

    @classmethod
    def decode(cls, text: str) -> DlqCursor:
        if re.fullmatch(DLQ_CURSOR_PATTERN, text) is None:
            raise BadRequest(f"bad cursor {text!r}: pass next_cursor as a listing returned it")
        t, p, o = (int(x) for x in text.split("-"))
        return cls(t, p, o)


def sort_key(timestamp_ms: int, partition: int, offset: int) -> DlqCursor:
    """A listing is in descending order of this key (newest first)."""
    return DlqCursor(timestamp_ms, partition, offset)


class PageBuilder:
    """Keeps the newest ``limit + 1`` records after ``after`` of those added (any order), then
    makes the page: ``DeadLetters.page`` for any source of records."""

    def __init__(self, limit: int, after: DlqCursor | None) -> None:
        self.limit = limit
        self.after = after
        self._best: list[tuple[DlqCursor, DeadLetterSummary]] = []

    def add(self, key: DlqCursor, summary: DeadLetterSummary) -> None:
        if self.after is not None and not key < self.after:
            return
        if len(self._best) <= self.limit:
            heapq.heappush(self._best, (key, summary))
        elif key > self._best[0][0]:
            heapq.heapreplace(self._best, (key, summary))

    def page(self) -> DeadLetterPage:
        newest = sorted(self._best, key=lambda x: x[0], reverse=True)
        page = newest[: self.limit]
        more = len(newest) > self.limit
        return DeadLetterPage(
            dead_letters=[s for _, s in page],
            next_cursor=page[-1][0].encode() if more and page else None,
        )


# ------------------------------------------------------------------------------ parsing
def _parse_id(text: str) -> tuple[int, int]:
    if re.fullmatch(DLQ_ID_PATTERN, text) is None:
        raise BadRequest(f"bad dead letter {text!r}: want PARTITION:OFFSET as a listing shows it")
    p, o = text.split(":")
    return int(p), int(o)


def _parse_int(name: str, text: str, *, low: int = 0, high: int = 2**62) -> int:
    if re.fullmatch(r"[0-9]{1,19}", text) is None or not low <= int(text) <= high:
        raise BadRequest(f"bad {name} {text!r}: want a whole number from {low} to {high}")
    return int(text)


def _parse_when(name: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except (ValueError, OverflowError):
        raise BadRequest(
            f"bad {name} {text!r}: want ISO 8601 or a time ago like 10m, 2h, 1d"
        ) from None


_QUERY_NAMES = frozenset({"reason", "source_partition", "since", "until", "id", "limit", "cursor"})


def parse_list_query(query: Any) -> tuple[DlqSelection, int, DlqCursor | None]:
    """``GET /dlq``'s query → (selection, limit, cursor). Raises ``BadRequest``."""
    unknown = sorted(set(query.keys()) - _QUERY_NAMES)
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0]!r}")
    for name in ("since", "until", "limit", "cursor"):
        if len(query.getall(name, [])) > 1:
            raise BadRequest(f"query parameter {name!r} given more than once")
    reasons = query.getall("reason", [])
    if any(not r for r in reasons):
        raise BadRequest("an empty reason")
    selection = DlqSelection(
        reasons=frozenset(reasons),
        source_partitions=frozenset(
            _parse_int("source_partition", p, high=2**31 - 1)
            for p in query.getall("source_partition", [])
        ),
        since=_parse_when("since", query.get("since")),
        until=_parse_when("until", query.get("until")),
        ids=frozenset(_parse_id(i) for i in query.getall("id", [])),
    )
    limit = DEFAULT_LIMIT
    if "limit" in query:
        limit = _parse_int("limit", query["limit"], low=1, high=MAX_LIMIT)
    cursor = DlqCursor.decode(query["cursor"]) if "cursor" in query else None
    return selection, limit, cursor


def parse_redrive(body: bytes) -> tuple[DlqSelection, bool]:
    """``POST /dlq/redrive``'s body → (selection, dry_run). Raises ``BadRequest``; refuses a
    body selecting nothing unless it says ``"all": true``."""
    try:
        req = msgspec.json.decode(body or b"{}", type=_RedriveBody)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"bad body: {exc}") from None
    if any(not r for r in req.reasons):
        raise BadRequest("an empty reason")
    if any(not 0 <= p < 2**31 for p in req.source_partitions):
        raise BadRequest("a source partition out of range")
    selection = DlqSelection(
        reasons=frozenset(req.reasons),
        source_partitions=frozenset(req.source_partitions),
        since=_parse_when("since", req.since),
        until=_parse_when("until", req.until),
        ids=frozenset(_parse_id(i) for i in req.ids),
    )
    if selection.empty and not req.all:
        raise BadRequest(
            "name the dead letters to redrive (ids) or filter them (reasons, "
            'source_partitions, since, until), or send "all": true'
        )
    return selection, req.dry_run


class DeadLetters(Protocol):
    """The dead-letter topic, for the operator's routes under ``/api/v1/dlq`` (``agents.dlq``
    implements it with bare consumers; nothing is committed). A port of ``api.ports``, declared
    here beside the shapes it speaks of."""

    async def page(
        self, selection: DlqSelection, *, limit: int, after: DlqCursor | None
    ) -> DeadLetterPage:
        """The selected dead letters newest first (``api.dlq.sort_key`` descending), at most
        ``limit``, starting after ``after``; ``next_cursor`` set when more follow. Raises
        ``api.errors.Unavailable`` when Kafka does not answer."""
        ...

    async def get(self, partition: int, offset: int) -> DeadLetter | None:
        """The dead letter at ``partition:offset`` decoded (None: there is none)."""
        ...

    async def redrive(self, selection: DlqSelection, *, dry_run: bool) -> RedriveResult:
        """Append the selected dead letters to their source topics (``dry_run``: send nothing),
        as ``runstream dlq redrive``; says what was redriven and skipped, one item each."""
        ...


# ------------------------------------------------------------------------------ handlers
class DeadLetterHandlers:
    """The three routes; ``dead_letters`` None (not wired) answers 503 after parsing."""

    def __init__(self, dead_letters: DeadLetters | None) -> None:
        self.dead_letters = dead_letters

    def _port(self) -> DeadLetters:
        if self.dead_letters is None:
            raise Unavailable("this worker does not serve dead letters: use `runstream dlq`")
        return self.dead_letters

    async def list(self, request: web.Request) -> web.Response:
        selection, limit, cursor = parse_list_query(request.query)
        page = await self._port().page(selection, limit=limit, after=cursor)
        return json_response(msgspec.to_builtins(page))

    async def show(self, request: web.Request) -> web.Response:
        p = _parse_int("partition", request.match_info["partition"], high=2**31 - 1)
        o = _parse_int("offset", request.match_info["offset"])
        record = await self._port().get(p, o)
        if record is None:
            raise NotFound(f"no dead letter {p}:{o}")
        return json_response(msgspec.to_builtins(record))

    async def redrive(self, request: web.Request) -> web.Response:
        selection, dry_run = parse_redrive(await request.read())
        result = await self._port().redrive(selection, dry_run=dry_run)
        return json_response(msgspec.to_builtins(result))


def value_of(value: bytes) -> DeadLetterValue:
    """The value as text when it is UTF-8 JSON, else base64."""
    import base64

    try:
        text = value.decode("utf-8")
        orjson.loads(value)
    except (UnicodeDecodeError, orjson.JSONDecodeError):
        return DeadLetterValue(encoding="base64", text=base64.b64encode(value).decode("ascii"))
    return DeadLetterValue(encoding="json", text=text)


# ------------------------------------------------------------------------------ OpenAPI
def dlq_paths(errors: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI path items of the dead-letter routes; ``errors``: status → response object
    (400, 401, 404, 500, 503). Schemas are inlined (they are not the run API's)."""
    _, components = msgspec.json.schema_components(DLQ_TYPES, ref_template="{name}")
    inline = {
        name: {k: v for k, v in comp.items() if k != "title"} for name, comp in components.items()
    }

    def body(name: str) -> Any:
        return _inline(inline[name], inline)

    redrive_body = body("RedriveRequest")
    props = redrive_body["properties"]
    # Something must be selected: an id, a filter, or "all": true.
    redrive_body["anyOf"] = [
        *(
            {"required": [n], "properties": {n: {**props[n], "minItems": 1}}}
            for n in ("ids", "reasons", "source_partitions")
        ),
        {
            "required": ["since"],
            "properties": {"since": {"type": "string", "pattern": TIME_PATTERN}},
        },
        {
            "required": ["until"],
            "properties": {"until": {"type": "string", "pattern": TIME_PATTERN}},
        },
        {"required": ["all"], "properties": {"all": {"const": True}}},
    ]

    def ok(description: str, name: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": body(name)}}}

    def query(
        name: str, schema: dict[str, Any], description: str, *, many: bool = False
    ) -> dict[str, Any]:
        if many:
            schema = {"type": "array", "items": schema}
        p: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
        p["description"] = description
        if many:
            p.update(style="form", explode=True)
        return p

    time_ = {"type": "string", "pattern": TIME_PATTERN}
    listing = [
        query(
            "reason", {"type": "string", "minLength": 1}, "only this reason (repeatable)", many=True
        ),
        query(
            "source_partition",
            {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
            "only records from this partition of their source topic (repeatable)",
            many=True,
        ),
        query("since", time_, "not older than: ISO 8601 or a time ago (10m, 2h, 1d)"),
        query("until", time_, "older than: ISO 8601 or a time ago"),
        query(
            "id",
            {"type": "string", "pattern": DLQ_ID_PATTERN},
            "only this dead letter, PARTITION:OFFSET (repeatable)",
            many=True,
        ),
        query(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
            "most records in the page",
        ),
        query(
            "cursor",
            {"type": "string", "pattern": DLQ_CURSOR_PATTERN},
            "next_cursor of the previous page",
        ),
    ]
    bearer: list[dict[str, list[str]]] = [{"bearer": []}, {}]
    e = errors
    return {
        "/api/v1/dlq": {
            "get": {
                "operationId": "listDeadLetters",
                "summary": "Dead letters of runs.dlq, newest first (an operator's route)",
                "description": "Reads the dead-letter topic as `runstream dlq list` does, "
                "filtered the same way. Page with `limit` and `next_cursor`.",
                "security": bearer,
                "parameters": listing,
                "responses": {
                    "200": ok("a page of dead letters", "DeadLetterPage"),
                    "400": e["400"],
                    "401": e["401"],
                    "500": e["500"],
                    "503": e["503"],
                },
            }
        },
        "/api/v1/dlq/{partition}/{offset}": {
            "get": {
                "operationId": "getDeadLetter",
                "summary": "One dead letter decoded: headers, reason, source, value",
                "description": "The value as text when it is UTF-8 JSON, else base64; "
                "`truncated` when only the start of the original record was kept.",
                "security": bearer,
                "parameters": [
                    {
                        "name": "partition",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
                    },
                    {
                        "name": "offset",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0, "maximum": 2**62},
                    },
                ],
                "responses": {
                    "200": ok("the dead letter", "DeadLetter"),
                    "400": e["400"],
                    "401": e["401"],
                    "404": e["404"],
                    "500": e["500"],
                    "503": e["503"],
                },
            }
        },
        "/api/v1/dlq/redrive": {
            "post": {
                "operationId": "redriveDeadLetters",
                "summary": "Append the selected dead letters to their source topic again",
                "description": "As `runstream dlq redrive`: original bytes, key and headers "
                "(runstream-* removed); records refused for their partition are keyed by their "
                "run id. Skips truncated copies and records still refused. Safe to repeat. "
                "`dry_run` says what would be sent and sends nothing.",
                "security": bearer,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": redrive_body}},
                },
                "responses": {
                    "200": ok("what was (or would be) redriven and skipped", "RedriveResult"),
                    "400": e["400"],
                    "401": e["401"],
                    "500": e["500"],
                    "503": e["503"],
                },
            }
        },
    }


def _inline(schema: Any, components: dict[str, Any]) -> Any:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref in components:
            return _inline(components[ref], components)
        return {k: _inline(v, components) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_inline(v, components) for v in schema]
    return schema
