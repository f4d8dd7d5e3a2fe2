"""Bare Kafka consumers: no consumer group, partitions assigned by hand, read by offset.

Every reader that is not a Faust agent (the indexer, the phase stream, replay, ``runstream
verify``, the tests and benchmarks) builds its consumer here, so the few aiokafka quirks they
all meet are handled once (``agents.quirks``): a fresh consumer knows no topic metadata, and
stopping a consumer right after it started can raise a stray ``CancelledError``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from agents import quirks

__all__ = [
    "Record",
    "assign_at",
    "bare_consumer",
    "bounds",
    "end_offsets",
    "log_bounds",
    "partitions_of",
    "read_range",
    "stop_consumer",
]

Record: TypeAlias = ConsumerRecord[bytes, bytes]


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop ``consumer``, even right after it started
    (``agents.quirks.stop_despite_stray_cancel``)."""
    await quirks.stop_despite_stray_cancel(consumer)


@asynccontextmanager
async def bare_consumer(bootstrap: str, **opts: Any) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer without a group and without auto-commit; stopped on exit.

    ``opts`` are passed to ``AIOKafkaConsumer`` (``auto_offset_reset``, fetch sizes...)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **opts
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await stop_consumer(consumer)


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    """The partitions of ``topic`` (empty if it does not exist), asked of the cluster: a consumer
    knows no topic metadata right after it starts (``agents.quirks.uncached_partitions_for_topic``)."""
    return sorted(await quirks.uncached_partitions_for_topic(consumer, topic))


async def log_bounds(
    consumer: AIOKafkaConsumer, topic: str, partitions: Iterable[int]
) -> tuple[dict[int, int], dict[int, int]]:
    """(first retained offset, end offset) of each partition: ``starts[p] <= offset < ends[p]``
    is what the log holds now."""
    tps = [TopicPartition(topic, p) for p in partitions]
    if not tps:
        return {}, {}
    starts = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    return {tp.partition: o for tp, o in starts.items()}, {
        tp.partition: o for tp, o in ends.items()
    }


#: How ``runs.events`` is read (the worker's reader, replay): only committed records. A producer
#: may write in Kafka transactions; an aborted transaction's events are never applied, and an
#: open one holds back the partition's later records until it ends (docs/events.md).
READ_COMMITTED = "read_committed"


async def bounds(
    bootstrap: str, topic: str, *, committed: bool = False
) -> tuple[dict[int, int], dict[int, int]]:
    """(first offset retained, end offset) of every partition of ``topic``; with ``committed``,
    the end a :data:`READ_COMMITTED` reader reads up to (Kafka's last stable offset: before the
    first record of a transaction still open)."""
    opts = {"isolation_level": READ_COMMITTED} if committed else {}
    async with bare_consumer(bootstrap, **opts) as consumer:
        parts = await partitions_of(consumer, topic)
        return await log_bounds(consumer, topic, parts)


async def end_offsets(bootstrap: str, topic: str, *, committed: bool = False) -> dict[int, int]:
    """The end offset (next offset to be written) of every partition of ``topic``; with
    ``committed``, the end a :data:`READ_COMMITTED` reader reads up to."""
    return (await bounds(bootstrap, topic, committed=committed))[1]


def assign_at(
    consumer: AIOKafkaConsumer, topic: str, positions: Mapping[int, int]
) -> dict[int, TopicPartition]:
    """Assign ``consumer`` exactly the partitions of ``positions`` (partition → next offset to
    read), each positioned there. Replaces any earlier assignment."""
    tps = {p: TopicPartition(topic, p) for p in sorted(positions)}
    consumer.assign(list(tps.values()))
    for p, tp in tps.items():
        consumer.seek(tp, positions[p])
    return tps


async def read_range(
    consumer: AIOKafkaConsumer,
    topic: str,
    ranges: Mapping[int, tuple[int, int | None]],
    *,
    max_records: int = 10_000,
    timeout_ms: int = 1000,
) -> AsyncGenerator[tuple[int, list[Record]], None]:
    """Every record of ``topic`` with ``start <= offset < end``, for each ``partition: (start,
    end)`` of ``ranges`` (``end`` None: the partition's end offset now), as ``(partition,
    records)`` batches in offset order per partition. Ends when every partition reached its end.

    Takes over the consumer's assignment. Where ``start`` is no longer retained, what happens is
    the consumer's ``auto_offset_reset`` (``"earliest"`` skips to the first retained record,
    ``"none"`` raises ``OffsetOutOfRangeError``)."""
    if any(end is None for _, end in ranges.values()):
        _, now = await log_bounds(consumer, topic, ranges)
        ranges = {p: (s, now[p] if e is None else e) for p, (s, e) in ranges.items()}
    ends = {p: e for p, (s, e) in ranges.items() if e is not None and s < e}
    if not ends:
        return
    tps = assign_at(consumer, topic, {p: ranges[p][0] for p in ends})
    remaining = {tps[p] for p in ends}
    while remaining:
        batch = await consumer.getmany(*remaining, timeout_ms=timeout_ms, max_records=max_records)
        for tp, msgs in batch.items():
            end = ends[tp.partition]
            inside = (
                msgs if not msgs or msgs[-1].offset < end else [m for m in msgs if m.offset < end]
            )
            if inside:
                yield tp.partition, inside
        for tp in list(remaining):
            if await consumer.position(tp) >= ends[tp.partition]:
                remaining.discard(tp)
