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

import logging
import re
import time
from dataclasses import dataclass, replace
from typing import Any

import msgspec
import orjson

from agents import keys, metrics
from agents.config import Settings
from agents.counters import RunNumbers
from agents.materializer import DeadLetter
from agents.outbox import dead_letter_headers
from agents.producer import EventProducer
from datamanager import IdAllocator
from datamanager.keys import sequence_key
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

__all__ = [
    "Creation",
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

    async def _deps(self) -> tuple[IdAllocator, EventProducer, Any]:
        kv = await self.resources.kv()
        if self._ids is None:
            self._ids = IdAllocator(kv, sequence_key(keys.RUN_ID_SEQUENCE), block=100)
        if self._producer is None:
            self._producer = EventProducer(self.settings.kafka, self.settings.topic_events)
            await self._producer.start()
        return self._ids, self._producer, kv

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
        ids, producer, kv = await self._deps()
        run_id = format_run_id(await self._run_id_for(kv, ids, creation.etcd_key))
        creation = await self._numbered(kv, creation, run_id)
        event = creation.event(run_id, int(time.time() * 1000))
        await producer.append([event])
        await self._reply(creation.request_id, ReplyOutcome.CREATED, run_id=run_id)
        log.info(
            "run created for a request",
            extra={"request_id": creation.request_id, "run_id": run_id, "topic": topic},
        )

    async def _run_id_for(self, kv: Any, ids: IdAllocator, key: str) -> int:
        for _ in range(10):
            got = await kv.get(key)
            if got is not None:
                return int(got.value)
            candidate = await ids.next()
            if (
                await kv.compare_and_swap(key, str(candidate).encode(), mod_revision=None)
                is not None
            ):
                return candidate
        raise RuntimeError(f"could not map request {key} to a run id")

    async def _numbered(self, kv: Any, creation: Creation, run_id: str) -> Creation:
        """``creation`` with its run number: the one bound to the request if any, else the next
        of its root group, bound now. Taken last, when only the append is left. Once bound, a
        number belongs to the request: a failed append is retried with the same run id, event id
        and number (the message is handled again), so it is neither given back nor voided. Not
        bound (etcd failed, or another handler of the same request bound one first): given back
        when nobody took a later one, else voided, as ``POST /runs`` does. A report that carries
        its own counter (a producer numbering its runs) keeps it."""
        data = creation.data
        if data.counter:  # type: ignore[union-attr]  # both payloads have one
            return creation
        key = keys.request_number_key(creation.etcd_key)
        got = await kv.get(key)
        if got is None:
            root = counter_root(data.group)  # type: ignore[union-attr]
            number = await self.numbers.next(root)
            try:
                bound = await kv.compare_and_swap(key, str(number).encode(), mod_revision=None)
            except BaseException:
                await self._unused(root, number, run_id, "outcome unknown")
                raise
            if bound is not None:
                return replace(creation, data=msgspec.structs.replace(data, counter=number))
            await self._unused(root, number, run_id, "the request was numbered by another handler")
            got = await kv.get(key)
            if got is None:
                raise RuntimeError(f"request number {key} vanished")
        return replace(creation, data=msgspec.structs.replace(data, counter=int(got.value)))

    async def _unused(self, root: str, number: int, run_id: str, reason: str) -> None:
        if not await self.numbers.give_back(root, number):
            await self.numbers.void(root, number, run_id=run_id, reason=reason)

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
