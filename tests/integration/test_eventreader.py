"""The materializer's reader of ``runs.events`` (``agents.eventreader``) on a real broker: a
partition is read only from where its owner asked, a reassignment goes on after the last record
handed over, a fetch setting changes nothing it reads, and a transactional producer's markers
are read past (the end of what was read says so, the records before a seek are told apart)."""

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
            for p, part in batch.items():
                got.setdefault(p, []).extend(r.offset for r in part.records)

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


async def test_markers_are_read_past_and_parts_read_before_a_seek_are_told_apart(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    await _topic(kafka_bootstrap, kafka_topic, 1)
    # Two transactions of two records: offsets 0 1 (marker 2) 3 4 (marker 5); the log ends at 6.
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"{kafka_topic}-tx"
    )
    await producer.start()
    try:
        for t in range(2):
            async with producer.transaction():
                for i in range(2):
                    await producer.send_and_wait(kafka_topic, f"t{t}-{i}".encode(), partition=0)
    finally:
        await producer.stop()
    reader = EventReader(kafka_bootstrap, kafka_topic, max_records=100)
    await reader.start()
    try:
        reader.assign([0])
        reader.seek(0, 0)
        first = reader.generation(0)

        async def read_to(end: int) -> list[int]:
            offsets: list[int] = []
            while True:
                part = (await reader.take(timeout_ms=200)).get(0)
                if part is not None:
                    assert part.generation == reader.generation(0)
                    offsets.extend(r.offset for r in part.records)
                    if part.end >= end:
                        assert part.end == end
                        return offsets

        # Every record, and an end past the last marker: nothing at offset 5 to wait for.
        assert await asyncio.wait_for(read_to(6), 60) == [0, 1, 3, 4]
        # Asked to read from a marker's offset: the next record comes first.
        reader.seek(0, 2)
        assert reader.generation(0) == first + 1
        assert await asyncio.wait_for(read_to(6), 60) == [3, 4]
        # A part read before a seek keeps the generation it was read in.
        reader.seek(0, 0)
        part = None
        while part is None:
            part = (await asyncio.wait_for(reader.take(timeout_ms=200), 60)).get(0)
        reader.seek(0, 3)
        assert part.generation == reader.generation(0) - 1
        assert await asyncio.wait_for(read_to(6), 60) == [3, 4]
    finally:
        await reader.stop()
