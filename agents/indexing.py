"""The indexer agent: every worker keeps the whole run index current from ``runs.phases``.

Each worker answers listing queries for all runs, so its index must see every partition of
``runs.phases``, not a consumer group's share: the agent reads all partitions with a bare
aiokafka consumer (manual assignment, no group). Start-up = newest valid dump + the log tail from
the offsets the dump covers. One worker at a time writes dumps, under an etcd lease lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents import keys, metrics
from agents.config import Settings
from agents.kafka import assign_at, bare_consumer, end_offsets
from agents.materializer import phase_seq
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

__all__ = ["IndexFollower", "build_index", "source_key"]

log = logging.getLogger("runstream.indexer")


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
                continue
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
                    "index refused a phase change", extra={"run_id": ev.run_id, "error": str(exc)}
                )
                self.stats.refused += 1
                continue
            self.stats.applied += changed

    async def run(self, *, until: dict[int, int] | None = None) -> None:
        """Follow the topic forever (``until`` None) or up to ``until`` (partition → offset)."""
        topic = self.settings.topic_phases
        target = until if until is not None else await end_offsets(self.settings.kafka, topic)
        async with bare_consumer(
            self.settings.kafka, auto_offset_reset="earliest", fetch_max_bytes=32 << 20
        ) as consumer:
            tps = assign_at(consumer, topic, {p: self._offset(p) for p in target})
            await self._loop(consumer, list(tps.values()), target, follow=until is None)

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
            loaded = await store.load_latest()
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
        store = DumpStore(await self.resources.store(), prefix=keys.INDEX_PREFIX)
        started = time.monotonic()
        loaded = None
        for attempt in range(1, 1000):
            try:
                loaded = await store.load_latest()
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
