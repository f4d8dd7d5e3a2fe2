"""The API's use cases at the owner of a run's partition, free of HTTP: create, recreate, read,
act on runs and tasks.

Everything here runs on the worker that owns the run's partition (``api.handlers`` relays the
request there first): reads come from the materializer's live state, and a write is an event
that is answered only after that materializer judged it (``Owners.write``): the reducer's result
*there* is the answer — 201/204 when applied, 400 with its reason when refused. Before appending,
the same reducer checks the event against the live state, so a request that cannot pass is
refused without adding an event to the log; the answer still comes from the apply, since another
producer may append to the run in between.

Writes to one run are serialized in this process (a per-run lock), so two concurrent API
actions on a run are judged one after the other; a caller that must not act on a stale state
sends the revision it saw (``expected_seq``): 409 if it moved.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from msgspec import UNSET

from api.bodies import (
    ClaimTask,
    CreateRequest,
    ListQuery,
    RecreateRequest,
    ReportStatus,
    RunAction,
    TaskAction,
    TaskActionRequest,
)
from api.errors import ApiError, BadRequest, Conflict, NotFound, PayloadTooLarge, Unavailable
from api.ports import ApiDeps, CreationKeys, KeyRecord, Refused, StoreUnavailable
from api.views import TaskClaim
from api.waiting import Waiting, waiting
from events import (
    Applied,
    CancelRequested,
    CannotRecreate,
    CreationFields,
    Event,
    Payload,
    Phase,
    RunCreated,
    RunState,
    StartRequested,
    StopRequested,
    TaskAnnotationsSet,
    TaskApproved,
    TaskClaimed,
    TaskStatusChanged,
    apply,
    can_recreate,
    check_create,
    counter_root,
    format_run_id,
    make_event,
    recreate,
    run_created,
)
from events.model import attempt_of, holder_of
from indexer import MAX_LIMIT, Order, Page

__all__ = [
    "KEY_REUSED_STATUS",
    "RUN_ID_TAKEN",
    "RunService",
    "check_creatable",
    "creation_digest",
    "key_reused_message",
    "task_refusal",
]

#: The ``code`` of the 409 a creation gets when its run id is already used.
RUN_ID_TAKEN = "run_id_taken"

_RUN_ACTIONS: dict[RunAction, Payload] = {
    RunAction.START: StartRequested(),
    RunAction.CANCEL: CancelRequested(),
    RunAction.STOP: StopRequested(),
}

#: The status of a creation whose ``Idempotency-Key`` was used for another body (422, as the
#: IETF's Idempotency-Key draft says: the request is well-formed, but cannot be processed as
#: sent — a retry cannot help, so not 409, which clients retry after a re-read).
KEY_REUSED_STATUS = 422

_canonical = msgspec.json.Encoder(order="sorted").encode

#: Pages of a group's running runs read for what a queued run waits for (100 runs a page).
_GROUP_PAGES = 10

#: Reads the newest state of any run, wherever its owner is (recreation needs the old run).
StateReader = Callable[[str], Awaitable[RunState | None]]


def check_creatable(req: CreationFields) -> None:
    """400 unless ``req`` can form a run (checked before any run id is spent)."""
    check_create(group=req.group, tasks=req.tasks, setup_errors=req.setup_errors)


def creation_digest(what: RunCreated | RecreateRequest) -> str:
    """The digest of what a creation makes, recorded beside its key's run id: the
    ``run.created`` payload of a new run (``run_created``, no number yet; a ``POST /runs`` body
    and a ``runs.requests`` record that create the same run have the same digest), or the
    recreation asked for. Canonical: keys sorted, so the order of a body's fields does not
    matter."""
    prefix = b"created\0" if isinstance(what, RunCreated) else b"recreated\0"
    return hashlib.blake2b(prefix + _canonical(what), digest_size=16).hexdigest()


def key_reused_message(what: str, key: str) -> str:
    """The refusal of a creation whose key was recorded with another body."""
    return (
        f"{what} {key!r} was used for a different creation request; a retry must send the "
        "same body, a new request a new key"
    )


class RunService:
    """The use cases behind the routes; raises ``api.errors`` (and ``events.BadRequest``,
    ``indexer.QueryError``, which the middleware maps to 400)."""

    def __init__(self, deps: ApiDeps) -> None:
        self.deps = deps
        self._locks: dict[str, list[Any]] = {}  # run id → [lock, users]

    async def get(self, run_id: str) -> RunState:
        """The live state of a run of an owned partition; 404 when there is no such run."""
        state = await self.deps.owners.read(run_id)
        if state is None:
            raise NotFound(f"run {run_id} not found")
        return state

    def list_runs(self, q: ListQuery) -> Page:
        return self.deps.index.list_runs(
            groups=q.groups,
            phases=q.phases or None,
            results=q.results or None,
            last_run=q.last_run,
            order=Order(q.order),
            limit=q.limit,
            cursor=q.cursor,
        )

    async def create(
        self,
        req: CreateRequest,
        run_id: str,
        key: str | None = None,
        *,
        seen: bool = False,
        number: int | None = None,
    ) -> RunState:
        """Run ``run_id`` (allocated by the caller, in a partition owned here) from ``req``:
        ``setuperror`` when its tasks are inconsistent or it carries setup errors. 409
        ``run_id_taken`` when a run with that id exists already. With an ``Idempotency-Key``
        ``key`` (``run_id`` is the one recorded for it): :meth:`_create_keyed`."""
        check_creatable(req)
        if key is not None:
            return await self._create_keyed(run_id, run_created(req), key, seen=seen, number=number)  # fmt: skip
        return await self._create(run_id, run_created(req))

    async def recreate(
        self,
        req: RecreateRequest,
        run_id: str,
        read_any: StateReader,
        key: str | None = None,
        *,
        seen: bool = False,
    ) -> RunState:
        """Run ``run_id`` made from run ``req.run_id`` (the recreation rules of ``events.recreate``); the old
        run is read through ``read_any`` from its own owner."""
        if key is not None and seen:
            state = await self.deps.owners.read(run_id)
            if state is not None:
                return state
        old = await read_any(req.run_id)
        if old is None:
            raise NotFound(f"run {req.run_id} not found")
        reason = can_recreate(old, from_start=req.from_start)
        if reason is not None:
            raise CannotRecreate(reason)
        data = recreate(
            old, new_run_id=run_id, environment=req.environment, from_start=req.from_start
        )
        if key is not None:
            return await self._create_keyed(run_id, data, key, seen=seen)
        return await self._create(run_id, data)

    async def _create_keyed(
        self, run_id: str, data: RunCreated, key: str, *, seen: bool, number: int | None = None
    ) -> RunState:
        """The creation of ``Idempotency-Key`` ``key``, whose record says ``run_id``: the run as
        it is when it exists already (``seen``: the record was there before this request, so
        an earlier try may have created it — one read of the live state), else its
        ``run.created`` under the event id ``<run id>.created`` — the same on every try, so the
        owner applies one and answers the others as duplicates (with the run, like the first).

        The run number: for a new record, the next of its root group, taken last as for any
        creation and bound to the key only when the outcome is unknown (so the retry uses it),
        given back when not used; for a found record (a retry), the one bound to the key, or
        the next, bound now."""
        if seen:
            state = await self.deps.owners.read(run_id)
            if state is not None:
                return state
        root = counter_root(data.group)
        event = self._event(data, run_id, f"{run_id}.created")
        check = apply(None, event)
        if not isinstance(check, Applied):  # the reducer refused it
            await self._give_back(root, number, run_id, "refused")
            raise BadRequest(check.reason)
        records, counters = self.deps.creation_keys, self.deps.counters
        if records is None:
            raise Unavailable("this worker does not keep creation keys; retry elsewhere")
        if counters is not None and number is None and not seen:
            try:
                number = await counters.next(root)
            except StoreUnavailable as exc:
                raise Unavailable(f"run numbers cannot be taken now ({exc}); retry") from exc
        bound = number is None
        if counters is not None:
            if number is None:
                try:
                    number = await records.number_for_key(key, root, run_id)
                except StoreUnavailable as exc:
                    raise Unavailable(f"run numbers cannot be taken now ({exc}); retry") from exc
            event = self._event(msgspec.structs.replace(data, counter=number), run_id, event.id)
        unbound = None if bound else number  # a number this try must keep or give back
        try:
            outcome = await self.deps.owners.write(event)
        except PayloadTooLarge:
            await self._give_back(root, unbound, run_id, "too large for the log")
            raise
        except BaseException:  # the outcome is unknown: the number goes with the key
            if unbound is not None:
                await self._keep_number(key, root, unbound, run_id)
            raise
        if isinstance(outcome, Refused):  # the run exists: created by an earlier try, answer it
            await self._give_back(root, unbound, run_id, "created by an earlier try")
            state = await self.deps.owners.read(run_id)
            if state is None:
                raise Conflict(f"run id {run_id} is already used ({outcome.reason})", code=RUN_ID_TAKEN)  # fmt: skip
            return state
        if outcome.duplicate and outcome.state.run.counter != unbound:
            await self._give_back(root, unbound, run_id, "created by an earlier try")
        return outcome.state

    async def key_record(
        self, records: CreationKeys, key: str, new_id: int, digest: str, group: str | None
    ) -> tuple[KeyRecord | None, int | None]:
        """The record of ``Idempotency-Key`` ``key``: claimed now for run ``new_id`` (a fresh
        record), else the one a try of the same key made first (None when it vanished), and
        the run number taken for a fresh record.

        With ``group`` (a plain creation that this worker answers) the number of ``group``'s
        root is taken *at the same time* as the claim: two etcd writes in flight together cost
        about one, so a key adds little to a creation's latency (docs/api.md, "Idempotent
        creation"). When the claim is not made (a retry), that number is given back (or
        voided) while the record is read."""
        counters = self.deps.counters
        if group is None or counters is None:
            if await records.claim_key(key, new_id, digest):
                return KeyRecord(run_id=new_id, digest=digest, fresh=True), None
            return await records.lookup_key(key), None
        run_id = format_run_id(new_id)
        taking = asyncio.ensure_future(counters.next(counter_root(group)))
        try:
            claimed = await records.claim_key(key, new_id, digest)
        except BaseException:
            await self._drop_number(group, taking, run_id, "the key could not be claimed")
            raise
        if not claimed:
            dropped = self._drop_number(group, taking, run_id, "the key was claimed before")
            record, _ = await asyncio.gather(records.lookup_key(key), dropped)
            return record, None
        try:
            number = await taking
        except StoreUnavailable as exc:
            raise Unavailable(f"run numbers cannot be taken now ({exc}); retry") from exc
        return KeyRecord(run_id=new_id, digest=digest, fresh=True), number

    async def _drop_number(
        self, group: str, taking: Awaitable[int], run_id: str, reason: str
    ) -> None:
        """A number taken ahead by ``taking`` will not be used: given back, else voided."""
        try:
            number = await taking
        except Exception:
            return  # none was taken
        await self.give_back_number(group, number, run_id, reason)

    async def give_back_number(
        self, group: str, number: int | None, run_id: str, reason: str
    ) -> None:
        await self._give_back(counter_root(group), number, run_id, reason)

    async def _keep_number(self, key: str, root: str, number: int, run_id: str) -> None:
        """Bind ``number`` to ``key`` for the retry (the outcome is unknown: the event may still
        be applied with it). When another try bound one first, ``number`` is voided, never
        given back: it may be the run's."""
        records, counters = self.deps.creation_keys, self.deps.counters
        try:
            if records is not None and await records.bind_number(key, number):
                return
            if counters is not None:
                await counters.void(root, number, run_id=run_id, reason="outcome unknown")
        except Exception:
            return  # etcd failed too: the number stays taken (a gap), never handed out again

    async def _give_back(self, root: str, number: int | None, run_id: str, reason: str) -> None:
        counters = self.deps.counters
        if number is None or counters is None:
            return
        try:
            if not await counters.give_back(root, number):
                await counters.void(root, number, run_id=run_id, reason=reason)
        except Exception:
            return  # best effort: etcd failed; the number stays taken (a gap)

    async def _create(self, run_id: str, data: RunCreated) -> RunState:
        # No read first: for a new id that would cost a storage read per creation. The owner's
        # reducer refuses a creation only when the run exists (active, or in the final-id set).
        event = self._event(data, run_id, f"{run_id}.created")
        check = apply(None, event)
        if not isinstance(check, Applied):  # the reducer refused it
            raise BadRequest(check.reason)
        # The run number is taken last, when only the append and the owner's judgement are left
        # (datamanager.counters: a number a failed creation kept is given back or voided).
        counters, root = self.deps.counters, counter_root(data.group)
        if counters is not None:
            try:
                number = await counters.next(root)
            except StoreUnavailable as exc:
                raise Unavailable(f"run numbers cannot be taken now ({exc}); retry") from exc
            event = self._event(msgspec.structs.replace(data, counter=number), run_id, event.id)
        try:
            outcome = await self.deps.owners.write(event)
        except PayloadTooLarge:
            await self._number_unused(root, event, "too large for the log")
            raise
        except BaseException:
            if counters is not None:  # the outcome is unknown: the event may still be applied
                await counters.void(root, number, run_id=run_id, reason="outcome unknown")
            raise
        # Refused: the run exists. A duplicate: a creation with the same event id was applied
        # before — another producer's, since this id was allocated for this request alone.
        if isinstance(outcome, Refused) or outcome.duplicate:
            why = outcome.reason if isinstance(outcome, Refused) else "created by another producer"
            await self._number_unused(root, event, f"run id taken ({why})")
            raise Conflict(f"run id {run_id} is already used ({why})", code=RUN_ID_TAKEN)
        return outcome.state

    async def _number_unused(self, root: str, event: Event, reason: str) -> None:
        """The creation ``event`` was not applied: give its number back, else void it."""
        counters = self.deps.counters
        if counters is None:
            return
        number = event.data.counter  # type: ignore[union-attr]
        if not await counters.give_back(root, number):
            await counters.void(root, number, run_id=event.run_id, reason=reason)

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

    # ------------------------------------------------------------------ executors (issue 20)
    async def claim(
        self, run_id: str, task_id: str, req: ClaimTask, idempotency_key: str | None = None
    ) -> TaskClaim:
        """Executor ``req.executor_id`` claims task ``task_id`` (``task.claimed``), judged by
        the owner like every write: the claim it applied (or had applied: a retry with the same
        ``Idempotency-Key``, or the holder's renewal); 409 ``task_held`` naming the holder when
        another executor holds it (:func:`task_refusal`); 404 for an unknown run or task."""
        data = TaskClaimed(task_id=task_id, executor_id=req.executor_id, lease_ms=req.lease_ms)
        state = await self._act(
            run_id, data, None, task_id=task_id, key=idempotency_key,
            refused=task_refusal, keyed_id=_keyed_task_event_id,
        )  # fmt: skip
        task = state.run.tasks[task_id]
        lease = task.lease_ms if task.lease_ms is not UNSET else req.lease_ms
        return TaskClaim(
            run_id=run_id,
            task_id=task_id,
            executor_id=holder_of(task) or req.executor_id,
            attempt=attempt_of(task),
            lease_ms=lease,
        )

    async def report(
        self, run_id: str, task_id: str, req: ReportStatus, idempotency_key: str | None = None
    ) -> None:
        """A task's status as an executor reports it (``task.status_changed``), judged by the
        owner; 409 ``task_held`` / ``lease_lapsed`` / ``task_transition`` with the reducer's
        reason (:func:`task_refusal`), 400 for the other refusals, 404 for an unknown run or
        task."""
        data = TaskStatusChanged(task_id=task_id, status=req.status, executor_id=req.executor_id)
        await self._act(
            run_id, data, None, task_id=task_id, key=idempotency_key,
            refused=task_refusal, keyed_id=_keyed_task_event_id,
        )  # fmt: skip

    def group_running(self, group: str) -> list[str]:
        """The ids of the runs of ``group`` (that very group, not the groups under it) that run,
        as the run index lists them: what the scheduler counts against its limit."""
        out: list[str] = []
        cursor: str | None = None
        for _ in range(_GROUP_PAGES):
            page = self.deps.index.list_runs(
                groups=(group,), phases=(Phase.RUNNING,), order=Order.ASC, limit=MAX_LIMIT,
                cursor=cursor,
            )  # fmt: skip
            out += [e.id for e in page.runs if e.group == group]
            cursor = page.next_cursor
            if cursor is None:
                break
        return out

    def waiting(self, state: RunState) -> Waiting | None:
        """What run ``state`` waits for (``api.waiting``), with its group's running runs from
        the index when it is queued."""
        limit = self.deps.max_running_per_group
        queued = state.run.phase is Phase.QUEUED
        running = self.group_running(state.run.group) if queued else []
        return waiting(state, group_running=running, max_running=limit)

    async def _act(
        self,
        run_id: str,
        data: Payload,
        expected_seq: int | None,
        *,
        task_id: str | None,
        key: str | None = None,
        refused: Callable[[str], ApiError] = BadRequest,
        keyed_id: Callable[[str, str, Payload], str] | None = None,
    ) -> RunState:
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
            # and the reducer applies it once, whichever worker the retry reaches.
            derive = keyed_id or _keyed_event_id
            event_id = uuid.uuid4().hex if key is None else derive(run_id, key, data)
            return await self._commit(state, self._event(data, run_id, event_id), refused)

    def _event(self, data: Payload, run_id: str, event_id: str) -> Event:
        return make_event(data, id=event_id, run_id=run_id, at=self.deps.clock())

    async def _commit(
        self,
        state: RunState | None,
        event: Event,
        refused: Callable[[str], ApiError] = BadRequest,
    ) -> RunState:
        """Check ``event`` against ``state``, append it, and answer with the owner's judgement
        (a refusal: ``refused(reason)``, 400 unless the caller says otherwise)."""
        check = apply(state, event)
        if not isinstance(check, Applied):  # the reducer refused it
            raise refused(check.reason)
        if check.duplicate:
            return check.state  # a retry of an applied request: nothing to append
        outcome = await self.deps.owners.write(event)
        if isinstance(outcome, Refused):
            raise refused(outcome.reason)
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


def _keyed_task_event_id(run_id: str, key: str, data: Payload) -> str:
    """The event id of a keyed claim or status report: derived from the key *and* what the
    request says (task, executor, status, lease), so a key reused for another request is
    another event, never a duplicate that silently changes nothing."""
    body = msgspec.json.encode(data)
    digest = hashlib.blake2b(
        b"\0".join((run_id.encode(), type(data).__name__.encode(), body, key.encode())),
        digest_size=12,
    )
    return f"key.{digest.hexdigest()}"


#: Refusals of a claim or a status report that are conflicts with the task's state, answered
#: 409 with a ``code``: (words of the reducer's reason, code). The codes and words are those of
#: ``partition.admission.refusal_code`` (``api`` may not import ``agents``; a unit test keeps the
#: two in step), matched in the same order. Any other refusal is 400, as for every action.
_TASK_CONFLICTS = (
    (" is held by executor ", "task_held"),
    (": its lease lapsed", "lease_lapsed"),
    ("cannot be claimed: it ended", "task_transition"),
    ("cannot go from", "task_transition"),
)


def task_refusal(reason: str) -> ApiError:
    """The answer to a refused claim or status report: 409 with the code for a conflict with
    the task's state (another executor holds it, this executor lost it, the task is past that
    status), else 400; the reducer's reason is the message."""
    for words, code in _TASK_CONFLICTS:
        if words in reason:
            return Conflict(reason, code=code)
    return BadRequest(reason)
