"""The HTTP API in the worker: the real implementations of ``api.ports`` and the server.

* ``MaterializedRuns`` (``RunSource``): a run's newest state from the materializer's memory when
  this worker owns its partition, else from the partition's latest checkpoint (data files).
* ``KafkaPhaseFeed`` (``PhaseFeed``): ``agents.phasefeed.PhaseHub``, one consumer of
  ``runs.phases`` per worker fanned out to every SSE client; cursors resume without loss or
  repetition.
* ``ApiServer``: ``api.create_api`` on ``Settings.web_host:web_port`` inside the worker's loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, cast

from aiohttp import web

from agents import keys
from agents.config import Settings
from agents.indexing import IndexService
from agents.inspect import end_offsets
from agents.materializer import ACTIVE, FINAL, partition_name
from agents.phasefeed import PhaseHub as KafkaPhaseFeed
from agents.phasefeed import decode_feed_cursor, encode_feed_cursor
from agents.pipeline import MaterializerService
from agents.producer import EventProducer, partition_for
from agents.resources import Resources
from api import ApiDeps, create_api
from datamanager import IdAllocator, NotExist
from datamanager.keys import sequence_key
from events import is_run_id
from events.catalogue import Event
from events.codec import decode_state
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
            feed=KafkaPhaseFeed(settings.kafka, settings.topic_phases),
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
