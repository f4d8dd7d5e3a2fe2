"""The materializer: the wiring around one ``PartitionOwner`` per owned partition.

No business logic here: the owner (``partition.owner``) applies records, holds
them until a checkpoint covers them, sends phase changes and dead letters, and runs the checkpoint
rules. This module registers the Faust agent on ``runs.events`` (it keeps Faust's consumer group
subscribed: the assignment, the owners' URL map, the commits), the task that hands the records
read by ``agents.eventreader`` to their owners (``owner.handle``), the assignment hooks (create /
close owners, assign the reader), the timers (checkpoints, garbage collection, time decisions),
and adapts Faust's producer and consumer, the bare Kafka reader and the datamanager to the
owner's ports.

Offsets and acks. Faust's consumer hands over no record of ``runs.events`` (paused there; what
slips through before a pause the agent drops, unacked): a record's offset is acked (so Faust may
commit it to Kafka) by its owner only after a checkpoint covering it has been swapped in
(:meth:`MaterializerService.ack`), so Kafka's committed offset never passes the manifest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP, Message

from agents import kafka, metrics, quirks
from agents.config import Settings
from agents.eventreader import EventReader
from agents.fetchpolicy import FetchPolicy
from agents.health import stop_for, wrong_storage_line
from agents.resources import Resources
from agents.runtime import HeapTrimmer
from datamanager.errors import MissingManifest
from partition.materializer import partition_name
from partition.outbox import dead_letter_headers
from partition.owner import NotServing, OwnerConfig, PartitionOwner
from partition.ports import PartitionStore, RecordMeta
from partition.slices import Slices

__all__ = ["MaterializerService", "dead_letter_headers"]

log = logging.getLogger("runstream.pipeline")

#: The agent takes records in batches of at most ``TAKE_MAX``, each handed over as soon as no
#: more record waits in the stream (``agents.quirks.take_what_is_there``): a lone record waits
#: for nothing, a backlog goes in large batches. (Faust's ``noack_take`` waits for a full batch or
#: a timer: a lone record waited up to 5 ms before issue 23, then up to 1 ms with the worker
#: woken a thousand times a second; an edge of bench_latency's case (a) now takes 1 ms less.)
TAKE_MAX = 2000
GC_EVERY = 60.0
DECIDE_EVERY = 0.25  # seconds between two looks at the time decisions (partition.decisions)
STUCK_EVERY = 15.0  # seconds between two counts of stuck runs (a scan of the active runs)
STUCK_PART = 1000  # active runs a part of that scan looks at (partition.active.quiet_count_parts)
REVOKE_TIMEOUT = 10.0  # a last checkpoint at revocation, bounded


class MaterializerService:
    """Registers the materializer agent, the assignment hooks and the checkpoint timer on ``app``.

    ``owned``: partition → its owner, for the partitions of ``runs.events`` this worker owns now.
    """

    def __init__(self, app: faust.App, settings: Settings, resources: Resources) -> None:
        self.app = app
        self.settings = settings
        self.resources = resources
        self.topics = app.runstream_topics  # type: ignore[attr-defined]
        self.owned: dict[int, PartitionOwner] = {}
        self._config = OwnerConfig(
            topic=settings.topic_events,
            phases_topic=settings.topic_phases,
            dlq_topic=settings.topic_dlq,
            refusals_topic=settings.topic_refusals,
            tasks_topic=settings.topic_tasks,
            max_event_bytes=settings.max_event_bytes,
            checkpoint_interval=settings.checkpoint_interval,
            checkpoint_events=settings.checkpoint_events,
        )
        self._dm = _Datamanager(resources)
        self._reader = _KafkaReader(settings.kafka)
        self._sender = _FaustSender(app)
        self._last_gc = time.monotonic()
        self._heap = HeapTrimmer()  # returns the freed heap to the system after runs go cold
        self._waiting_since: float | None = time.monotonic()  # the reader awaits records since
        self._taken = 0  # records the reader took (the fetch policy's rate)
        self._fetch = FetchPolicy()
        self._events = EventReader(settings.kafka, settings.topic_events, max_records=TAKE_MAX)
        app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        # The agent subscribes Faust's consumer group to runs.events (the assignment, the URL map
        # and the commits); the records themselves are read by self._events (agents.eventreader).
        app.agent(self.topics.events, name="runstream.materializer")(self._agent)
        app.task(self._read)
        app.timer(max(0.5, min(1.0, settings.checkpoint_interval / 2)))(self._tick)
        app.timer(DECIDE_EVERY)(self._decide)
        app.timer(STUCK_EVERY)(self._count_stuck)

    def owner(self, partition: int) -> PartitionOwner | None:
        """The owner of ``partition`` of ``runs.events`` on this worker (``None``: not ours now).
        It may still be loading or catching up: see ``PartitionOwner.serving``."""
        return self.owned.get(partition)

    def caught_up(self) -> bool:
        """True when every owned partition has loaded its checkpoint and applied the log up to
        where it ended when the partition was assigned (``/healthz`` is ready then)."""
        return all(o.serving for o in self.owned.values())

    # ----------------------------------------------------------------------- assignment
    def _new_owner(self, p: int) -> PartitionOwner:
        owner = self.owned[p] = PartitionOwner(
            p,
            config=self._config,
            datamanager=self._dm,
            reader=self._reader,
            sender=self._sender,
            hooks=self,
            # The executors' heartbeats (agents.liveness), which the worker hangs on the app.
            liveness=getattr(self.app, "runstream_liveness", None),
        )
        owner.start()
        return owner

    async def _on_assigned(self, app: Any, assigned: set[TP], **_: Any) -> None:
        mine = {tp.partition for tp in assigned if tp.topic == self.settings.topic_events}
        self._keep_faust_off_events()
        await self._events.start()
        self._events.assign(mine)
        for p in mine - set(self.owned):
            self._new_owner(p)
        metrics.PARTITIONS_OWNED.set(len(self.owned))

    def _keep_faust_off_events(self) -> None:
        """Faust's consumer hands over no record of runs.events: they are read on the event loop
        (``agents.eventreader``). Paused at every assignment and every few hundred
        milliseconds after, since Faust resumes every assigned partition once a rebalance is
        over; what it hands over meanwhile the agent drops."""
        consumer = self.app.consumer
        topic = self.settings.topic_events
        consumer.pause_partitions(tp for tp in consumer.assignment() if tp.topic == topic)

    async def _on_revoked(self, app: Any, revoked: set[TP], **_: Any) -> None:
        gone = [
            owner
            for tp in revoked
            if tp.topic == self.settings.topic_events
            and (owner := self.owned.pop(tp.partition, None)) is not None
        ]
        metrics.PARTITIONS_OWNED.set(len(self.owned))
        self._events.assign(self.owned)
        await asyncio.gather(*(owner.close(REVOKE_TIMEOUT) for owner in gone))
        for owner in gone:
            log.info("partition revoked", extra={"partition": owner.partition})

    # ------------------------------------------------------------------ the owner's hooks
    async def seek(self, partition: int, offset: int) -> None:
        """The owner reads on from ``offset`` (``agents.eventreader``)."""
        if partition in self.owned:
            self._events.seek(partition, offset)

    def ack(self, partition: int, offsets: Iterable[int]) -> None:
        """Faust's ack of each offset: a message of its own naming the record (its consumer
        acks by topic, partition and offset), so that the owner holds offsets, not Faust's
        events, until a checkpoint covers them (``PartitionOwner``)."""
        topic, ack = self.settings.topic_events, self.app.consumer.ack
        tp = TP(topic, partition)
        for offset in offsets:
            ack(Message(topic, partition, offset, 0.0, 0, None, None, None, None, tp=tp))

    async def crash(self, exc: BaseException) -> None:
        log.error("materializer lost a send; stopping the worker", extra={"error": str(exc)})
        await self.app.crash(exc)

    def wrong_storage(self, exc: MissingManifest) -> None:
        stop_for(wrong_storage_line(exc), code="wrong_storage")

    def fenced(self, partition: int, owner: object) -> None:
        if self.owned.get(partition) is owner:
            # Still ours in Kafka's eyes: start over from the newest checkpoint (the first record
            # after it makes the owner seek back).
            self._new_owner(partition)

    # ----------------------------------------------------------------------- the agent
    async def _agent(self, stream: Any) -> None:
        """Faust's agent on runs.events: it keeps the group subscribed and drops what Faust hands
        over before the partitions are paused again (never acked: the reader reads them)."""
        async for _ in quirks.take_what_is_there(stream, TAKE_MAX):
            pass

    async def _read(self) -> None:
        """Hands the records of runs.events to their owners, a batch at a time."""
        try:
            while True:
                batch = await self._events.take()
                if not batch:
                    continue
                self._waiting_since = None
                # The loop is handed back every millisecond of applying (partition.slices): a
                # batch of large records (commits of hundreds of events, a catch-up) took
                # seconds in one step, and /healthz, /metrics and the API waited behind it.
                slices = Slices()
                events = self._events
                for partition, part in batch.items():
                    self._taken += len(part.records)
                    for r in part.records:
                        owner = self.owned.get(partition)
                        if owner is None:  # revoked meanwhile: the next owner reads it
                            break
                        if not owner.settled:
                            await owner.settle()  # its seek at load may come first
                        if events.generation(partition) != part.generation:
                            break  # read before a seek: it comes again (OwnerHooks.seek)
                        await owner.handle(
                            r.offset,
                            r.value if r.value is not None else b"",
                            r.headers,
                            key=r.key,
                            timestamp_ms=r.timestamp,
                        )
                        if slices.due():
                            for o in self.owned.values():
                                o.publish_counts()  # /metrics may be served meanwhile
                            await slices.hand_back()
                    else:
                        # Read past offsets that hold no record (a transaction's marker).
                        owner = self.owned.get(partition)
                        if (
                            owner is not None
                            and owner.settled
                            and events.generation(partition) == part.generation
                        ):
                            owner.skip_to(part.end)
                for owner in list(self.owned.values()):
                    await owner.after_batch()
                self._waiting_since = time.monotonic()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Never a silently dead reader: stop the worker so that it is restarted and resumes
            # from its checkpoints (bad input never gets here: it becomes a dead letter).
            log.exception("materializer failed; stopping the worker")
            await self.app.crash(exc)
            raise
        finally:
            await self._events.stop()

    # ----------------------------------------------------------------------- the timer
    async def _tick(self) -> None:
        since = self._waiting_since
        waiting = 0.0 if since is None else time.monotonic() - since
        moved = 0
        for owner in list(self.owned.values()):
            owner.maybe_checkpoint()
            await owner.keep_catching_up(waiting)
            moved += await owner.cool()
        await self._heap.tick(moved)
        await self._maybe_collect_garbage()
        self._fetch_for_load()

    def _fetch_for_load(self) -> None:
        """The reader's fetches batch while records come often (``agents.fetchpolicy``); set at
        every tick. (Faust's consumer, which reads the other topics, keeps the light setting
        ``agents.app`` gives it at every assignment.)"""
        before = self._fetch.wait
        wait = self._fetch.observe(self._taken, time.monotonic())
        if wait is not before:
            log.info(
                "fetches batch now" if wait.min_bytes > 1 else "fetches return at once now",
                extra={"records_per_second": round(self._fetch.rate)},
            )
        self._events.fetch(wait)
        metrics.CONSUMER_FETCH_WAIT.set(wait.max_wait_ms / 1000)

    async def _decide(self) -> None:
        """The owners' decisions from time (lapsed leases, timeouts), a few times a second."""
        self._keep_faust_off_events()
        for owner in list(self.owned.values()):
            owner.decide()

    async def _count_stuck(self) -> None:
        """The stuck gauges, every ``STUCK_EVERY`` seconds: the owned partitions' active runs
        scanned in parts of ``STUCK_PART``, the event loop handed back whenever a slice's time is
        used up (``partition.slices``). In one step the scan of 250,000 active runs held the
        loop 70 ms and more; no record waits behind it now."""
        older_than = round(self.settings.stuck_after * 1000)
        runs = tasks = 0
        slices = Slices()
        for owner in list(self.owned.values()):
            if not owner.serving:
                continue
            try:
                for n_runs, n_tasks in owner.stuck_count_parts(older_than, STUCK_PART):
                    runs += n_runs
                    tasks += n_tasks
                    await slices.step()
            except NotServing:
                continue  # revoked meanwhile: its runs are counted by their next owner
        metrics.STUCK_RUNS.set(runs)
        metrics.STUCK_TASKS.set(tasks)

    async def _maybe_collect_garbage(self) -> None:
        """Every ``GC_EVERY`` seconds, collect superseded manifests and unreferenced data files of
        the owned partitions (the datamanager keeps a grace period for readers mid-way)."""
        now = time.monotonic()
        if now - self._last_gc < GC_EVERY:
            return
        self._last_gc = now
        dm = await self.resources.datamanager()
        for p in list(self.owned):
            try:
                await dm.collect_garbage(partition_name(self.settings.topic_events, p))
            except Exception:
                log.exception("garbage collection failed; will retry", extra={"partition": p})


# ------------------------------------------------------------------------------- adapters
class _Datamanager:
    """``PartitionOpener`` over the worker's datamanager, created on first use."""

    def __init__(self, resources: Resources) -> None:
        self._resources = resources

    async def open_partition(self, name: str, *, claim: bool = False) -> PartitionStore:
        dm = await self._resources.datamanager()
        return await dm.open_partition(name, claim=claim)


class _KafkaReader:
    """``LogReader`` over bare consumers (``agents.kafka``)."""

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap

    async def log_bounds(self, topic: str) -> tuple[Mapping[int, int], Mapping[int, int]]:
        # The end a reader of committed records (agents.eventreader) catches up to.
        return await kafka.bounds(self._bootstrap, topic, committed=True)

    async def read_values(self, topic: str, partition: int, offset: int) -> list[bytes]:
        values: list[bytes] = []
        async with kafka.bare_consumer(self._bootstrap) as consumer:
            async for _, records in kafka.read_range(consumer, topic, {partition: (offset, None)}):
                values.extend(r.value for r in records if r.value is not None)
        return values


class _FaustSender:
    """``LogSender`` over the Faust app's producer."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        partition: int | None,
        headers: Sequence[tuple[str, bytes]] | None,
    ) -> Awaitable[RecordMeta]:
        fut: Awaitable[RecordMeta] = await self._app.producer.send(
            topic,
            key,
            value,
            partition=partition,
            timestamp=None,
            headers=None if headers is None else list(headers),
        )
        return fut

    async def send_batch(
        self, topic: str, partition: int, records: Sequence[tuple[bytes | None, bytes]]
    ) -> Awaitable[RecordMeta]:
        # Faust's producer has no batch call: its aiokafka producer's (the same connection and
        # idempotent sequence as Faust's own sends) saves the per-record send of both layers.
        producer = quirks.producer_for_batches(self._app.producer)
        sent: list[tuple[Awaitable[Any], int]] = []
        batch, n = producer.create_batch(), 0
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: the next one
                sent.append((await producer.send_batch(batch, topic, partition=partition), n))
                batch, n = producer.create_batch(), 0
                batch.append(key=key, value=value, timestamp=None)  # the first always fits
            n += 1
        if n:
            sent.append((await producer.send_batch(batch, topic, partition=partition), n))
        return asyncio.ensure_future(_last_stored(topic, sent))


@dataclass(frozen=True, slots=True)
class _Stored:
    """Where the last record of a batch was stored (``RecordMeta``)."""

    topic: str
    offset: int


async def _last_stored(topic: str, sent: list[tuple[Awaitable[Any], int]]) -> _Stored:
    """Every batch acknowledged: the offset of the last record (a batch's metadata names its
    first record's offset). Raises the first batch's error."""
    offset = -1
    for fut, n in sent:
        meta = await fut
        offset = meta.offset + n - 1
    return _Stored(topic, offset)
