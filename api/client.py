"""The Python client of the HTTP API (httpx): ``AsyncClient`` and ``Client``.

Every non-2xx answer raises the ``api.errors`` class of its status (``BadRequest`` 400,
``Unauthorized`` 401, ``NotFound`` 404, ``Conflict`` 409, ``Gone`` 410, ``PayloadTooLarge`` 413,
``ServerError`` 5xx, ``ApiError`` otherwise) carrying the status and the server's message; a body
that is not ``{"message": ...}`` gives a message with the status and the start of the body. No
answer at all raises ``Unreachable``. Methods return the decoded JSON bodies.

A 503 (the run's partition has no settled owner: a rebalance, the owner still loading) is retried
with bounded backoff (``api.wire.RETRIES``, honouring ``Retry-After``). Actions carry an
``Idempotency-Key`` (the caller's, or one made per call), so a retried action is applied once. A
creation answered 503 after its event was appended (the owner moved while it waited) can, when
retried, make a second run: the first one's id is not known to the caller.

``watch`` follows ``GET /api/v1/runs/events``: it yields ``WatchEvent(cursor, event)`` and, when
the connection ends or breaks, reconnects with ``Last-Event-ID`` set to the last cursor seen, so
no event is lost or repeated. A cursor the log no longer retains raises ``Gone``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any

import httpx

from api.errors import Unreachable
from api.wire import (
    DEFAULT_URL,
    RETRIES,
    Call,
    Calls,
    SseParser,
    WatchEvent,
    auth_headers,
    body_of,
    content_of,
    error_from_response,
    headers_of,
    retry_delay,
    with_retry_key,
)

__all__ = ["DEFAULT_URL", "AsyncClient", "Client", "WatchEvent", "error_from_response"]


class AsyncClient:
    """Async client; use ``async with AsyncClient(url) as c:`` or call ``aclose()``."""

    def __init__(
        self, base_url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 30.0
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=auth_headers(token), timeout=timeout
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _do(self, call: Call) -> Any:
        call = with_retry_key(call)
        for attempt in range(RETRIES + 1):
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    content=content_of(call),
                    headers=headers_of(call),
                )
            except httpx.TransportError as exc:
                raise Unreachable(f"{call.method} {call.path}: {exc!r}") from exc
            if response.status_code != 503 or attempt == RETRIES:
                break
            await asyncio.sleep(retry_delay(attempt, response.headers.get("Retry-After")))
        return body_of(response)

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
        call = Calls.create(
            group=group, name=name, tasks=tasks, environment=environment,
            static_environment=static_environment, annotations=annotations, setup_errors=setup_errors,
        )  # fmt: skip
        result: dict[str, Any] = await self._do(call)
        return result

    async def recreate_run(
        self, run_id: str, *, from_start: bool = False, environment: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._do(Calls.recreate(run_id, from_start, environment))
        return result

    async def get_run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._do(Call("GET", f"/api/v1/runs/{run_id}"))
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
        call = Calls.list(groups, phases, results, last_run, order, limit, cursor)
        result: dict[str, Any] = await self._do(call)
        return result

    async def start(
        self, run_id: str, *, expected_seq: int | None = None, idempotency_key: str | None = None
    ) -> None:
        await self._do(Calls.run_action(run_id, "start", expected_seq, idempotency_key))

    async def cancel(
        self, run_id: str, *, expected_seq: int | None = None, idempotency_key: str | None = None
    ) -> None:
        await self._do(Calls.run_action(run_id, "cancel", expected_seq, idempotency_key))

    async def stop(
        self, run_id: str, *, expected_seq: int | None = None, idempotency_key: str | None = None
    ) -> None:
        await self._do(Calls.run_action(run_id, "stop", expected_seq, idempotency_key))

    async def approve_task(
        self,
        run_id: str,
        task_id: str,
        *,
        expected_seq: int | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        await self._do(Calls.task_action(run_id, task_id, {"action_type": "approve"}, expected_seq, idempotency_key))  # fmt: skip

    async def set_task_annotations(
        self,
        run_id: str,
        task_id: str,
        annotations: Mapping[str, str],
        *,
        expected_seq: int | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        body = {"action_type": "setannotations", "annotations": dict(annotations)}
        await self._do(Calls.task_action(run_id, task_id, body, expected_seq, idempotency_key))

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
            parser = SseParser()
            async for line in response.aiter_lines():
                item = parser.feed(line)
                if item is not None:
                    yield item


class Client:
    """The blocking twin of :class:`AsyncClient` (same methods, same errors)."""

    def __init__(
        self, base_url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 30.0
    ) -> None:
        self._http = httpx.Client(base_url=base_url, headers=auth_headers(token), timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _do(self, call: Call) -> Any:
        call = with_retry_key(call)
        for attempt in range(RETRIES + 1):
            try:
                response = self._http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    content=content_of(call),
                    headers=headers_of(call),
                )
            except httpx.TransportError as exc:
                raise Unreachable(f"{call.method} {call.path}: {exc!r}") from exc
            if response.status_code != 503 or attempt == RETRIES:
                break
            time.sleep(retry_delay(attempt, response.headers.get("Retry-After")))
        return body_of(response)

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
        call = Calls.create(
            group=group, name=name, tasks=tasks, environment=environment,
            static_environment=static_environment, annotations=annotations, setup_errors=setup_errors,
        )  # fmt: skip
        result: dict[str, Any] = self._do(call)
        return result

    def recreate_run(
        self, run_id: str, *, from_start: bool = False, environment: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = self._do(Calls.recreate(run_id, from_start, environment))
        return result

    def get_run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._do(Call("GET", f"/api/v1/runs/{run_id}"))
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
        call = Calls.list(groups, phases, results, last_run, order, limit, cursor)
        result: dict[str, Any] = self._do(call)
        return result

    def start(
        self, run_id: str, *, expected_seq: int | None = None, idempotency_key: str | None = None
    ) -> None:
        self._do(Calls.run_action(run_id, "start", expected_seq, idempotency_key))

    def cancel(
        self, run_id: str, *, expected_seq: int | None = None, idempotency_key: str | None = None
    ) -> None:
        self._do(Calls.run_action(run_id, "cancel", expected_seq, idempotency_key))

    def stop(
        self, run_id: str, *, expected_seq: int | None = None, idempotency_key: str | None = None
    ) -> None:
        self._do(Calls.run_action(run_id, "stop", expected_seq, idempotency_key))

    def approve_task(
        self,
        run_id: str,
        task_id: str,
        *,
        expected_seq: int | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        self._do(
            Calls.task_action(
                run_id, task_id, {"action_type": "approve"}, expected_seq, idempotency_key
            )
        )

    def set_task_annotations(
        self,
        run_id: str,
        task_id: str,
        annotations: Mapping[str, str],
        *,
        expected_seq: int | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        body = {"action_type": "setannotations", "annotations": dict(annotations)}
        self._do(Calls.task_action(run_id, task_id, body, expected_seq, idempotency_key))

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
            parser = SseParser()
            for line in response.iter_lines():
                item = parser.feed(line)
                if item is not None:
                    yield item
