"""The HTTP API in the worker: the real implementations of ``api.ports`` and the server.

* ``MaterializedRuns`` (``RunSource``): a run's newest state from the materializer's memory when
  this worker owns its partition, else from the partition's latest checkpoint (data files).
* ``KafkaPhaseFeed`` (``PhaseFeed``): ``runs.phases`` read with a bare consumer per client.
  A cursor is the vector of next offsets of every partition just after the event it names, so
  resuming from it continues every partition where the client left it: no loss, no repetition.
* ``ApiServer``: ``api.create_api`` on ``Settings.web_host:web_port`` inside the worker's loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition

from agents import keys
from agents.config import Settings
from agents.indexing import IndexService
from agents.inspect import end_offsets, partitions_of, stop_consumer
from agents.materializer import ACTIVE, FINAL, partition_name, phase_seq
from agents.pipeline import MaterializerService
from agents.producer import EventProducer, partition_for
from agents.resources import Resources
from api import ApiDeps, create_api
from api.errors import CursorExpired, InvalidCursor
from datamanager import IdAllocator, NotExist
from datamanager.keys import sequence_key
from events import is_run_id
from events.catalogue import Event
from events.codec import decode_record, decode_state
from events.errors import DecodeError
from events.state import RunState
from indexer import RunIndex

__all__ = [
    "ApiServer",
    "KafkaPhaseFeed",
    "MaterializedRuns",
    "decode_feed_cursor",
    "encode_feed_cursor",
]

log = logging.getLogger("runstream.web")

_CURSOR_PREFIX = "v1"


def encode_feed_cursor(positions: Sequence[int]) -> str:
    """``v1.<offset of partition 0>.<offset of partition 1>...`` (next offsets to read)."""
    return ".".join([_CURSOR_PREFIX, *(str(o) for o in positions)])


def decode_feed_cursor(cursor: str, partitions: int) -> list[int]:
    """Inverse of :func:`encode_feed_cursor`; ``InvalidCursor`` naming what is wrong."""
    parts = cursor.split(".")
    if parts[0] != _CURSOR_PREFIX or len(parts) != partitions + 1:
        raise InvalidCursor(f"malformed cursor {cursor[:60]!r}: not a cursor of this event stream")
    try:
        offsets = [int(p) for p in parts[1:]]
    except ValueError:
        raise InvalidCursor(f"malformed cursor {cursor[:60]!r}: offsets must be integers") from None
    if any(o < 0 for o in offsets):
        raise InvalidCursor(f"malformed cursor {cursor[:60]!r}: negative offset")
    return offsets


class MaterializedRuns:
    """``RunSource`` over the materializer (owned partitions) and the checkpoints (the others)."""

    def __init__(
        self, settings: Settings, resources: Resources, materializer: MaterializerService
    ) -> None:
        self.settings = settings
        self.resources = resources
        self.materializer = materializer
        self._partitions = 0

    async def get(self, run_id: str) -> RunState | None:
        if not is_run_id(run_id):
            return None
        if not self._partitions:
            self._partitions = len(
                await end_offsets(self.settings.kafka, self.settings.topic_events)
            )
        p = partition_for(run_id, self._partitions)
        owned = self.materializer.owned.get(p)
        if owned is not None and owned.pm is not None:
            return await owned.pm.read_run(run_id)
        dm = await self.resources.datamanager()
        snap = await dm.read_partition(partition_name(self.settings.topic_events, p))
        for datatype in (ACTIVE, FINAL):
            try:
                return decode_state(await snap.get(datatype, run_id))
            except NotExist:
                continue
        return None


class KafkaPhaseFeed:
    """``PhaseFeed`` over ``runs.phases``; one bare consumer per follower."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def follow(self, after: str | None) -> AsyncIterator[tuple[str, Event]]:
        topic = self.settings.topic_phases
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka, enable_auto_commit=False)
        await consumer.start()
        try:
            parts = await partitions_of(consumer, topic)
            if not parts:
                raise RuntimeError(f"topic {topic} has no partitions")
            tps = [TopicPartition(topic, p) for p in parts]
            ends = await consumer.end_offsets(tps)
            starts = await consumer.beginning_offsets(tps)
            if after is None:
                positions = [ends[tp] for tp in tps]
            else:
                positions = decode_feed_cursor(after, len(tps))
                for tp, pos in zip(tps, positions, strict=True):
                    if pos < starts[tp]:
                        raise CursorExpired(
                            f"cursor is older than the retained log (partition {tp.partition} starts at {starts[tp]})"
                        )
                    if pos > ends[tp]:
                        raise InvalidCursor(
                            f"cursor is beyond the end of the log (partition {tp.partition})"
                        )
            consumer.assign(tps)
            for tp, pos in zip(tps, positions, strict=True):
                consumer.seek(tp, pos)
        except BaseException:
            await stop_consumer(consumer)
            raise
        return self._stream(consumer, tps, positions)

    async def _stream(
        self, consumer: AIOKafkaConsumer, tps: list[TopicPartition], positions: list[int]
    ) -> AsyncIterator[tuple[str, Event]]:
        try:
            while True:
                batch = await consumer.getmany(*tps, timeout_ms=1000, max_records=1000)
                for tp, msgs in batch.items():
                    for m in msgs:
                        positions[tp.partition] = m.offset + 1
                        try:
                            events = decode_record(m.value)
                        except DecodeError:
                            continue
                        for ev in events:
                            if phase_seq(ev) >= 0:
                                yield encode_feed_cursor(positions), ev
        finally:
            await stop_consumer(consumer)


class _IndexHandle:
    """The index service replaces its index when it loads a dump; the API keeps this handle."""

    def __init__(self, service: IndexService) -> None:
        self._service = service

    def __getattr__(self, name: str) -> Any:
        return getattr(self._service.index, name)


class _Sink:
    """``EventSink``: the group-committing producer, started on first use in the worker loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: EventProducer | None = None
        self._lock = asyncio.Lock()

    async def append(self, events: Sequence[Event]) -> None:
        if self._producer is None:
            async with self._lock:
                if self._producer is None:
                    producer = EventProducer(self.settings.kafka, self.settings.topic_events)
                    await producer.start()
                    self._producer = producer
        await self._producer.append(events)


class _Ids:
    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self._alloc: IdAllocator | None = None

    async def next(self) -> int:
        if self._alloc is None:
            self._alloc = IdAllocator(
                await self.resources.kv(), sequence_key(keys.RUN_ID_SEQUENCE), block=1000
            )
        return await self._alloc.next()


class ApiServer:
    """Serves ``api.create_api`` in the worker's event loop until the worker stops."""

    def __init__(
        self,
        settings: Settings,
        resources: Resources,
        materializer: MaterializerService,
        index: IndexService,
    ) -> None:
        self.settings = settings
        deps = ApiDeps(
            runs=MaterializedRuns(settings, resources, materializer),
            sink=_Sink(settings),
            ids=_Ids(resources),
            index=cast(RunIndex, _IndexHandle(index)),
            feed=KafkaPhaseFeed(settings),
            ready=lambda: index.ready.is_set() and materializer.caught_up(),
            clock=lambda: int(time.time() * 1000),
        )
        self.app = create_api(
            deps, api_token=settings.api_token, max_body_bytes=settings.max_body_bytes
        )

    async def run(self) -> None:
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.web_host, self.settings.web_port)
        await site.start()
        log.info(
            "API listening", extra={"host": self.settings.web_host, "port": self.settings.web_port}
        )
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
