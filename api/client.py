"""The Python client of the HTTP API (httpx): ``AsyncClient`` and ``Client``.

Every non-2xx answer raises the ``api.errors`` class of its status (``BadRequest`` 400,
``Unauthorized`` 401, ``NotFound`` 404, ``Conflict`` 409, ``Gone`` 410, ``PayloadTooLarge`` 413,
``ServerError`` 5xx, ``ApiError`` otherwise) carrying the status and the server's message; a body
that is not ``{"message": ...}`` gives a message with the status and the start of the body. No
answer at all raises ``Unreachable``. Methods return the decoded JSON bodies.

``watch`` follows ``GET /api/v1/runs/events``: it yields ``WatchEvent(cursor, event)`` and, when
the connection ends or breaks, reconnects with ``Last-Event-ID`` set to the last cursor seen, so
no event is lost or repeated. A cursor the log no longer retains raises ``Gone``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from api.errors import ApiError, Unreachable, error_for_status

__all__ = ["DEFAULT_URL", "AsyncClient", "Client", "WatchEvent", "error_from_response"]

DEFAULT_URL = "http://127.0.0.1:6066"
_BODY_PREVIEW = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchEvent:
    """One server-sent event: its resume ``cursor`` and the ``run.phase_changed`` envelope."""

    cursor: str
    event: dict[str, Any]


_Params = list[tuple[str, str | int | float | bool | None]]


@dataclass(frozen=True, slots=True)
class _Call:
    method: str
    path: str
    params: _Params | None = None
    body: Any = None
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


def _if_match(expected_seq: int | None) -> dict[str, str] | None:
    return None if expected_seq is None else {"If-Match": f'"{expected_seq}"'}


def _drop_none(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


class _Calls:
    """Request building shared by both clients (no I/O)."""

    @staticmethod
    def create(
        *,
        group: str,
        name: str | None,
        tasks: Sequence[Mapping[str, Any]],
        environment: Mapping[str, str] | None,
        static_environment: Mapping[str, str] | None,
        annotations: Mapping[str, str] | None,
        setup_errors: Sequence[str | Mapping[str, Any]],
    ) -> _Call:
        body = _drop_none(
            {
                "name": name,
                "group": group,
                "tasks": list(tasks),
                "environment": environment,
                "static_environment": static_environment,
                "annotations": annotations,
                "setup_errors": list(setup_errors) or None,
            }
        )
        return _Call("POST", "/api/v1/runs", body=body)

    @staticmethod
    def recreate(run_id: str, from_start: bool, environment: Mapping[str, str] | None) -> _Call:
        body = _drop_none({"run_id": run_id, "from_start": from_start, "environment": environment})
        return _Call("POST", "/api/v1/runs", body=body)

    @staticmethod
    def list(
        groups: Iterable[str],
        phases: Iterable[str],
        results: Iterable[str],
        last_run: bool,
        order: str,
        limit: int | None,
        cursor: str | None,
    ) -> _Call:
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
        return _Call("GET", "/api/v1/runs", params=params)

    @staticmethod
    def run_action(run_id: str, action: str, expected_seq: int | None) -> _Call:
        return _Call(
            "PUT",
            f"/api/v1/runs/{run_id}/actions",
            body={"action_type": action},
            headers=_if_match(expected_seq),
        )

    @staticmethod
    def task_action(
        run_id: str, task_id: str, body: dict[str, Any], expected_seq: int | None
    ) -> _Call:
        return _Call(
            "PUT",
            f"/api/v1/runs/{run_id}/tasks/{task_id}/actions",
            body=body,
            headers=_if_match(expected_seq),
        )


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _result(response: httpx.Response) -> Any:
    if not response.is_success:
        raise error_from_response(response.status_code, response.content)
    if response.status_code == 204 or not response.content:
        return None
    return orjson.loads(response.content)


def _content(call: _Call) -> bytes | None:
    return None if call.body is None else orjson.dumps(call.body)


def _headers(call: _Call) -> dict[str, str]:
    headers = dict(call.headers or {})
    if call.body is not None:
        headers["Content-Type"] = "application/json"
    return headers


class _SseParser:
    """Lines of a ``text/event-stream`` → events (the subset the server sends: id, data)."""

    def __init__(self) -> None:
        self.cursor: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> WatchEvent | None:
        if not line:
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return WatchEvent(cursor=self.cursor or "", event=orjson.loads(data))
        if line.startswith(":"):
            return None  # a comment: heartbeat
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            self.cursor = value
        elif name == "data":
            self._data.append(value)
        return None


class AsyncClient:
    """Async client; use ``async with AsyncClient(url) as c:`` or call ``aclose()``."""

    def __init__(
        self, base_url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 30.0
    ) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, headers=_auth(token), timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _do(self, call: _Call) -> Any:
        try:
            response = await self._http.request(
                call.method,
                call.path,
                params=call.params,
                content=_content(call),
                headers=_headers(call),
            )
        except httpx.TransportError as exc:
            raise Unreachable(f"{call.method} {call.path}: {exc!r}") from exc
        return _result(response)

    async def create_run(
        self,
        *,
        group: str,
        name: str | None = None,
        tasks: Sequence[Mapping[str, Any]] = (),
        environment: Mapping[str, str] | None = None,
        static_environment: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        setup_errors: Sequence[str | Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        """``{"run", "run_config", "seq"}`` of the new run."""
        call = _Calls.create(
            group=group, name=name, tasks=tasks, environment=environment,
            static_environment=static_environment, annotations=annotations, setup_errors=setup_errors,
        )  # fmt: skip
        result: dict[str, Any] = await self._do(call)
        return result

    async def recreate_run(
        self, run_id: str, *, from_start: bool = False, environment: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._do(_Calls.recreate(run_id, from_start, environment))
        return result

    async def get_run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._do(_Call("GET", f"/api/v1/runs/{run_id}"))
        return result

    async def list_runs(
        self,
        *,
        groups: Iterable[str] = (),
        phases: Iterable[str] = (),
        results: Iterable[str] = (),
        last_run: bool = False,
        order: str = "desc",
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """``{"runs": [...], "next_cursor": ...}``."""
        call = _Calls.list(groups, phases, results, last_run, order, limit, cursor)
        result: dict[str, Any] = await self._do(call)
        return result

    async def start(self, run_id: str, *, expected_seq: int | None = None) -> None:
        await self._do(_Calls.run_action(run_id, "start", expected_seq))

    async def cancel(self, run_id: str, *, expected_seq: int | None = None) -> None:
        await self._do(_Calls.run_action(run_id, "cancel", expected_seq))

    async def stop(self, run_id: str, *, expected_seq: int | None = None) -> None:
        await self._do(_Calls.run_action(run_id, "stop", expected_seq))

    async def approve_task(
        self, run_id: str, task_id: str, *, expected_seq: int | None = None
    ) -> None:
        await self._do(_Calls.task_action(run_id, task_id, {"action_type": "approve"}, expected_seq))  # fmt: skip

    async def set_task_annotations(
        self,
        run_id: str,
        task_id: str,
        annotations: Mapping[str, str],
        *,
        expected_seq: int | None = None,
    ) -> None:
        body = {"action_type": "setannotations", "annotations": dict(annotations)}
        await self._do(_Calls.task_action(run_id, task_id, body, expected_seq))

    async def watch(
        self, after: str | None = None, *, reconnect: bool = True, retry_delay: float = 1.0
    ) -> AsyncIterator[WatchEvent]:
        """Phase changes after cursor ``after`` (None: from now on), forever (see the module
        docstring). With ``reconnect=False`` it ends when the connection does."""
        last = after
        while True:
            try:
                async for item in self._watch_once(last):
                    last = item.cursor
                    yield item
            except (httpx.TransportError, Unreachable):
                if not reconnect:
                    raise
            if not reconnect:
                return
            await asyncio.sleep(retry_delay)

    async def _watch_once(self, after: str | None) -> AsyncIterator[WatchEvent]:
        headers = {"Accept": "text/event-stream"}
        if after is not None:
            headers["Last-Event-ID"] = after
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        async with self._http.stream("GET", "/api/v1/runs/events", headers=headers, timeout=timeout) as response:  # fmt: skip
            if not response.is_success:
                raise error_from_response(response.status_code, await response.aread())
            parser = _SseParser()
            async for line in response.aiter_lines():
                item = parser.feed(line)
                if item is not None:
                    yield item


class Client:
    """The blocking twin of :class:`AsyncClient` (same methods, same errors)."""

    def __init__(
        self, base_url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 30.0
    ) -> None:
        self._http = httpx.Client(base_url=base_url, headers=_auth(token), timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _do(self, call: _Call) -> Any:
        try:
            response = self._http.request(
                call.method,
                call.path,
                params=call.params,
                content=_content(call),
                headers=_headers(call),
            )
        except httpx.TransportError as exc:
            raise Unreachable(f"{call.method} {call.path}: {exc!r}") from exc
        return _result(response)

    def create_run(
        self,
        *,
        group: str,
        name: str | None = None,
        tasks: Sequence[Mapping[str, Any]] = (),
        environment: Mapping[str, str] | None = None,
        static_environment: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        setup_errors: Sequence[str | Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        call = _Calls.create(
            group=group, name=name, tasks=tasks, environment=environment,
            static_environment=static_environment, annotations=annotations, setup_errors=setup_errors,
        )  # fmt: skip
        result: dict[str, Any] = self._do(call)
        return result

    def recreate_run(
        self, run_id: str, *, from_start: bool = False, environment: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = self._do(_Calls.recreate(run_id, from_start, environment))
        return result

    def get_run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._do(_Call("GET", f"/api/v1/runs/{run_id}"))
        return result

    def list_runs(
        self,
        *,
        groups: Iterable[str] = (),
        phases: Iterable[str] = (),
        results: Iterable[str] = (),
        last_run: bool = False,
        order: str = "desc",
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        call = _Calls.list(groups, phases, results, last_run, order, limit, cursor)
        result: dict[str, Any] = self._do(call)
        return result

    def start(self, run_id: str, *, expected_seq: int | None = None) -> None:
        self._do(_Calls.run_action(run_id, "start", expected_seq))

    def cancel(self, run_id: str, *, expected_seq: int | None = None) -> None:
        self._do(_Calls.run_action(run_id, "cancel", expected_seq))

    def stop(self, run_id: str, *, expected_seq: int | None = None) -> None:
        self._do(_Calls.run_action(run_id, "stop", expected_seq))

    def approve_task(self, run_id: str, task_id: str, *, expected_seq: int | None = None) -> None:
        self._do(_Calls.task_action(run_id, task_id, {"action_type": "approve"}, expected_seq))

    def set_task_annotations(
        self,
        run_id: str,
        task_id: str,
        annotations: Mapping[str, str],
        *,
        expected_seq: int | None = None,
    ) -> None:
        body = {"action_type": "setannotations", "annotations": dict(annotations)}
        self._do(_Calls.task_action(run_id, task_id, body, expected_seq))

    def watch(
        self, after: str | None = None, *, reconnect: bool = True, retry_delay: float = 1.0
    ) -> Iterator[WatchEvent]:
        """See :meth:`AsyncClient.watch`."""
        last = after
        while True:
            try:
                for item in self._watch_once(last):
                    last = item.cursor
                    yield item
            except (httpx.TransportError, Unreachable):
                if not reconnect:
                    raise
            if not reconnect:
                return
            time.sleep(retry_delay)

    def _watch_once(self, after: str | None) -> Iterator[WatchEvent]:
        headers = {"Accept": "text/event-stream"}
        if after is not None:
            headers["Last-Event-ID"] = after
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        with self._http.stream("GET", "/api/v1/runs/events", headers=headers, timeout=timeout) as response:  # fmt: skip
            if not response.is_success:
                raise error_from_response(response.status_code, response.read())
            parser = _SseParser()
            for line in response.iter_lines():
                item = parser.feed(line)
                if item is not None:
                    yield item
