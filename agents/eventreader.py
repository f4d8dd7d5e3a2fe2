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
starts at the first one retained (``auto_offset_reset="earliest"``).

What it hands over keeps the promise ``OwnerHooks.seek`` makes the owner: once a seek returned,
the records of that partition come from the offset asked for on, in order, and nothing read
before it. aiokafka drops what it fetched from the old position; a batch :meth:`take` returned
before the seek is told apart by its **generation** (a count of the partition's seeks, stamped
on each :class:`Part`), and the materializer hands over no part of an older one. Each part also
says how far the partition was read (:attr:`Part.end`): past a transaction's marker, an aborted
or expired record, the position moves on with no record to hand over, and the owner reads on
from there (``PartitionOwner.skip_to``) rather than wait for a record that never comes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from agents import quirks
from agents.fetchpolicy import LIGHT, FetchWait
from agents.kafka import READ_COMMITTED, stop_consumer

__all__ = ["EventReader", "Part", "Records"]


@dataclass(frozen=True, slots=True)
class Part:
    """What one :meth:`EventReader.take` read of one partition."""

    records: list[ConsumerRecord[bytes, bytes]]  # in offset order (may be empty)
    #: The offset read up to: every record below it is in ``records`` or was handed over before.
    #: Past the last record's offset + 1 where the log holds no record there (a marker).
    end: int
    #: The partition's seeks when it was read: an older part than :meth:`EventReader.generation`
    #: was read before a seek, and is not handed over (its records come again).
    generation: int


Records = Mapping[int, Part]


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
        self._seeks: dict[int, int] = {}  # partition → how many times it was sought
        self._fetch_now = LIGHT.min_bytes <= 1  # see fetch()

    async def start(self) -> None:
        """Make and start the consumer (aiokafka makes it on the running event loop only)."""
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level=READ_COMMITTED,  # an aborted transaction's events never apply
                fetch_max_wait_ms=LIGHT.max_wait_ms,
                fetch_min_bytes=LIGHT.min_bytes,
                # A fetch may bring a backlog's records in one go (16 MiB a partition).
                max_partition_fetch_bytes=16 << 20,
                fetch_max_bytes=64 << 20,
            )
            await consumer.start()
            # Each fetch request written the moment the last records are taken (see the quirk).
            await quirks.fetch_promptly(consumer)
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
        self._seeks[partition] = self._seeks.get(partition, 0) + 1
        self._update_readable()

    def generation(self, partition: int) -> int:
        """How many times ``partition`` was sought: a :class:`Part` of an older generation was
        read before the last seek."""
        return self._seeks.get(partition, 0)

    def fetch(self, wait: FetchWait) -> None:
        """How long the broker may hold a fetch (``agents.fetchpolicy``); once started. While
        fetches return with the first record (light load), the next fetch goes the moment the
        last records are taken (``quirks.fetch_promptly``); while they batch, it goes when
        aiokafka's routine sends it: a few turns later, each fetch bringing that while's records.
        Measured in bench_latency's HTTP case (six interleaved pairs, the reader batching): a
        fetch at once cost the worker's loop more than it saved, the write's append stage
        12.7 → 16.5 ms against its apply stage 6.8 → 5.5 ms."""
        self._fetch_now = wait.min_bytes <= 1
        if self._consumer is not None:
            quirks.set_fetch_wait(self._consumer, wait.max_wait_ms, min_bytes=wait.min_bytes)

    def _update_readable(self) -> None:
        consumer = self._consumer
        if consumer is not None and consumer.assignment() - consumer.paused():
            self._readable.set()
        else:
            self._readable.clear()

    async def take(self, timeout_ms: int = 1000) -> Records:
        """What was read since the last call (at most ``max_records`` records), waiting up to
        ``timeout_ms`` for some: a :class:`Part` for each partition that has records or was read
        past offsets holding none."""
        if not self._readable.is_set():
            await self._readable.wait()
        consumer = self._consumer
        if consumer is None:  # stopped meanwhile
            return {}
        got = await quirks.getmany_promptly(
            consumer,
            wait=timeout_ms / 1000,
            max_records=self._max_records,
            fetch_now=self._fetch_now,
        )
        # No await from here on: the positions and generations are those of these records.
        out: dict[int, Part] = {}
        for tp, records in got.items():
            if records:
                p = tp.partition
                self._next[p] = records[-1].offset + 1
                out[p] = Part(records, self._next[p], self._seeks.get(p, 0))
        for p, handed in self._next.items():
            read_to = quirks.consumed_position(consumer, TopicPartition(self.topic, p))
            if read_to is not None and read_to > handed:
                self._next[p] = read_to
                part = out.get(p)
                records = part.records if part is not None else []
                out[p] = Part(records, read_to, self._seeks.get(p, 0))
        return out
