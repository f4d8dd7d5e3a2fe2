"""The Python client of the HTTP API (httpx): ``AsyncClient``, written once, and ``Client``, its
blocking facade (each method runs the async one on a private event loop).

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
import functools
import threading
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import quote

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
from events.executors import DEFAULT_LEASE_MS

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
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """``{"run", "run_config", "seq"}`` of the new run. ``idempotency_key``: the same run
        however often the creation is sent (a webhook's delivery id, say); without one the
        client makes a key per call, so its own retries after a 503 never make a second run."""
        call = Calls.create(
            group=group, name=name, tasks=tasks, environment=environment,
            static_environment=static_environment, annotations=annotations, setup_errors=setup_errors,
        )  # fmt: skip
        if idempotency_key is not None:
            call = Call(call.method, call.path, call.params, call.body, {"Idempotency-Key": idempotency_key})  # fmt: skip
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

    async def run_history(self, run_id: str) -> dict[str, Any]:
        """``{"run_id", "events"}``: every event judged for the run, in log order."""
        result: dict[str, Any] = await self._do(Call("GET", f"/api/v1/runs/{run_id}/history"))
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

    async def claim(
        self,
        run_id: str,
        task_id: str,
        executor_id: str,
        *,
        lease_ms: int | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Executor ``executor_id`` claims task ``task_id`` (its lease: ``lease_ms``, else the
        server's default, 30 s): ``{"run_id", "task_id", "executor_id", "attempt", "lease_ms"}``
        once the run's owner applied it. ``Conflict`` (409, code ``task_held``) when another
        executor holds the task: its message names the holder. A retry of the call (a 503) is
        the same event: it carries one ``Idempotency-Key`` (``idempotency_key``, or one made
        here)."""
        body: dict[str, Any] = {"executor_id": executor_id}
        if lease_ms is not None:
            body["lease_ms"] = lease_ms
        key = idempotency_key or f"client.{uuid.uuid4().hex}"
        path = f"{_task_path(run_id, task_id)}/claim"
        result: dict[str, Any] = await self._do(
            Call("POST", path, body=body, headers={"Idempotency-Key": key})
        )
        return result

    async def report(
        self,
        run_id: str,
        task_id: str,
        status: str,
        executor_id: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> None:
        """Report task ``task_id``'s ``status`` (``running``, ``success``, ``failed``, ...) as
        executor ``executor_id``; returns once the run's owner applied it. ``Conflict`` (409)
        when another executor holds the task (``task_held``), this one lost it
        (``lease_lapsed``) or the task is past that status (``task_transition``)."""
        body: dict[str, Any] = {"status": status}
        if executor_id is not None:
            body["executor_id"] = executor_id
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        await self._do(Call("PUT", f"{_task_path(run_id, task_id)}/status", body=body, headers=headers))  # fmt: skip

    async def stuck(self, older_than: float = 600) -> dict[str, Any]:
        """``{"runs": [{"run_id", "group", "phase", "since", "tasks"}], "partial"}``: the active
        runs of every worker with no progress for ``older_than`` seconds, oldest first."""
        params: list[tuple[str, str | int | float | bool | None]] = [("older_than", int(older_than))]  # fmt: skip
        result: dict[str, Any] = await self._do(Call("GET", "/api/v1/stuck", params=params))
        return result

    async def heartbeat(self, executor_id: str, *, lease_ms: int = DEFAULT_LEASE_MS) -> None:
        """Executor ``executor_id`` is alive: its claims hold ``lease_ms`` more (any worker
        appends it; returns once Kafka acknowledged it). Send one every ``lease_ms / 3``."""
        path = f"/api/v1/executors/{quote(executor_id, safe='')}/heartbeat"
        await self._do(Call("POST", path, body={"lease_ms": lease_ms}))

    async def get_executor(self, executor_id: str) -> dict[str, Any]:
        """The last heartbeat of ``executor_id`` the worker heard (``NotFound``: none)."""
        path = f"/api/v1/executors/{quote(executor_id, safe='')}"
        result: dict[str, Any] = await self._do(Call("GET", path))
        return result

    async def watch(
        self, after: str | None = None, *, reconnect: bool = True, retry_delay: float = 1.0
    ) -> AsyncGenerator[WatchEvent, None]:
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


def _task_path(run_id: str, task_id: str) -> str:
    """The path of a task (its id percent-encoded: a task id may hold any character)."""
    return f"/api/v1/runs/{run_id}/tasks/{quote(task_id, safe='')}"


P = ParamSpec("P")
T = TypeVar("T")


def _blocking(
    method: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[Client, P], T]:
    """The blocking form of an ``AsyncClient`` method: the same signature and result, run on
    the client's private event loop."""

    def call(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(method(self._async, *args, **kwargs))

    functools.update_wrapper(call, method)
    return call


def _blocking_iter(
    method: Callable[Concatenate[AsyncClient, P], AsyncGenerator[T, None]],
) -> Callable[Concatenate[Client, P], Iterator[T]]:
    """The blocking form of an ``AsyncClient`` async generator: one item per step of the loop;
    leaving the iteration closes the async generator (and its connection)."""

    def call(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        items = method(self._async, *args, **kwargs)

        async def step() -> T:
            return await anext(items)

        try:
            while True:
                try:
                    item = self._run(step())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            self._run(items.aclose())

    functools.update_wrapper(call, method)
    return call


class Client:
    """The blocking facade of :class:`AsyncClient`: the same methods, errors, 503 retries and
    ``watch`` semantics, because every call *is* the async client's, run on a private event
    loop in a background thread (so it works from any thread, with or without a running loop
    of its own). Use ``with Client(url) as c:`` or call ``close()``."""

    def __init__(
        self, base_url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 30.0
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="runstream-client", daemon=True
        )
        self._thread.start()

        async def make() -> AsyncClient:  # httpx binds its pool to the loop that uses it
            return AsyncClient(base_url, token=token, timeout=timeout)

        self._async = self._run(make())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # interrupted (Ctrl-C): do not leave the call running
            raise

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and stop the loop's thread; idempotent."""
        if self._loop.is_closed():
            return
        self._run(self._async.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    create_run = _blocking(AsyncClient.create_run)
    recreate_run = _blocking(AsyncClient.recreate_run)
    get_run = _blocking(AsyncClient.get_run)
    run_history = _blocking(AsyncClient.run_history)
    list_runs = _blocking(AsyncClient.list_runs)
    start = _blocking(AsyncClient.start)
    cancel = _blocking(AsyncClient.cancel)
    stop = _blocking(AsyncClient.stop)
    approve_task = _blocking(AsyncClient.approve_task)
    set_task_annotations = _blocking(AsyncClient.set_task_annotations)
    claim = _blocking(AsyncClient.claim)
    report = _blocking(AsyncClient.report)
    stuck = _blocking(AsyncClient.stuck)
    heartbeat = _blocking(AsyncClient.heartbeat)
    get_executor = _blocking(AsyncClient.get_executor)
    watch = _blocking_iter(AsyncClient.watch)
