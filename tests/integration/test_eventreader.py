"""The materializer's reader of ``runs.events`` (``agents.eventreader``) on a real broker: a
partition is read only from where its owner asked, a reassignment goes on after the last record
handed over, and a fetch setting changes nothing it reads."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from agents.eventreader import EventReader, Records
from agents.fetchpolicy import BUSY, LIGHT
from tests.integration.test_quirks import _topic

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


async def _produce(bootstrap: str, topic: str, partitions: int, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for p in range(partitions):
            for i in range(n):
                await producer.send_and_wait(topic, f"p{p}-{i}".encode(), partition=p)
    finally:
        await producer.stop()


async def _take(reader: EventReader, want: int) -> dict[int, list[int]]:
    """partition → offsets handed over, until ``want`` records came (bounded: a hung broker)."""
    got: dict[int, list[int]] = {}

    async def until() -> None:
        while sum(map(len, got.values())) < want:
            batch: Records = await reader.take(timeout_ms=200)
            for p, records in batch.items():
                got.setdefault(p, []).extend(r.offset for r in records)

    await asyncio.wait_for(until(), 60)
    return got


async def test_partitions_are_read_from_where_their_owner_asks(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    await _topic(kafka_bootstrap, kafka_topic, 2)
    await _produce(kafka_bootstrap, kafka_topic, 2, 10)
    reader = EventReader(kafka_bootstrap, kafka_topic, max_records=100)
    reader.assign([0, 1])  # before the start: nothing to read yet
    await reader.start()
    try:
        reader.assign([0, 1])
        # Assigned, never asked for: nothing is read (take waits for a partition to read).
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.take(timeout_ms=200), 1.0)
        reader.seek(0, 3)
        assert await _take(reader, 7) == {0: [3, 4, 5, 6, 7, 8, 9]}
        # Partition 1 revoked and assigned again: it waits for its seek again; partition 0 goes
        # on after what it handed over (nothing again).
        reader.assign([0])
        reader.assign([0, 1])
        reader.fetch(BUSY)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_take(reader, 1), 1.0)
        reader.seek(1, 8)
        reader.fetch(LIGHT)
        assert await _take(reader, 2) == {1: [8, 9]}
        await _produce(kafka_bootstrap, kafka_topic, 2, 1)  # offset 10 of each
        assert await _take(reader, 2) == {0: [10], 1: [10]}
        # Read again from an earlier offset: those records come again, in order.
        reader.seek(0, 8)
        assert await _take(reader, 3) == {0: [8, 9, 10]}
    finally:
        await reader.stop()
