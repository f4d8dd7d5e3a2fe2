"""The client's parts without I/O: request building, error parsing, retry timing, the SSE line
parser (``api.client.AsyncClient`` does the I/O; ``Client`` runs it).

Request bodies are the server's own Structs (``api.bodies``), encoded by msgspec; answers are
decoded into the server's own response Structs (``api.views``, ``api.history``) by
:func:`decode_body`, so the client and the server share one declaration of every shape.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

import httpx
import msgspec
import orjson

from api.bodies import RecreateRun, RunAction, RunActionRequest, TaskActionRequest
from api.errors import ApiError, error_for_status

__all__ = [
    "DEFAULT_URL",
    "RETRIES",
    "Call",
    "Calls",
    "SseParser",
    "WatchEvent",
    "auth_headers",
    "body_of",
    "content_of",
    "decode_body",
    "error_from_response",
    "headers_of",
    "retry_delay",
    "with_retry_key",
]

DEFAULT_URL = "http://127.0.0.1:6066"
_BODY_PREVIEW = 200

#: How many times a client retries a 503 (no settled owner, owner loading) before raising it.
RETRIES = 8
_BACKOFF_BASE, _BACKOFF_CAP = 0.1, 2.0


def retry_delay(attempt: int, retry_after: str | None) -> float:
    """Seconds before retry ``attempt`` (0-based): exponential from 0.1 s, at most 2 s, and never
    shorter than the server's ``Retry-After`` (itself capped at 4 s)."""
    delay: float = min(_BACKOFF_CAP, _BACKOFF_BASE * float(2 ** min(attempt, 16)))
    if retry_after is not None and retry_after.isdigit():
        delay = max(delay, min(float(retry_after), 2 * _BACKOFF_CAP))
    return delay


#: The POSTs that honour ``Idempotency-Key``: creation and recreation, and a task's claim.
_KEYED_POSTS = re.compile(r"/api/v1/runs(?:/[^/]+/tasks/[^/]+/claim)?")


def with_retry_key(call: Call) -> Call:
    """``call`` with an ``Idempotency-Key`` when it is a write that honours one and has none (an
    action, a creation, a claim): a retry (after a 503, whose outcome is unknown) is then the
    same request, applied at most once however often it is sent — a retried creation never makes
    a second run."""
    if call.headers and "Idempotency-Key" in call.headers:
        return call
    if call.method != "PUT" and not (call.method == "POST" and _KEYED_POSTS.fullmatch(call.path)):
        return call
    headers = dict(call.headers or {})
    headers["Idempotency-Key"] = f"client.{uuid.uuid4().hex}"
    return Call(call.method, call.path, call.params, call.body, headers)


T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchEvent(Generic[T]):
    """One server-sent event: its resume ``cursor`` and the envelope it carries (from
    ``AsyncClient.watch``: the ``run.phase_changed`` event, an ``events.Event``)."""

    cursor: str
    event: T


_Params = list[tuple[str, str | int | float | bool | None]]


@dataclass(frozen=True, slots=True)
class Call:
    """One request; ``body`` is a request Struct (``api.bodies``), encoded as JSON."""

    method: str
    path: str
    params: _Params | None = None
    body: msgspec.Struct | None = None
    headers: dict[str, str] | None = None


def error_from_response(status: int, content: bytes) -> ApiError:
    """The error for a non-2xx answer: the server's ``message``, else the start of the body."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return error_for_status(status, body["message"])
    preview = content[:_BODY_PREVIEW].decode("utf-8", "replace")
    return error_for_status(status, f"unknown api error (status {status}): {preview!r}")


def _if_match(expected_seq: int | None, key: str | None = None) -> dict[str, str] | None:
    headers = {} if expected_seq is None else {"If-Match": f'"{expected_seq}"'}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers or None


class Calls:
    """Request building shared by both clients (no I/O)."""

    @staticmethod
    def create(body: msgspec.Struct) -> Call:
        """``POST /runs`` with a ``NewRun`` (or a ``RecreateRun``)."""
        return Call("POST", "/api/v1/runs", body=body)

    @staticmethod
    def recreate(run_id: str, from_start: bool, environment: Mapping[str, str] | None) -> Call:
        body = RecreateRun(run_id=run_id, from_start=from_start, environment=environment or {})
        return Call("POST", "/api/v1/runs", body=body)

    @staticmethod
    def list(
        groups: Iterable[str],
        phases: Iterable[str],
        results: Iterable[str],
        last_run: bool,
        order: str,
        limit: int | None,
        cursor: str | None,
    ) -> Call:
        params: _Params = [("group", g) for g in groups]
        params += [("phase", p) for p in phases]
        params += [("result", r) for r in results]
        if last_run:
            params.append(("lastrun", "true"))
        params.append(("order", order))
        if limit is not None:
            params.append(("limit", str(limit)))
        if cursor is not None:
            params.append(("cursor", cursor))
        return Call("GET", "/api/v1/runs", params=params)

    @staticmethod
    def run_action(
        run_id: str, action: RunAction, expected_seq: int | None, key: str | None = None
    ) -> Call:
        return Call(
            "PUT",
            f"/api/v1/runs/{run_id}/actions",
            body=RunActionRequest(action_type=action),
            headers=_if_match(expected_seq, key),
        )

    @staticmethod
    def task_action(
        run_id: str,
        task_id: str,
        body: TaskActionRequest,
        expected_seq: int | None,
        key: str | None = None,
    ) -> Call:
        return Call(
            "PUT",
            f"/api/v1/runs/{run_id}/tasks/{task_id}/actions",
            body=body,
            headers=_if_match(expected_seq, key),
        )


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def body_of(response: httpx.Response) -> bytes:
    """The body of a 2xx answer (b"" for a 204); raises the ``api.errors`` class of any other."""
    if not response.is_success:
        raise error_from_response(response.status_code, response.content)
    return response.content


def decode_body(content: bytes, kind: type[T], status: int = 200) -> T:
    """``content`` (a 2xx answer) decoded into ``kind``, the server's own Struct. An answer the
    Struct does not describe (a server of another version) raises ``ApiError`` with the status
    and what did not fit."""
    try:
        return msgspec.json.decode(content, type=kind)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ApiError(f"the answer (status {status}) is not a {kind.__name__}: {exc}", status=status) from None  # fmt: skip


_encode = msgspec.json.Encoder().encode


def content_of(call: Call) -> bytes | None:
    return None if call.body is None else _encode(call.body)


def headers_of(call: Call) -> dict[str, str]:
    headers = dict(call.headers or {})
    if call.body is not None:
        headers["Content-Type"] = "application/json"
    return headers


class SseParser(Generic[T]):
    """Lines of a ``text/event-stream`` → events (the subset the server sends: id, data), each
    decoded by ``decode`` (``events.decode`` for typed events; default: the JSON values)."""

    @overload
    def __init__(self: SseParser[Any]) -> None: ...
    @overload
    def __init__(self, decode: Callable[[bytes], T]) -> None: ...
    def __init__(self, decode: Callable[[bytes], Any] = orjson.loads) -> None:
        self.cursor: str | None = None
        self._data: list[str] = []
        self._decode = decode

    def feed(self, line: str) -> WatchEvent[T] | None:
        if not line:
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return WatchEvent(cursor=self.cursor or "", event=self._decode(data.encode()))
        if line.startswith(":"):
            return None  # a comment: heartbeat
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            self.cursor = value
        elif name == "data":
            self._data.append(value)
        return None
