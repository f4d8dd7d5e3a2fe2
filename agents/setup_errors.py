"""The setup-error agent: a report on ``runs.setup-errors`` becomes a run in phase ``setuperror``.

A webhook receiver that cannot parse a project's config cannot know how many runs it defines, so
it reports once, without a run id::

    {"id": "<unique report id>", "group": "/project/p1/branch/main", "name": "Setup Error",
     "static_environment": {...}, "annotations": {...},
     "errors": [{"message": "...", "task_ids": []}], "at": <ms since epoch>}

The agent allocates a run id and appends a ``run.setup_errors_reported`` event to ``runs.events``.
Exactly once: the report id → run id mapping is stored in etcd with a create-only transaction, and
the event id is derived from the run id, so a report processed twice (crash before the offset
commit) maps to the same run and the same event, which the reducer ignores the second time. A
report without an id uses its topic, partition and offset as id. A malformed report goes to the
dead-letter topic with its bytes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from agents import keys, metrics
from agents.config import Settings
from agents.materializer import DeadLetter
from agents.pipeline import dead_letter_headers
from agents.producer import EventProducer
from datamanager import IdAllocator
from datamanager.keys import sequence_key
from events import format_run_id
from events.catalogue import Event, EventType
from events.codec import decode
from events.errors import DecodeError, DecodeReason

__all__ = ["SetupErrorService", "parse_report"]

log = logging.getLogger("runstream.setup_errors")

_FIELDS = ("group", "name", "static_environment", "annotations", "errors", "counter")


def parse_report(raw: bytes, *, run_id: str, fallback_id: str, now_ms: int) -> tuple[str, Event]:
    """(report id, ``run.setup_errors_reported`` event for ``run_id``). Raises ``DecodeError``
    (``invalid_json`` or ``schema``) naming what is wrong; validation is the events codec's."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(DecodeReason.INVALID_JSON, str(exc)) from None
    if type(doc) is not dict:
        raise DecodeError(DecodeReason.SCHEMA, "a setup-error report is a JSON object")
    report_id = doc.get("id", fallback_id)
    if type(report_id) is not str or not report_id or len(report_id) > 200:
        raise DecodeError(
            DecodeReason.SCHEMA, "id must be a non-empty string of at most 200 characters"
        )
    unknown = set(doc) - {*_FIELDS, "id", "at"}
    if unknown:
        raise DecodeError(DecodeReason.SCHEMA, f"unknown fields: {', '.join(sorted(unknown))}")
    envelope = {
        "type": EventType.SETUP_ERRORS_REPORTED.value,
        "version": 1,
        "id": f"{run_id}.reported",
        "run_id": run_id,
        "at": doc.get("at", now_ms),
        "data": {k: doc[k] for k in _FIELDS if k in doc},
    }
    return report_id, decode(orjson.dumps(envelope))


class SetupErrorService:
    """Registers the setup-error agent on ``app``."""

    def __init__(self, app: Any, settings: Settings, resources: Any) -> None:
        self.app = app
        self.settings = settings
        self.resources = resources
        self._ids: IdAllocator | None = None
        self._producer: EventProducer | None = None
        topics = app.runstream_topics
        app.agent(topics.setup_errors, name="runstream.setup_errors")(self._agent)

    async def _agent(self, stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            await self.handle(msg.value, msg.partition, msg.offset, msg.headers)

    async def _deps(self) -> tuple[IdAllocator, EventProducer, Any]:
        kv = await self.resources.kv()
        if self._ids is None:
            self._ids = IdAllocator(kv, sequence_key(keys.RUN_ID_SEQUENCE), block=100)
        if self._producer is None:
            self._producer = EventProducer(self.settings.kafka, self.settings.topic_events)
            await self._producer.start()
        return self._ids, self._producer, kv

    async def handle(self, raw: bytes, partition: int, offset: int, headers: Any) -> None:
        ids, producer, kv = await self._deps()
        fallback = f"{self.settings.topic_setup_errors}/{partition}/{offset}"
        try:
            # Validate before allocating: a malformed report must not use up a run id.
            report_id, _ = parse_report(
                raw, run_id=format_run_id(1), fallback_id=fallback, now_ms=0
            )
        except DecodeError as exc:
            await self._dead(raw, partition, offset, exc)
            return
        run_id = await self._run_id_for(kv, ids, report_id)
        _, event = parse_report(
            raw, run_id=format_run_id(run_id), fallback_id=fallback, now_ms=int(time.time() * 1000)
        )
        await producer.append([event])
        log.info("setup errors reported", extra={"report_id": report_id, "run_id": event.run_id})

    async def _run_id_for(self, kv: Any, ids: IdAllocator, report_id: str) -> int:
        key = keys.setup_report_key(report_id)
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
        raise RuntimeError(f"could not map report {report_id} to a run id")

    async def _dead(self, raw: bytes, partition: int, offset: int, exc: DecodeError) -> None:
        dl = DeadLetter(reason=str(exc.reason), message=exc.message, offset=offset, raw=raw)
        metrics.DEAD_LETTERS.labels(dl.reason).inc()
        hdrs = dead_letter_headers(dl, self.settings.topic_setup_errors, partition)
        await self.app.producer.send_and_wait(
            self.settings.topic_dlq, None, raw, partition=None, timestamp=None, headers=hdrs
        )
        log.warning("malformed setup-error report", extra={"error": exc.message, "offset": offset})
