"""The creation agent: runs asked for without a run id get one from the sequence, exactly once.

Two input topics, one agent (docs/events.md, "Creating a run without a run id"):

* ``runs.requests``: a :class:`~events.requests.RunRequest`, what ``POST /runs`` takes plus the
  producer's ``request_id`` → a ``run.created`` (event id ``<run id>.created``);
* ``runs.setup-errors``: a :class:`~events.requests.SetupErrorReport` from a webhook receiver
  that could not parse a project's config (and so cannot know how many runs it defines) → a
  ``run.setup_errors_reported`` (event id ``<run id>.reported``); its ``id`` is the request id,
  else the record's topic, partition and offset.

For each request the agent checks that it can form a run (the reducer's own creation rules, so no
id is spent on a request the materializer would refuse), maps the request id to a run id with a
create-only etcd key (a retried request, or one processed again after a crash, gets the same run
id and the same event id, which the reducer applies once), takes the run's number
(``datamanager.Counters``, per root group, as ``POST /runs`` does) and binds it to the request with
a second create-only key (so a retry sends the very same event), appends the event to ``runs.events``,
then replies on ``runs.replies`` (key = request id) with a
:class:`~events.requests.RequestReply`: ``created`` with the run id, or ``refused`` with the reason.
A request that cannot be read also goes to the dead-letter topic with its bytes, key and
timestamp (no reply when not even its request id can be read).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import msgspec
import orjson

from agents import keys
from agents.config import Settings
from agents.counters import RunNumbers
from agents.producer import EventProducer
from api.ports import KeyRecord
from api.service import creation_digest, key_reused_message
from datamanager import DataManagerError, IdAllocator
from datamanager.keys import sequence_key
from datamanager.kv import Kv
from events import BadRequest, counter_root, format_run_id, validate_group
from events.catalogue import (
    Event,
    Payload,
    SetupErrorsReported,
    make_event,
    run_created,
)
from events.creation import create_run
from events.errors import DecodeReason, validation_message
from events.requests import (
    MAX_REQUEST_ID,
    ReplyOutcome,
    RequestReply,
    RunRequest,
    SetupErrorReport,
)
from partition import metrics
from partition.materializer import DeadLetter
from partition.outbox import dead_letter_headers

__all__ = [
    "LEASE_SHARE",
    "Creation",
    "CreationKeys",
    "CreationService",
    "Refused",
    "SetupErrorService",
    "encode_reply",
    "read_report",
    "read_request",
]

log = logging.getLogger("runstream.creation")

_requests = msgspec.json.Decoder(RunRequest)
_reports = msgspec.json.Decoder(SetupErrorReport)
_encode = msgspec.json.Encoder().encode
_REQUEST_ID = re.compile("[!-~]+")  # events.requests.RequestId
#: The reason of a dead letter whose request was well-formed but cannot form a run.
BAD_REQUEST = "bad_request"


@dataclass(frozen=True, slots=True, kw_only=True)
class Creation:
    """One request, read and checked: what to create once its run id is known."""

    request_id: str
    etcd_key: str  # request id → run id, create-only
    data: Payload  # RunCreated or SetupErrorsReported
    suffix: str  # the event id is "<run id>.<suffix>"
    at: int | None  # the event time; None: when handled
    digest: str | None = None  # of what it creates (api.service.creation_digest); None: unchecked

    def event(self, run_id: str, now_ms: int) -> Event:
        at = now_ms if self.at is None else self.at
        return make_event(self.data, id=f"{run_id}.{self.suffix}", run_id=run_id, at=at)


class Refused(Exception):
    """A request that is not created: ``reason`` is a dead-letter reason code; ``request_id``
    is ``None`` when not even the request id could be read (then nobody can be replied to)."""

    def __init__(self, reason: str, message: str, request_id: str | None) -> None:
        super().__init__(message)
        self.reason, self.message, self.request_id = reason, message, request_id


def read_request(raw: bytes) -> Creation:
    """A creation request of ``runs.requests``. Raises :class:`Refused`."""
    try:
        req: RunRequest = _requests.decode(raw)
    except msgspec.ValidationError as exc:
        message = validation_message(exc, RunRequest)
        raise _refused(DecodeReason.SCHEMA, message, raw, "request_id") from None
    except msgspec.DecodeError as exc:
        raise Refused(DecodeReason.INVALID_JSON, str(exc), None) from None
    data = run_created(req)
    creation = Creation(
        request_id=req.request_id,
        etcd_key=keys.run_request_key(req.request_id),
        data=data,
        suffix="created",
        at=req.at,
        digest=creation_digest(data),
    )
    return _checked(creation)


def read_report(raw: bytes, *, fallback_id: str) -> Creation:
    """A setup-error report of ``runs.setup-errors`` (``fallback_id`` when it has no ``id``).
    Raises :class:`Refused`."""
    try:
        rep: SetupErrorReport = _reports.decode(raw)
    except msgspec.ValidationError as exc:
        message = validation_message(exc, SetupErrorReport)
        raise _refused(DecodeReason.SCHEMA, message, raw, "id", fallback_id) from None
    except msgspec.DecodeError as exc:
        raise Refused(DecodeReason.INVALID_JSON, str(exc), None) from None
    report_id = rep.id if rep.id is not None else fallback_id
    data = SetupErrorsReported(
        group=rep.group,
        errors=rep.errors,
        name=rep.name,
        static_environment=rep.static_environment,
        annotations=rep.annotations,
        counter=rep.counter,
    )
    creation = Creation(
        request_id=report_id,
        etcd_key=keys.setup_report_key(report_id),
        data=data,
        suffix="reported",
        at=rep.at,
    )
    return _checked(creation)


def _refused(
    reason: str, message: str, raw: bytes, field: str, fallback: str | None = None
) -> Refused:
    """A refusal naming the request id when the document has a readable one."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Refused(reason, message, None)
    rid = doc.get(field, fallback) if type(doc) is dict else None
    ok = type(rid) is str and len(rid) <= MAX_REQUEST_ID and _REQUEST_ID.fullmatch(rid)
    return Refused(reason, message, rid if ok else None)


def _checked(creation: Creation) -> Creation:
    """``creation`` if the materializer will create its run (the reducer's own rules, checked
    on a stand-in id), else :class:`Refused` — before any run id is spent on it."""
    made = create_run(creation.event(format_run_id(1), 0))
    if isinstance(made, str):
        raise Refused(BAD_REQUEST, made, creation.request_id)
    try:
        validate_group(creation.data.group)  # type: ignore[union-attr]  # both payloads have one
    except BadRequest as exc:  # the index is stricter than the run (as for POST /runs)
        raise Refused(BAD_REQUEST, str(exc), creation.request_id) from None
    return creation


class _Ids(Protocol):
    async def next(self) -> int: ...


#: The records of creation keys taken within ``retention / LEASE_SHARE`` seconds share one etcd
#: lease of ``retention + retention / LEASE_SHARE`` seconds: one lease grant per period instead
#: of one per creation, and every record lives at least ``retention`` (1 h more at most, for 24 h).
LEASE_SHARE = 24


#: Create-only puts in one group-committed etcd transaction at most (etcd's --max-txn-ops is 128
#: by default).
MAX_BATCH = 64


class CreationKeys:
    """The one record per creation key, for ``runs.requests`` and ``POST /runs`` alike: a
    request id, or an ``Idempotency-Key`` (the same name space: ``keys.run_request_key``), maps
    to the run id allocated for it and the digest of what it creates
    (``api.service.creation_digest``), in one create-only etcd key written *before* the run's
    event is appended, so a retry — after a 503, a crash, on another worker — finds the run id
    instead of allocating one. A second create-only key (``keys.request_number_key``) binds the
    run number the same way: before the append for a request of ``runs.requests``; over HTTP
    only when a try's outcome is unknown (``api.service``), so that a creation that is answered
    costs one etcd transaction more than one without a key. Setup-error reports use it too,
    without a digest.

    Value: ``b"<run id> <digest>"`` (a record written before digests were kept: ``b"<run id>"``,
    matched by any body). Retention: the keys carry an etcd lease of at least ``retention``
    seconds (shared, :data:`LEASE_SHARE`); ``retention`` 0 keeps them for ever. Implements
    ``api.ports.CreationKeys``.
    """

    def __init__(
        self,
        kv: Callable[[], Awaitable[Kv]],
        ids: _Ids,
        numbers: RunNumbers,
        *,
        retention: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kv, self._ids, self.numbers = kv, ids, numbers
        self.retention = retention
        self._clock = clock
        self._lease: tuple[int, float] | None = None  # (lease id, used until)
        self._lease_lock = asyncio.Lock()
        self._batch: _CreateBatch | None = None

    # --------------------------------------------------------------- api.ports.CreationKeys
    async def lookup_key(self, key: str) -> KeyRecord | None:
        kv = await self._kv()
        got = await kv.get(keys.run_request_key(key))
        return None if got is None else _record(got.value)

    async def claim_key(self, key: str, run_id: int, digest: str) -> bool:
        kv = await self._kv()
        return await self._create_only(kv, keys.run_request_key(key), f"{run_id} {digest}")

    async def bind_number(self, key: str, number: int) -> bool:
        kv = await self._kv()
        etcd_key = keys.request_number_key(keys.run_request_key(key))
        return await self._create_only(kv, etcd_key, str(number))

    async def number_for_key(self, key: str, root: str, run_id: str) -> int:
        return await self.number(keys.run_request_key(key), root, run_id)

    async def _create_only(self, kv: Kv, etcd_key: str, value: str) -> bool:
        """Put ``value`` at ``etcd_key`` unless it exists, under the shared lease.

        Group-committed: every etcd write is a raft proposal and a disk sync, so the
        create-only puts of concurrent creations go as one transaction (:class:`_CreateBatch`),
        while one is in flight; a lone one goes at once, as a single put."""
        batch = self._batch
        if batch is None or batch.kv is not kv:
            batch = self._batch = _CreateBatch(kv, self._create_one)
        return await batch.put(etcd_key, value.encode(), await self._lease_id(kv))

    async def _create_one(self, kv: Kv, etcd_key: str, value: bytes) -> bool:
        """One create-only put under the shared lease (a new lease if it was gone)."""
        for _ in range(3):
            lease = await self._lease_id(kv)
            try:
                made = await kv.compare_and_swap(etcd_key, value, mod_revision=None, lease=lease)
            except DataManagerError:
                if lease == 0:
                    raise
                self._lease = None  # the lease expired or was revoked: take a new one
                continue
            return made is not None
        raise RuntimeError(f"could not write {etcd_key} under a lease")

    # --------------------------------------------------------------------------- records
    async def record(self, etcd_key: str, digest: str | None) -> KeyRecord:
        """The record at ``etcd_key``: made now with a fresh run id (``fresh``) when there is
        none, else the one there. One etcd txn for a new key (the id comes from the allocator's
        block); a failed txn and one read for a key recorded already (the id taken for the txn
        is left unused: ids are monotonic, not dense)."""
        kv = await self._kv()
        for _ in range(10):
            candidate = await self._ids.next()
            value = str(candidate) if digest is None else f"{candidate} {digest}"
            if await self._create_only(kv, etcd_key, value):
                return KeyRecord(run_id=candidate, digest=digest, fresh=True)
            got = await kv.get(etcd_key)
            if got is not None:
                return _record(got.value)
        raise RuntimeError(f"could not map creation key {etcd_key} to a run id")

    async def number(self, etcd_key: str, root: str, run_id: str) -> int:
        """The run number bound to the record at ``etcd_key``, else the next of counter
        ``root``, bound now. Taken last, when only the append is left. Once bound, a number
        belongs to the key: a failed append is retried with the same run id, event id and
        number, so it is neither given back nor voided. Not bound (etcd failed, or another
        handler of the same key bound one first): given back when nobody took a later one,
        else voided, as ``POST /runs`` does."""
        kv = await self._kv()
        key = keys.request_number_key(etcd_key)
        got = await kv.get(key)
        if got is not None:
            return int(got.value)
        number = await self.numbers.next(root)
        try:
            bound = await self._create_only(kv, key, str(number))
        except BaseException:
            await self._unused(root, number, run_id, "outcome unknown")
            raise
        if bound:
            return number
        await self._unused(root, number, run_id, "the request was numbered by another handler")
        got = await kv.get(key)
        if got is None:
            raise RuntimeError(f"request number {key} vanished")
        return int(got.value)

    async def _unused(self, root: str, number: int, run_id: str, reason: str) -> None:
        if not await self.numbers.give_back(root, number):
            await self.numbers.void(root, number, run_id=run_id, reason=reason)

    async def _lease_id(self, kv: Kv) -> int:
        """The shared lease new records take (0: none, kept for ever)."""
        if self.retention <= 0:
            return 0
        now = self._clock()
        current = self._lease
        if current is not None and now < current[1]:
            return current[0]
        async with self._lease_lock:
            current = self._lease
            if current is not None and now < current[1]:
                return current[0]
            share = self.retention / LEASE_SHARE
            lease = await kv.grant_lease(math.ceil(self.retention + share))
            self._lease = (lease, self._clock() + share)
            return lease


#: A queued create-only put: etcd key, value, lease, the caller's answer.
_Put = tuple[str, bytes, int, "asyncio.Future[bool]"]


class _CreateBatch:
    """Create-only etcd puts of concurrent callers, committed together (group commit).

    A put that finds nothing in flight is sent at once; puts that come while a transaction is
    in flight wait for it and then go as one transaction of all of them
    (``Kv.create_all``, at most :data:`MAX_BATCH`, distinct keys). When that transaction fails
    (one of its keys exists: a retried key), each put of the batch is tried alone, so every
    caller gets its own answer. Puts carry the lease of the batch's first put."""

    def __init__(self, kv: Kv, one: Callable[[Kv, str, bytes], Awaitable[bool]]) -> None:
        self.kv = kv
        self._one = one
        self._queue: list[_Put] = []
        self._running = False
        self._task: asyncio.Future[None] | None = None

    async def put(self, etcd_key: str, value: bytes, lease: int) -> bool:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((etcd_key, value, lease, fut))
        if not self._running:
            self._running = True
            self._task = asyncio.ensure_future(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch: list[_Put] = []
                rest: list[_Put] = []
                seen: set[str] = set()
                for item in self._queue:
                    if item[0] in seen or item[2] != self._queue[0][2] or len(batch) >= MAX_BATCH:
                        rest.append(item)  # the same key twice, another lease: the next batch
                    else:
                        seen.add(item[0])
                        batch.append(item)
                self._queue = rest
                await self._commit(batch)
        finally:
            self._running = False

    async def _commit(self, batch: list[_Put]) -> None:
        try:
            if len(batch) > 1 and await self.kv.create_all(
                [(k, v) for k, v, _, _ in batch], lease=batch[0][2]
            ):
                results = [True] * len(batch)
            else:  # alone, or one key existed: each on its own
                results = [await self._one(self.kv, k, v) for k, v, _, _ in batch]
        except Exception as exc:
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (*_, fut), ok in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(ok)


def _record(value: bytes) -> KeyRecord:
    run_id, _, digest = value.decode().partition(" ")
    return KeyRecord(run_id=int(run_id), digest=digest or None, fresh=False)


def encode_reply(reply: RequestReply) -> bytes:
    return _encode(reply)


class CreationService:
    """Registers the creation agent on ``app`` for ``runs.requests`` and ``runs.setup-errors``."""

    def __init__(
        self, app: Any, settings: Settings, resources: Any, numbers: RunNumbers | None = None
    ) -> None:
        self.app = app
        self.settings = settings
        self.resources = resources
        self.numbers = numbers if numbers is not None else RunNumbers(resources)
        self._ids: IdAllocator | None = None
        self._keys: CreationKeys | None = None
        self._producer: EventProducer | None = None
        topics = app.runstream_topics
        app.agent(topics.setup_errors, name="runstream.setup_errors")(self._reports_agent)
        app.agent(topics.requests, name="runstream.requests")(self._requests_agent)

    async def _reports_agent(self, stream: Any) -> None:
        async for event in stream.events():
            await self.handle_message(self.settings.topic_setup_errors, event.message)

    async def _requests_agent(self, stream: Any) -> None:
        async for event in stream.events():
            await self.handle_message(self.settings.topic_requests, event.message)

    async def handle_message(self, topic: str, msg: Any) -> None:
        ts = None if msg.timestamp is None else round(msg.timestamp * 1000)
        await self.handle(topic, msg.value, msg.partition, msg.offset, key=msg.key, timestamp=ts)

    async def _deps(self) -> tuple[CreationKeys, EventProducer]:
        if self._keys is None:
            if self._ids is None:
                kv = await self.resources.kv()
                self._ids = IdAllocator(kv, sequence_key(keys.RUN_ID_SEQUENCE), block=100)
            ids = self._ids
            self._keys = CreationKeys(
                self.resources.kv, ids, self.numbers, retention=self.settings.creation_key_retention
            )
        if self._producer is None:
            self._producer = EventProducer(self.settings.kafka, self.settings.topic_events)
            await self._producer.start()
        return self._keys, self._producer

    async def handle(
        self,
        topic: str,
        raw: bytes,
        partition: int,
        offset: int,
        *,
        key: bytes | None = None,
        timestamp: int | None = None,
    ) -> None:
        """Create the run of one request (idempotent per request id) and reply."""
        try:
            if topic == self.settings.topic_setup_errors:
                creation = read_report(raw, fallback_id=f"{topic}/{partition}/{offset}")
            else:
                creation = read_request(raw)
        except Refused as exc:
            await self._refuse(topic, raw, partition, offset, exc, key, timestamp)
            return
        records, producer = await self._deps()
        record = await records.record(creation.etcd_key, creation.digest)
        if not record.matches(creation.digest):
            message = key_reused_message("request id", creation.request_id)
            refused = Refused(BAD_REQUEST, message, creation.request_id)
            await self._refuse(topic, raw, partition, offset, refused, key, timestamp)
            return
        run_id = format_run_id(record.run_id)
        creation = await self._numbered(records, creation, run_id)
        event = creation.event(run_id, int(time.time() * 1000))
        await producer.append([event])
        await self._reply(creation.request_id, ReplyOutcome.CREATED, run_id=run_id)
        log.info(
            "run created for a request",
            extra={"request_id": creation.request_id, "run_id": run_id, "topic": topic},
        )

    async def _numbered(self, records: CreationKeys, creation: Creation, run_id: str) -> Creation:
        """``creation`` with its run number (:meth:`CreationKeys.number`): the one bound to the
        request. A report that carries its own counter (a producer numbering its runs) keeps it."""
        data = creation.data
        if data.counter:  # type: ignore[union-attr]  # both payloads have one
            return creation
        root = counter_root(data.group)  # type: ignore[union-attr]
        number = await records.number(creation.etcd_key, root, run_id)
        return replace(creation, data=msgspec.structs.replace(data, counter=number))

    async def _reply(
        self, request_id: str, outcome: ReplyOutcome, *, run_id: str | None = None, reason: str = ""
    ) -> None:
        reply = RequestReply(
            request_id=request_id,
            outcome=outcome,
            run_id=run_id,
            reason=reason,
            at=int(time.time() * 1000),
        )
        await self.app.producer.send_and_wait(
            self.settings.topic_replies,
            request_id.encode(),
            encode_reply(reply),
            partition=None,
            timestamp=None,
            headers=None,
        )

    async def _refuse(
        self,
        topic: str,
        raw: bytes,
        partition: int,
        offset: int,
        exc: Refused,
        key: bytes | None,
        timestamp: int | None,
    ) -> None:
        dl = DeadLetter(reason=str(exc.reason), message=exc.message, offset=offset, raw=raw)
        metrics.DEAD_LETTERS.labels(dl.reason).inc()
        hdrs = dead_letter_headers(dl, topic, partition, timestamp_ms=timestamp)
        await self.app.producer.send_and_wait(
            self.settings.topic_dlq, key, raw, partition=None, timestamp=None, headers=hdrs
        )
        if exc.request_id is not None:
            await self._reply(exc.request_id, ReplyOutcome.REFUSED, reason=exc.message)
        log.warning(
            "request refused",
            extra={
                "topic": topic,
                "request_id": exc.request_id,
                "reason": str(exc.reason),
                "error": exc.message,
                "offset": offset,
            },
        )


#: The name the worker registers it under (it began as the setup-error agent).
SetupErrorService = CreationService
