"""The API's use cases, free of HTTP: create, recreate, read, act on runs and tasks.

Writes are events. A write loads the run's newest state (cache or source, see ``api.cache``),
checks it by calling the pure reducer on the event (a refusal is a 400 with the reducer's
reason), appends the event to the log, and remembers the reducer's result for read-your-writes.
The materializer later applies the same event to the same state and reaches the same result.

Within one process, writes to one run are serialized (a per-run lock), so two concurrent
actions cannot both pass against the same state. Across processes the materializer is the
referee: a request it refuses later is recorded as a rejection, never applied. A caller that
must not act on a stale state sends the revision it saw (``expected_seq``): 409 if it moved.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from api.bodies import (
    CreateRequest,
    ListQuery,
    RecreateRequest,
    RunAction,
    TaskAction,
    TaskActionRequest,
)
from api.cache import WriteCache, newer
from api.errors import BadRequest, Conflict, NotFound
from api.ports import ApiDeps
from events import (
    CancelRequested,
    CannotRecreate,
    Event,
    Payload,
    Rejected,
    RunCreated,
    RunState,
    StartRequested,
    StopRequested,
    TaskAnnotationsSet,
    TaskApproved,
    apply,
    can_recreate,
    check_create,
    format_run_id,
    make_event,
    recreate,
)
from indexer import Page, validate_group

__all__ = ["RunService"]

_RUN_ACTIONS: dict[RunAction, Payload] = {
    RunAction.START: StartRequested(),
    RunAction.CANCEL: CancelRequested(),
    RunAction.STOP: StopRequested(),
}


class RunService:
    """The use cases behind the routes; raises ``api.errors`` (and ``events.BadRequest``,
    ``indexer.QueryError``, which the middleware maps to 400)."""

    def __init__(self, deps: ApiDeps, cache: WriteCache) -> None:
        self.deps = deps
        self.cache = cache
        self._locks: dict[str, list[Any]] = {}  # run id → [lock, users]

    async def load(self, run_id: str) -> RunState | None:
        """The newest state of ``run_id`` this process knows (cached write or source)."""
        cached = self.cache.get(run_id)
        source = await self.deps.runs.get(run_id)
        best = newer(cached, source)
        if cached is not None and best is source:
            self.cache.forget(run_id)
        return best

    async def get(self, run_id: str) -> RunState:
        state = await self.load(run_id)
        if state is None:
            raise NotFound(f"run {run_id} not found")
        return state

    def list_runs(self, q: ListQuery) -> Page:
        from indexer import Order

        return self.deps.index.list_runs(
            groups=q.groups,
            phases=q.phases or None,
            results=q.results or None,
            last_run=q.last_run,
            order=Order(q.order),
            limit=q.limit,
            cursor=q.cursor,
        )

    async def create(self, req: CreateRequest) -> RunState:
        """A new run (``setuperror`` when its tasks are inconsistent or it carries setup
        errors). 400 before any id is spent when the request cannot form a run."""
        check_create(group=req.group, tasks=req.tasks, setup_errors=req.setup_errors)
        validate_group(req.group)  # the index is stricter (no control characters)
        run_id = format_run_id(await self.deps.ids.next())
        data = RunCreated(
            name=req.name,
            group=req.group,
            tasks=req.tasks,
            environment=req.environment,
            static_environment=req.static_environment,
            annotations=req.annotations,
            setup_errors=req.setup_errors,
        )
        return await self._commit(None, self._event(data, run_id, f"{run_id}.created"))

    async def recreate(self, req: RecreateRequest) -> RunState:
        """A new run made from run ``req.run_id`` (DESIGN.md's recreation rules)."""
        old = await self.get(req.run_id)
        reason = can_recreate(old, from_start=req.from_start)
        if reason is not None:
            raise CannotRecreate(reason)
        run_id = format_run_id(await self.deps.ids.next())
        data = recreate(
            old, new_run_id=run_id, environment=req.environment, from_start=req.from_start
        )
        return await self._commit(None, self._event(data, run_id, f"{run_id}.created"))

    async def run_action(
        self,
        run_id: str,
        action: RunAction,
        expected_seq: int | None,
        idempotency_key: str | None = None,
    ) -> None:
        await self._act(
            run_id, _RUN_ACTIONS[action], expected_seq, task_id=None, key=idempotency_key
        )

    async def task_action(
        self,
        run_id: str,
        task_id: str,
        req: TaskActionRequest,
        expected_seq: int | None,
        idempotency_key: str | None = None,
    ) -> None:
        data: Payload
        if req.action is TaskAction.APPROVE:
            data = TaskApproved(task_id=task_id)
        else:
            data = TaskAnnotationsSet(task_id=task_id, annotations=req.annotations)
        await self._act(run_id, data, expected_seq, task_id=task_id, key=idempotency_key)

    async def _act(
        self,
        run_id: str,
        data: Payload,
        expected_seq: int | None,
        *,
        task_id: str | None,
        key: str | None = None,
    ) -> None:
        async with self._lock(run_id):
            state = await self.get(run_id)
            if expected_seq is not None and state.seq != expected_seq:
                raise Conflict(
                    f"run {run_id} is at revision {state.seq}, not {expected_seq}: "
                    "it changed meanwhile; read it again"
                )
            if task_id is not None and task_id not in state.run.tasks:
                raise NotFound(f"run {run_id} has no task {task_id!r}")
            # Without a key, a fresh id per request: two requests are two facts. With an
            # Idempotency-Key, the id is derived from it, so a retried request is the same event
            # and the reducer applies it once, whichever API process the retry reaches.
            event_id = uuid.uuid4().hex if key is None else _keyed_event_id(run_id, key, data)
            await self._commit(state, self._event(data, run_id, event_id))

    def _event(self, data: Payload, run_id: str, event_id: str) -> Event:
        return make_event(data, id=event_id, run_id=run_id, at=self.deps.clock())

    async def _commit(self, state: RunState | None, event: Event) -> RunState:
        outcome = apply(state, event)
        if isinstance(outcome, Rejected):
            raise BadRequest(outcome.reason)
        if outcome.duplicate:
            return outcome.state  # a retry of an applied request: nothing to append
        await self.deps.sink.append([event])
        self.cache.put(outcome.state)
        return outcome.state

    @asynccontextmanager
    async def _lock(self, run_id: str) -> AsyncIterator[None]:
        entry = self._locks.get(run_id)
        if entry is None:
            entry = self._locks[run_id] = [asyncio.Lock(), 0]
        entry[1] += 1  # holders and waiters: the lock is dropped when none is left
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[run_id]


def _keyed_event_id(run_id: str, key: str, data: Payload) -> str:
    """The event id of a keyed request: the same key and action on the same run give the same id."""
    digest = hashlib.blake2b(f"{run_id}\0{type(data).__name__}\0{key}".encode(), digest_size=12)
    return f"key.{digest.hexdigest()}"
