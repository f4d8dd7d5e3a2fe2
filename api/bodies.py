"""Request bodies and query strings → typed requests, with a 400 naming the field on any error.

Bodies are JSON objects; unknown fields are refused (a typo must not pass silently). The shapes
are the ones the OpenAPI document (``api.openapi``) describes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from api.errors import BadRequest
from events import (
    SETUP_ERROR_RUN_NAME,
    DecodeError,
    Phase,
    Result,
    RunConfigTask,
    SetupError,
    is_run_id,
)
from events.codec import decode_task

__all__ = [
    "CreateRequest",
    "ListQuery",
    "RecreateRequest",
    "RunAction",
    "TaskAction",
    "TaskActionRequest",
    "parse_body",
    "parse_create",
    "parse_expected_seq",
    "parse_list_query",
    "parse_run_action",
    "parse_task_action",
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


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateRequest:
    name: str
    group: str
    tasks: tuple[RunConfigTask, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)
    static_environment: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    setup_errors: tuple[SetupError, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RecreateRequest:
    run_id: str
    from_start: bool = False
    environment: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskActionRequest:
    action: TaskAction
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ListQuery:
    groups: tuple[str, ...] = ()
    phases: tuple[Phase, ...] = ()
    results: tuple[Result, ...] = ()
    last_run: bool = False
    order: str = "desc"
    limit: int | None = None
    cursor: str | None = None


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object in ``raw``; 400 for anything else (invalid JSON, not an object)."""
    if not raw:
        raise BadRequest("request body is empty: want a JSON object")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if type(obj) is not dict:
        raise BadRequest(f"request body must be a JSON object, not {_kind(obj)}")
    return obj


def _kind(v: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(v), "null" if v is None else "a number"
    )


def _only(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(body.keys() - allowed)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def _str(body: Mapping[str, Any], key: str, *, default: str | None = None) -> str:
    v = body.get(key, default)
    if v is None:
        raise BadRequest(f"field {key!r} is required")
    if type(v) is not str:
        raise BadRequest(f"field {key!r} must be a string, not {_kind(v)}")
    return v


def _bool(body: Mapping[str, Any], key: str) -> bool:
    v = body.get(key, False)
    if type(v) is not bool:
        raise BadRequest(f"field {key!r} must be a boolean, not {_kind(v)}")
    return v


def _str_map(body: Mapping[str, Any], key: str) -> dict[str, str]:
    v = body.get(key, {})
    if type(v) is not dict:
        raise BadRequest(f"field {key!r} must be an object of strings, not {_kind(v)}")
    for k, x in v.items():
        if type(x) is not str:
            raise BadRequest(f"field {key!r}: value of {k!r} must be a string, not {_kind(x)}")
    return dict(v)


def _list(body: Mapping[str, Any], key: str) -> list[Any]:
    v = body.get(key, [])
    if type(v) is not list:
        raise BadRequest(f"field {key!r} must be an array, not {_kind(v)}")
    return v


def _items(body: Mapping[str, Any], key: str, parse: Callable[[Any], Any]) -> tuple[Any, ...]:
    out = []
    for i, item in enumerate(_list(body, key)):
        try:
            out.append(parse(item))
        except (DecodeError, BadRequest) as exc:
            msg = exc.message if isinstance(exc, DecodeError) else str(exc)
            raise BadRequest(f"field '{key}[{i}]': {msg}") from None
    return tuple(out)


def _task(item: Any) -> RunConfigTask:
    if type(item) is not dict:
        raise BadRequest(f"a task must be an object, not {_kind(item)}")
    # decode_task takes the dict over; give it a copy with fresh lists (it rewrites depends).
    copy = orjson.loads(orjson.dumps(item))
    if "level" in copy:
        raise BadRequest("'level' is computed by the service")
    return decode_task(copy)


def _setup_error(item: Any) -> SetupError:
    if type(item) is str:
        return SetupError(message=item)
    if type(item) is dict:
        _only(item, frozenset({"message", "task_ids"}))
        ids = _list(item, "task_ids")
        if not all(type(x) is str and x for x in ids):
            raise BadRequest("field 'task_ids' must be an array of non-empty strings")
        return SetupError(message=_str(item, "message"), task_ids=tuple(ids))
    raise BadRequest(f"a setup error is a string or an object, not {_kind(item)}")


_CREATE = frozenset(
    {"name", "group", "tasks", "environment", "static_environment", "annotations", "setup_errors"}
)
_RECREATE = frozenset({"run_id", "from_start", "environment"})


def parse_create(body: Mapping[str, Any]) -> CreateRequest | RecreateRequest:
    """A new run, or a recreation when the body has ``run_id``."""
    if "run_id" in body:
        _only(body, _RECREATE)
        return RecreateRequest(
            run_id=require_run_id(_str(body, "run_id")),
            from_start=_bool(body, "from_start"),
            environment=_str_map(body, "environment"),
        )
    _only(body, _CREATE)
    setup_errors = _items(body, "setup_errors", _setup_error)
    name = _str(body, "name", default=SETUP_ERROR_RUN_NAME if setup_errors else None)
    if not name:
        raise BadRequest("field 'name' must not be empty")
    return CreateRequest(
        name=name,
        group=_str(body, "group"),
        tasks=_items(body, "tasks", _task),
        environment=_str_map(body, "environment"),
        static_environment=_str_map(body, "static_environment"),
        annotations=_str_map(body, "annotations"),
        setup_errors=setup_errors,
    )


def _enum_field(body: Mapping[str, Any], key: str, enum: type[StrEnum]) -> Any:
    v = _str(body, key)
    try:
        return enum(v)
    except ValueError:
        raise BadRequest(
            f"field {key!r}: unknown value {v!r}; want one of {', '.join(m.value for m in enum)}"
        ) from None


def parse_run_action(body: Mapping[str, Any]) -> RunAction:
    _only(body, frozenset({"action_type"}))
    action: RunAction = _enum_field(body, "action_type", RunAction)
    return action


def parse_task_action(body: Mapping[str, Any]) -> TaskActionRequest:
    _only(body, frozenset({"action_type", "annotations"}))
    action: TaskAction = _enum_field(body, "action_type", TaskAction)
    if action.needs_annotations():
        if "annotations" not in body:
            raise BadRequest("field 'annotations' is required for setannotations")
        return TaskActionRequest(action=action, annotations=_str_map(body, "annotations"))
    if "annotations" in body:
        raise BadRequest(f"field 'annotations' is not allowed for {action}")
    return TaskActionRequest(action=action)


def require_run_id(run_id: str) -> str:
    """``run_id`` if it is a run id's canonical form, else 400."""
    if not is_run_id(run_id):
        raise BadRequest(f"invalid run id {run_id[:40]!r}: want 16 decimal digits, not all zero")
    return run_id


def parse_expected_seq(if_match: str | None) -> int | None:
    """The revision in an ``If-Match: "<seq>"`` header (quotes optional), None if absent."""
    if if_match is None:
        return None
    text = if_match.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        raise BadRequest(f'header If-Match must be "<seq>", a non-negative integer, got {if_match[:40]!r}')  # fmt: skip
    return int(text)


def parse_idempotency_key(value: str | None) -> str | None:
    """An ``Idempotency-Key`` header: 1–200 visible ASCII characters, None if absent."""
    if value is None:
        return None
    if not (0 < len(value) <= 200 and value.isascii() and value.isprintable()):
        raise BadRequest("header Idempotency-Key must be 1 to 200 printable ASCII characters")
    return value


_TRUE = {"", "1", "true", "yes"}
_FALSE = {"0", "false", "no"}


def _multi(query: Any, key: str, enum: type[StrEnum]) -> tuple[Any, ...]:
    out = []
    for v in query.getall(key, ()):
        try:
            out.append(enum(v))
        except ValueError:
            raise BadRequest(
                f"query parameter {key!r}: unknown value {v[:40]!r}; "
                f"want one of {', '.join(m.value for m in enum)}"
            ) from None
    return tuple(out)


#: The query parameters of ``GET /runs``; any other is refused, so a typo is not ignored.
LIST_PARAMETERS = ("group", "phase", "result", "lastrun", "order", "limit", "cursor")


def parse_list_query(query: Any) -> ListQuery:
    """``GET /runs`` parameters from a multidict (``request.query``); 400 naming any unknown
    parameter."""
    unknown = sorted({k for k in query if k not in LIST_PARAMETERS})
    if unknown:
        names = ", ".join(repr(k[:40]) for k in unknown[:10])
        raise BadRequest(
            f"unknown query parameter{'s' if len(unknown) > 1 else ''} {names}; "
            f"want {', '.join(LIST_PARAMETERS)}"
        )
    last = query.get("lastrun", "false").lower()
    if last not in _TRUE | _FALSE:
        raise BadRequest(f"query parameter 'lastrun' must be true or false, got {last[:20]!r}")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest(f"query parameter 'order' must be asc or desc, got {order[:20]!r}")
    limit_text = query.get("limit")
    limit = None
    if limit_text is not None:
        try:
            limit = int(limit_text)
        except ValueError:
            raise BadRequest(f"query parameter 'limit' must be an integer, got {limit_text[:20]!r}") from None  # fmt: skip
    return ListQuery(
        groups=tuple(query.getall("group", ())),
        phases=_multi(query, "phase", Phase),
        results=_multi(query, "result", Result),
        last_run=last in _TRUE,
        order=order,
        limit=limit,
        cursor=query.get("cursor"),
    )
