"""The materializer's reader of ``runs.events``: a bare aiokafka consumer on the worker's event
loop, assigned the partitions Faust's consumer group gave this worker.

Faust's consumer keeps the group: the membership, the assignment (and with it the owners' URL
map the API routes by, ``agents.routing``) and the commits of the offsets the owners acknowledge
(``MaterializerService.ack``). It no longer hands over the records of ``runs.events``: the
materializer keeps those partitions paused in it. Faust runs aiokafka in a thread of its own
and hands every fetch over to the event loop through a queue; under bench_latency's (d) load
(20 runs in flight, 2,000 events/s of others) that thread took 130-185 ms of CPU a second, its
fetches and hand-overs woke the two threads some 2,000 times a second, and the event loop
waited for a core 190-260 ms a second. Read here instead: the worker 62-68 % → 49-54 % of a
core at a higher edge rate, and an edge's p50 6.4-7.2 → 4.2-6.2 ms, p99 22-26 → 13-18 ms.

A partition is read only from where its owner asks (:meth:`EventReader.seek`, the owner's
``OwnerHooks.seek`` at load): until then it is assigned but paused, so no record before the
owner's checkpoint is fetched for nothing. Where that offset is no longer in the log the reader
starts at the first one retained (``auto_offset_reset="earliest"``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from agents import quirks
from agents.fetchpolicy import LIGHT, FetchWait
from agents.kafka import stop_consumer

__all__ = ["EventReader", "Records"]

Records = Mapping[int, list[ConsumerRecord[bytes, bytes]]]


class EventReader:
    """Reads ``topic`` for the partitions :meth:`assign` gives it, each from the offset
    :meth:`seek` gives it; :meth:`take` returns what came, per partition in offset order."""

    def __init__(self, bootstrap: str, topic: str, *, max_records: int) -> None:
        self.topic = topic
        self._max_records = max_records
        self._bootstrap = bootstrap
        self._consumer: AIOKafkaConsumer | None = None  # made by start()
        self._readable = asyncio.Event()  # some partition is assigned and not paused
        self._next: dict[int, int] = {}  # partition → the next offset to hand over

    async def start(self) -> None:
        """Make and start the consumer (aiokafka makes it on the running event loop only)."""
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=LIGHT.max_wait_ms,
                fetch_min_bytes=LIGHT.min_bytes,
                # A fetch may bring a backlog's records in one go (16 MiB a partition).
                max_partition_fetch_bytes=16 << 20,
                fetch_max_bytes=64 << 20,
            )
            await consumer.start()
            consumer.assign([])
            self._consumer = consumer

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_consumer(consumer)

    def assign(self, partitions: Iterable[int]) -> None:
        """Read exactly ``partitions`` from now on: those read already go on after the last
        record handed over, the others wait (paused) for their :meth:`seek`. (aiokafka forgets
        every position and pause at an assignment: they are set again here.)"""
        consumer = self._consumer
        wanted = set(partitions)
        self._next = {p: o for p, o in self._next.items() if p in wanted}
        if consumer is None:  # not started: nothing read yet
            return
        tps = {p: TopicPartition(self.topic, p) for p in sorted(wanted)}
        consumer.assign(list(tps.values()))
        waiting = [tp for p, tp in tps.items() if p not in self._next]
        if waiting:
            consumer.pause(*waiting)
        for p, offset in self._next.items():
            consumer.seek(tps[p], offset)
        self._update_readable()

    def seek(self, partition: int, offset: int) -> None:
        """Read ``partition`` from ``offset`` on (it must be assigned)."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("the reader of runs.events is not started")
        tp = TopicPartition(self.topic, partition)
        consumer.seek(tp, offset)
        consumer.resume(tp)
        self._next[partition] = offset
        self._update_readable()

    def fetch(self, wait: FetchWait) -> None:
        """How long the broker may hold a fetch (``agents.fetchpolicy``); once started."""
        if self._consumer is not None:
            quirks.set_fetch_wait(self._consumer, wait.max_wait_ms, min_bytes=wait.min_bytes)

    def _update_readable(self) -> None:
        consumer = self._consumer
        if consumer is not None and consumer.assignment() - consumer.paused():
            self._readable.set()
        else:
            self._readable.clear()

    async def take(self, timeout_ms: int = 1000) -> Records:
        """The records fetched since the last call (at most ``max_records``), waiting up to
        ``timeout_ms`` for some; partition → records in offset order."""
        if not self._readable.is_set():
            await self._readable.wait()
        consumer = self._consumer
        if consumer is None:  # stopped meanwhile
            return {}
        got = await consumer.getmany(timeout_ms=timeout_ms, max_records=self._max_records)
        out = {}
        for tp, records in got.items():
            if records:
                out[tp.partition] = records
                self._next[tp.partition] = records[-1].offset + 1
        return out
