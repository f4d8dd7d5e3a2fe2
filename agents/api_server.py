"""The HTTP API in the worker: the real implementations of ``api.ports`` and the server.

* ``agents.routing.OwnedRuns`` (``Owners``): the live state of the owned partitions, writes that
  wait for their apply, and where the other partitions' owners are (Faust's assignment).
* ``KafkaPhaseFeed`` (``PhaseFeed``): ``agents.phasefeed.PhaseHub``, one consumer of
  ``runs.phases`` per worker fanned out to every SSE client; cursors resume without loss or
  repetition. Another one follows ``runs.tasks`` for the ready-task stream, started by its first
  client (a worker nobody asks for ready tasks never reads them).
* ``ApiServer``: ``api.create_api`` on ``Settings.web_host:web_port`` inside the worker's loop,
  with the tokens of the settings (``agents.access``: none → loopback only) and the cluster's
  secret for the hop between workers, read before it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterator, Sequence

from aiohttp import web

from agents import keys
from agents.access import api_tokens, check_exposure, cluster_secret
from agents.app import self_url
from agents.asyncapi import asyncapi_document
from agents.config import Settings
from agents.counters import RunNumbers
from agents.creation import CreationKeys
from agents.dlq import DeadLetterTopic
from agents.health import LagMonitor, readiness
from agents.indexing import IndexService
from agents.liveness import Executors
from agents.materializer_service import MaterializerService
from agents.phasefeed import (
    READY_CURSOR_PREFIX,
    decode_feed_cursor,
    encode_feed_cursor,
    is_ready_task,
)
from agents.phasefeed import PhaseHub as KafkaPhaseFeed
from agents.producer import EventProducer
from agents.readback import end_offsets
from agents.resources import Resources
from agents.routing import OwnedRuns, UrlMap
from api import ApiDeps, JsonRunner, create_api
from api.app import CLUSTER_KEY
from api.ports import KeyRecord, StoreUnavailable
from datamanager import EtcdUnavailable, IdAllocator
from datamanager.keys import sequence_key
from events import Phase, Result
from events.catalogue import Event
from indexer import Order, Page

__all__ = [
    "ApiServer",
    "KafkaPhaseFeed",
    "decode_feed_cursor",
    "encode_feed_cursor",
]

log = logging.getLogger("runstream.web")

#: Seconds the API server gives open requests (event streams) when the worker stops.
SHUTDOWN_SECONDS = 2.0
#: The API's group commit adds no fixed wait (agents.producer: an idle partition sends at once,
#: a busy one batches what arrived while its commit was in flight): a write waits for its append,
#: then for its apply, so every millisecond here would be a millisecond of every answer.
API_LINGER = 0.0


class _IndexHandle:
    """``api.ports.RunListing``: the index service replaces its index when it loads a dump, so
    the API keeps this handle, which lists from the current one."""

    def __init__(self, service: IndexService) -> None:
        self._service = service

    def list_runs(
        self,
        *,
        groups: Collection[str] = (),
        phases: Collection[Phase] | None = None,
        results: Collection[Result] | None = None,
        last_run: bool = False,
        order: Order = Order.DESC,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page:
        return self._service.index.list_runs(
            groups=groups, phases=phases, results=results, last_run=last_run, order=order,
            limit=limit, cursor=cursor,
        )  # fmt: skip


@contextlib.contextmanager
def _store() -> Iterator[None]:
    """etcd not answering, as the API's ``StoreUnavailable`` (``api`` knows no datamanager
    error: the translation is here, at the boundary)."""
    try:
        yield
    except EtcdUnavailable as exc:
        raise StoreUnavailable(str(exc)) from exc


class _Numbers:
    """``api.ports.RunCounters``: ``agents.counters.RunNumbers``, etcd's errors translated."""

    def __init__(self, numbers: RunNumbers) -> None:
        self._numbers = numbers

    async def next(self, name: str) -> int:
        with _store():
            return await self._numbers.next(name)

    async def give_back(self, name: str, n: int) -> bool:
        with _store():
            return await self._numbers.give_back(name, n)

    async def void(self, name: str, n: int, *, run_id: str, reason: str) -> None:
        with _store():
            await self._numbers.void(name, n, run_id=run_id, reason=reason)


class _Keys:
    """``api.ports.CreationKeys``: ``agents.creation.CreationKeys``, etcd's errors translated."""

    def __init__(self, keys: CreationKeys) -> None:
        self._keys = keys

    async def lookup_key(self, key: str) -> KeyRecord | None:
        with _store():
            return await self._keys.lookup_key(key)

    async def claim_key(self, key: str, run_id: int, digest: str) -> bool:
        with _store():
            return await self._keys.claim_key(key, run_id, digest)

    async def bind_number(self, key: str, number: int) -> bool:
        with _store():
            return await self._keys.bind_number(key, number)

    async def number_for_key(self, key: str, root: str, run_id: str) -> int:
        with _store():
            return await self._keys.number_for_key(key, root, run_id)


class _Sink:
    """Appends to ``runs.events``: the group-committing producer, started on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: EventProducer | None = None
        self._lock = asyncio.Lock()

    async def append(self, events: Sequence[Event]) -> None:
        if self._producer is None:
            async with self._lock:
                if self._producer is None:
                    producer = EventProducer(
                        self.settings.kafka,
                        self.settings.topic_events,
                        linger=API_LINGER,
                        in_flight=self.settings.produce_in_flight,
                    )
                    await producer.start()
                    self._producer = producer
        await self._producer.append(events)

    async def stop(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()


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
        url_map: Callable[[], UrlMap],
        executors: Executors | None = None,
    ) -> None:
        self.settings = settings
        self.resources = resources
        tokens = api_tokens(settings)  # ValueError: one line, exit 2 (agents.cli)
        check_exposure(settings, tokens)
        self.sink = _Sink(settings)
        self.owners = OwnedRuns(
            topic=settings.topic_events,
            self_url=self_url(settings),
            owners=materializer.owner,
            url_map=url_map,
            append=self.sink.append,
            max_event_bytes=settings.max_event_bytes,
            apply_timeout=settings.apply_timeout,
        )
        self.feed = KafkaPhaseFeed(settings.kafka, settings.topic_phases)
        self.task_feed = KafkaPhaseFeed(
            settings.kafka,
            settings.topic_tasks,
            streams=is_ready_task,
            cursor_prefix=READY_CURSOR_PREFIX,
        )
        self.lag = LagMonitor(
            bootstrap=settings.kafka,
            events_topic=settings.topic_events,
            phases_topic=settings.topic_phases,
            owners=lambda: materializer.owned,
            index_offsets=lambda: index.index.offsets if index.ready.is_set() else None,
        )
        ids, numbers = _Ids(resources), RunNumbers(resources)
        deps = ApiDeps(
            owners=self.owners,
            ids=ids,
            index=_IndexHandle(index),
            feed=self.feed,
            ready=lambda: readiness(
                materializer.owned, index_loaded=index.ready.is_set(), lag=self.lag.lag
            ),
            clock=lambda: int(time.time() * 1000),
            self_url=self_url(settings),
            counters=_Numbers(numbers),
            executors=executors,
            max_running_per_group=settings.max_running_per_group,
            creation_keys=_Keys(
                CreationKeys(resources.kv, ids, numbers, retention=settings.creation_key_retention)
            ),
            dead_letters=DeadLetterTopic(settings),
            task_feed=self.task_feed,
        )
        self.app = create_api(
            deps,
            api_token=settings.api_token,
            tokens=tokens,
            max_body_bytes=settings.max_body_bytes,
            asyncapi=asyncapi_document(settings),
        )

    async def run(self) -> None:
        # The partition count decides a run's partition; the topics exist (ensure_topics).
        self.owners.partitions = len(
            await end_offsets(self.settings.kafka, self.settings.topic_events)
        )
        # Relayed requests are signed with the deployment's secret: known before serving.
        self.app[CLUSTER_KEY].secret = await cluster_secret(self.settings, await self.resources.kv())  # fmt: skip
        lag_task = asyncio.ensure_future(self.lag.run_forever())
        runner = JsonRunner(self.app, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.web_host, self.settings.web_port)
        await site.start()
        log.info(
            "API listening",
            extra={
                "host": self.settings.web_host,
                "port": self.settings.web_port,
                "url": self_url(self.settings),
            },
        )
        try:
            await asyncio.Event().wait()
        finally:
            lag_task.cancel()
            # Event streams end first (their clients resume elsewhere), then the server stops
            # within SHUTDOWN_SECONDS, whatever a client does.
            for feed in (self.feed, self.task_feed):
                close = getattr(feed, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        await close()
            await runner.cleanup()
            await self.sink.stop()
