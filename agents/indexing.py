"""The indexer agent: every worker keeps the whole run index current from ``runs.phases``.

Each worker answers listing queries for all runs, so its index must see every partition of
``runs.phases``, not a consumer group's share: the agent reads all partitions with a bare
aiokafka consumer (manual assignment, no group). That topic holds phase changes only: the ready
tasks, most of what the owners derive, are on ``runs.tasks``, which the index never reads.
Start-up = newest valid dump + the log tail from the offsets the dump covers. One worker at a time
writes dumps, under an etcd lease lock.

Dumps live under the deployment's object prefix (``agents.keys.index_prefix``); a dump whose
offsets name another phases topic is another deployment's and is never loaded. The dumps every
deployment wrote at the storage root before (``index/dumps/``) are not read: the index of an
upgraded worker rebuilds from the log once, then dumps under its prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

import ost
from agents import keys, metrics
from agents.config import Settings
from agents.kafka import assign_at, bare_consumer, end_offsets
from datamanager import LeaseLock
from datamanager.keys import lock_key
from events import parse_run_id
from events.catalogue import PhaseChanged
from events.codec import decode_record
from events.errors import DecodeError
from indexer import (
    Dumper,
    DumpPolicy,
    DumpStore,
    IndexerError,
    LoadedDump,
    NoValidDump,
    RunIndex,
)
from indexer.keys import dumps_prefix
from partition.materializer import phase_seq
from partition.slices import Slices

__all__ = ["IndexFollower", "build_index", "dump_store", "source_key"]

log = logging.getLogger("runstream.indexer")

#: Seconds between two readings of the index's size (``runstream_index_bytes``).
INDEX_BYTES_EVERY = 10.0
#: Posting lists, group paths or run names a part of that reading walks; the event loop is handed
#: back whenever a slice's time is used up (``partition.slices``). In one step the walk held the
#: worker's event loop 38-54 ms every 10 s for a million runs of 42,000-50,000 groups; a part of
#: 500 takes well under a slice (bench/bench_index.py prints the walk and its longest part).
INDEX_BYTES_CHUNK = 500
#: A fetch of ``runs.phases`` comes back once it has this many bytes or ``FETCH_MAX_WAIT_MS``
#: passed: the index takes phase changes at most 20 times a second, in batches, rather than
#: a fetch for each (aiokafka's default: back with the first byte). Under bench_latency's (d)
#: load that was about 200 fetches a second, each a turn of the worker's event loop and a
#: request the broker serves, for an index nobody reads within milliseconds of a phase change.
FETCH_MIN_BYTES = 256 << 10
FETCH_MAX_WAIT_MS = 50


def source_key(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


@dataclass(slots=True)
class CatchUp:
    applied: int = 0
    refused: int = 0
    records: int = 0


class IndexFollower:
    """Applies ``runs.phases`` to a ``RunIndex``, from the offsets the index already covers."""

    def __init__(self, settings: Settings, index: RunIndex) -> None:
        self.settings = settings
        self.index = index
        self.caught_up = asyncio.Event()
        self.stats = CatchUp()
        self._sized = 0.0  # when runstream_index_bytes was last set (monotonic)
        self._sizing: asyncio.Task[None] | None = None

    def _offset(self, p: int) -> int:
        return self.index.offsets.get(source_key(self.settings.topic_phases, p), 0)

    def apply_value(self, value: bytes) -> None:
        try:
            events = decode_record(value)
        except DecodeError as exc:  # the materializer only writes valid events; say so loudly
            log.error("undecodable record on the phases topic", extra={"error": exc.message})
            self.stats.refused += 1
            return
        for ev in events:
            data = ev.data
            if not isinstance(data, PhaseChanged):
                continue  # a task.ready of a log written before runs.tasks existed
            try:
                changed = self.index.apply(
                    parse_run_id(ev.run_id),
                    data.group,
                    data.phase,
                    data.result,
                    phase_seq(ev),
                    at=ev.at,
                    name=data.name,
                    counter=data.counter,
                )
            except (IndexerError, ValueError) as exc:
                log.error(
                    "index refused a phase change",
                    extra={
                        "reason": str(exc),
                        "run_id": ev.run_id,
                        "group": data.group,
                        "phase": str(data.phase),
                        "seq": phase_seq(ev),
                    },
                )
                self.stats.refused += 1
                continue
            self.stats.applied += changed

    async def run(self, *, until: dict[int, int] | None = None) -> None:
        """Follow the topic forever (``until`` None) or up to ``until`` (partition → offset)."""
        topic = self.settings.topic_phases
        target = until if until is not None else await end_offsets(self.settings.kafka, topic)
        async with bare_consumer(
            self.settings.kafka,
            auto_offset_reset="earliest",
            fetch_max_bytes=32 << 20,
            fetch_min_bytes=FETCH_MIN_BYTES,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        ) as consumer:
            tps = assign_at(consumer, topic, {p: self._offset(p) for p in target})
            try:
                await self._loop(consumer, list(tps.values()), target, follow=until is None)
            finally:
                if self._sizing is not None:
                    self._sizing.cancel()

    async def _loop(
        self,
        consumer: AIOKafkaConsumer,
        tps: list[TopicPartition],
        target: dict[int, int],
        *,
        follow: bool,
    ) -> None:
        while True:
            if all(self._offset(p) >= end for p, end in target.items()):
                self.caught_up.set()
                if not follow:
                    return
            batch = await consumer.getmany(*tps, timeout_ms=500, max_records=20_000)
            for tp, msgs in batch.items():
                for m in msgs:
                    if not follow and m.offset >= target[tp.partition]:
                        break
                    self.apply_value(m.value)
                    self.stats.records += 1
                    self.index.mark_offset(source_key(tp.topic, tp.partition), m.offset + 1)
            metrics.INDEX_RUNS.set(self.index.count)
            now = time.monotonic()
            if now - self._sized >= INDEX_BYTES_EVERY and (self._sizing is None or self._sizing.done()):  # fmt: skip
                self._sized = now  # (a walk of every posting list, path and name: not per batch)
                self._sizing = asyncio.create_task(self._size())

    async def _size(self) -> None:
        """Sets ``runstream_index_bytes``: the index walked in parts of ``INDEX_BYTES_CHUNK``,
        the event loop handed back between slices, while this follower applies on."""
        total = 0
        slices = Slices()
        for part in self.index.memory_parts(INDEX_BYTES_CHUNK):
            total += part
            await slices.step()
        metrics.INDEX_BYTES.set(total)


def dump_store(settings: Settings, storage: ost.ObjectStorage) -> DumpStore:
    """The index dumps of the deployment ``settings`` describe (under its object prefix)."""
    return DumpStore(storage, prefix=keys.index_prefix(settings.etcd_prefix))


def foreign(settings: Settings, loaded: LoadedDump) -> str | None:
    """Why ``loaded`` is not this deployment's dump (its offsets name another phases topic),
    or None when it is."""
    own = f"{settings.topic_phases}/"
    others = sorted({k.rpartition("/")[0] for k in loaded.index.offsets if not k.startswith(own)})
    if not others:
        return None
    return (
        f"index dump {loaded.key} covers {', '.join(others)}, not {settings.topic_phases}: "
        "another deployment's dump under this deployment's prefix; rebuilding from the log"
    )


async def _load_own(settings: Settings, store: DumpStore) -> LoadedDump | None:
    loaded = await store.load_latest()
    if loaded is not None and (why := foreign(settings, loaded)) is not None:
        log.error("index dump refused", extra={"reason": why, "key": loaded.key})
        return None
    return loaded


async def legacy_dumps(storage: ost.ObjectStorage) -> bool:
    """True when dumps remain where every deployment wrote them before issue 21."""
    async for _ in storage.list(dumps_prefix(keys.LEGACY_INDEX_PREFIX)):
        return True
    return False


async def build_index(
    settings: Settings,
    store: DumpStore,
    *,
    from_dump: bool = True,
    until: dict[int, int] | None = None,
) -> tuple[RunIndex, LoadedDump | None]:
    """The index as a worker starts it: newest valid dump (unless ``from_dump`` is False) plus
    the log up to ``until`` (default: the end offsets now)."""
    loaded: LoadedDump | None = None
    if from_dump:
        try:
            loaded = await _load_own(settings, store)
        except NoValidDump as exc:
            log.error(
                "no valid index dump: rebuilding from the whole log", extra={"error": str(exc)}
            )
    index = loaded.index if loaded is not None else RunIndex()
    follower = IndexFollower(settings, index)
    until = until if until is not None else await end_offsets(settings.kafka, settings.topic_phases)
    await follower.run(until=until)
    return index, loaded


class IndexService:
    """In the worker: start from the newest dump, follow the log, dump periodically."""

    def __init__(self, settings: Settings, resources: object) -> None:
        self.settings = settings
        self.resources = resources
        self.index = RunIndex()
        self.follower: IndexFollower | None = None
        self.ready = asyncio.Event()

    async def run(self) -> None:
        from agents.resources import Resources

        assert isinstance(self.resources, Resources)
        storage = await self.resources.store()
        store = dump_store(self.settings, storage)
        started = time.monotonic()
        loaded = None
        for attempt in range(1, 1000):
            try:
                loaded = await _load_own(self.settings, store)
                if loaded is None and await legacy_dumps(storage):
                    log.warning(
                        "index dumps at the storage root are not read",
                        extra={
                            "reason": f"every deployment wrote {dumps_prefix()} before; this "
                            f"one's dumps are under {store.prefix}. The index rebuilds from "
                            f"{self.settings.topic_phases} once; delete {dumps_prefix()} when "
                            "no worker older than this one runs",
                        },
                    )
                break
            except NoValidDump as exc:
                log.error(
                    "no valid index dump: rebuilding from the whole log", extra={"error": str(exc)}
                )
                break
            except Exception:
                log.exception("loading the index dump failed; retrying")
                await asyncio.sleep(min(5.0, 0.2 * attempt))
        if loaded is not None:
            self.index = loaded.index
        self.follower = IndexFollower(self.settings, self.index)
        lock = LeaseLock(await self.resources.kv(), lock_key(keys.index_dump_lock()), ttl=15)
        dumper = Dumper(
            self.index,
            store,
            lock,
            DumpPolicy(
                every_seconds=self.settings.index_dump_interval,
                every_changes=self.settings.index_dump_changes,
            ),
        )
        follow = asyncio.ensure_future(self.follower.run())
        await self.follower.caught_up.wait()
        self.ready.set()
        log.info(
            "index caught up",
            extra={
                "runs": self.index.count,
                "from_dump": loaded.key if loaded else None,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        dumps = asyncio.ensure_future(dumper.run_forever())
        try:
            await asyncio.gather(follow, dumps)
        finally:
            for t in (follow, dumps):
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t
