"""The Python client of the HTTP API (httpx): ``AsyncClient``, written once, and ``Client``, its
blocking facade (each method runs the async one on a private event loop).

Every shape is the server's own Struct: request bodies are built from ``api.bodies`` (``NewRun``,
``ClaimTask``...) and answers decoded into ``api.views`` and ``api.history`` (``RunWithConfig``,
``RunPage``, ``History``, ``TaskClaim``, ``StuckRuns``, ``ExecutorSeen``), so a method returns
typed objects (``run.run.phase``, ``page.runs[0].id``). A body is converted as the server decodes
it (a malformed field is ``BadRequest`` in the server's words, before anything is sent); the
rules beyond the fields are the server's to judge.

Every non-2xx answer raises the ``api.errors`` class of its status (``BadRequest`` 400,
``Unauthorized`` 401, ``NotFound`` 404, ``Conflict`` 409, ``Gone`` 410, ``PayloadTooLarge`` 413,
``ServerError`` 5xx, ``ApiError`` otherwise) carrying the status and the server's message; a body
that is not ``{"message": ...}`` gives a message with the status and the start of the body. No
answer at all raises ``Unreachable``.

A 503 (the run's partition has no settled owner: a rebalance, the owner still loading) is retried
with bounded backoff (``api.wire.RETRIES``, honouring ``Retry-After``). Actions carry an
``Idempotency-Key`` (the caller's, or one made per call), so a retried action is applied once. A
creation answered 503 after its event was appended (the owner moved while it waited) can, when
retried, make a second run: the first one's id is not known to the caller.

``watch`` follows ``GET /api/v1/runs/events``: it yields ``WatchEvent(cursor, event)`` (the
``run.phase_changed`` event, decoded by ``events.decode``) and, when the connection ends or
breaks, reconnects with ``Last-Event-ID`` set to the last cursor seen, so no event is lost or
repeated. A cursor the log no longer retains raises ``Gone``.
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
import msgspec

from api.bodies import (
    ApproveTask,
    ClaimTask,
    HeartbeatRequest,
    NewRun,
    ReportStatus,
    RunAction,
    SetTaskAnnotations,
    explain,
)
from api.errors import BadRequest, Unreachable
from api.history import History
from api.views import ExecutorSeen, RunPage, RunWithConfig, StuckRuns, TaskClaim
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
    decode_body,
    error_from_response,
    headers_of,
    retry_delay,
    with_retry_key,
)
from events import Event, RunConfigTask, SetupError, decode
from events.executors import DEFAULT_LEASE_MS

__all__ = ["DEFAULT_URL", "AsyncClient", "Client", "WatchEvent", "error_from_response"]

_T = TypeVar("_T")
#: A task as a caller may give it: the Struct, or its JSON object (``{"id", "name", ...}``).
TaskSpec = RunConfigTask | Mapping[str, Any]
#: A setup error as a caller may give it: a message, the Struct, or its JSON object.
SetupErrorSpec = str | SetupError | Mapping[str, Any]


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

    async def _send(self, call: Call) -> httpx.Response:
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
        return response

    async def _do(self, call: Call) -> None:
        """A call answered without a body (204)."""
        body_of(await self._send(call))

    async def _get(self, call: Call, kind: type[_T]) -> _T:
        """A call whose answer is a ``kind`` (the server's Struct)."""
        response = await self._send(call)
        return decode_body(body_of(response), kind, response.status_code)

    async def create_run(
        self,
        *,
        group: str,
        name: str | None = None,
        tasks: Sequence[TaskSpec] = (),
        environment: Mapping[str, str] | None = None,
        static_environment: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        setup_errors: Sequence[SetupErrorSpec] = (),
        idempotency_key: str | None = None,
    ) -> RunWithConfig:
        """The new run, its config and revision. ``idempotency_key``: the same run however
        often the creation is sent (a webhook's delivery id, say); without one the client makes
        a key per call, so its own retries after a 503 never make a second run. Tasks and
        setup errors are Structs or their JSON values."""
        body = _body(
            NewRun,
            group=group,
            name=name,
            tasks=tasks,
            environment=environment,
            static_environment=static_environment,
            annotations=annotations,
            setup_errors=setup_errors,
        )
        call = Calls.create(body)
        if idempotency_key is not None:
            call = Call(call.method, call.path, call.params, call.body, {"Idempotency-Key": idempotency_key})  # fmt: skip
        return await self._get(call, RunWithConfig)

    async def recreate_run(
        self, run_id: str, *, from_start: bool = False, environment: Mapping[str, str] | None = None
    ) -> RunWithConfig:
        return await self._get(Calls.recreate(run_id, from_start, environment), RunWithConfig)

    async def get_run(self, run_id: str) -> RunWithConfig:
        return await self._get(Call("GET", f"/api/v1/runs/{run_id}"), RunWithConfig)

    async def run_history(self, run_id: str) -> History:
        """Every event judged for the run, in log order (``History.events``)."""
        return await self._get(Call("GET", f"/api/v1/runs/{run_id}/history"), History)

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
    ) -> RunPage:
        """One page: ``runs`` (``indexer.RunEntry``) and ``next_cursor``."""
        call = Calls.list(groups, phases, results, last_run, order, limit, cursor)
        return await self._get(call, RunPage)

    async def start(
        self, run_id: str, *, expected_seq: int | None = None, idempotency_key: str | None = None
    ) -> None:
        await self._do(Calls.run_action(run_id, RunAction.START, expected_seq, idempotency_key))

    async def cancel(
        self, run_id: str, *, expected_seq: int | None = None, idempotency_key: str | None = None
    ) -> None:
        await self._do(Calls.run_action(run_id, RunAction.CANCEL, expected_seq, idempotency_key))

    async def stop(
        self, run_id: str, *, expected_seq: int | None = None, idempotency_key: str | None = None
    ) -> None:
        await self._do(Calls.run_action(run_id, RunAction.STOP, expected_seq, idempotency_key))

    async def approve_task(
        self,
        run_id: str,
        task_id: str,
        *,
        expected_seq: int | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        await self._do(Calls.task_action(run_id, task_id, ApproveTask(), expected_seq, idempotency_key))  # fmt: skip

    async def set_task_annotations(
        self,
        run_id: str,
        task_id: str,
        annotations: Mapping[str, str],
        *,
        expected_seq: int | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        body = _body(SetTaskAnnotations, annotations=annotations)
        await self._do(Calls.task_action(run_id, task_id, body, expected_seq, idempotency_key))

    async def claim(
        self,
        run_id: str,
        task_id: str,
        executor_id: str,
        *,
        lease_ms: int | None = None,
        idempotency_key: str | None = None,
    ) -> TaskClaim:
        """Executor ``executor_id`` claims task ``task_id`` (its lease: ``lease_ms``, else the
        default, 30 s): the claim (``executor_id``, ``attempt``, ``lease_ms``) once the run's
        owner applied it. ``Conflict`` (409, code ``task_held``) when another executor holds
        the task: its message names the holder. A retry of the call (a 503) is the same event:
        it carries one ``Idempotency-Key`` (``idempotency_key``, or one made here)."""
        body = _body(ClaimTask, executor_id=executor_id, lease_ms=lease_ms)
        key = idempotency_key or f"client.{uuid.uuid4().hex}"
        path = f"{_task_path(run_id, task_id)}/claim"
        return await self._get(
            Call("POST", path, body=body, headers={"Idempotency-Key": key}), TaskClaim
        )

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
        body = _body(ReportStatus, status=status, executor_id=executor_id)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        await self._do(Call("PUT", f"{_task_path(run_id, task_id)}/status", body=body, headers=headers))  # fmt: skip

    async def stuck(self, older_than: float = 600) -> StuckRuns:
        """The active runs of every worker with no progress for ``older_than`` seconds, oldest
        first (``runs``), and whether some worker did not answer (``partial``)."""
        params: list[tuple[str, str | int | float | bool | None]] = [("older_than", int(older_than))]  # fmt: skip
        return await self._get(Call("GET", "/api/v1/stuck", params=params), StuckRuns)

    async def heartbeat(self, executor_id: str, *, lease_ms: int = DEFAULT_LEASE_MS) -> None:
        """Executor ``executor_id`` is alive: its claims hold ``lease_ms`` more (any worker
        appends it; returns once Kafka acknowledged it). Send one every ``lease_ms / 3``."""
        path = f"/api/v1/executors/{quote(executor_id, safe='')}/heartbeat"
        await self._do(Call("POST", path, body=_body(HeartbeatRequest, lease_ms=lease_ms)))

    async def get_executor(self, executor_id: str) -> ExecutorSeen:
        """The last heartbeat of ``executor_id`` the worker heard (``NotFound``: none)."""
        path = f"/api/v1/executors/{quote(executor_id, safe='')}"
        return await self._get(Call("GET", path), ExecutorSeen)

    async def watch(
        self, after: str | None = None, *, reconnect: bool = True, retry_delay: float = 1.0
    ) -> AsyncGenerator[WatchEvent[Event], None]:
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

    async def _watch_once(self, after: str | None) -> AsyncIterator[WatchEvent[Event]]:
        headers = {"Accept": "text/event-stream"}
        if after is not None:
            headers["Last-Event-ID"] = after
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        async with self._http.stream("GET", "/api/v1/runs/events", headers=headers, timeout=timeout) as response:  # fmt: skip
            if not response.is_success:
                raise error_from_response(response.status_code, await response.aread())
            parser = SseParser(decode)
            async for line in response.aiter_lines():
                item = parser.feed(line)
                if item is not None:
                    yield item


def _body(kind: type[_T], **values: Any) -> _T:
    """The request Struct ``kind`` (``api.bodies``) of ``values`` (None: not given), each a
    Struct or its JSON values, converted as the server decodes a body: a malformed one is
    ``BadRequest`` in the server's words, before anything is sent. Rules beyond the fields
    (``NewRun.check``) are the server's to judge."""
    try:
        return msgspec.convert({k: v for k, v in values.items() if v is not None}, kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid request body: {explain(exc, kind)}") from None


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
