"""The lag gauges are measured on the real broker: how far each owned partition's owner is
behind the log (records, and seconds since the oldest record not applied), and that a
measurement leaves every partition paused, so nothing is fetched between two measurements."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from agents.health import LagMonitor
from agents.indexing import source_key

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

T0 = 1_790_000_000_000  # ms: the first record's timestamp


async def _topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        for _ in range(100):
            if (await admin.describe_topics([name]))[0]["partitions"]:
                return
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


def _owner(next_offset: int) -> Any:
    return SimpleNamespace(pm=SimpleNamespace(next_offset=next_offset))


async def test_lag_is_measured_from_the_oldest_record_not_applied(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    phases = f"{kafka_topic}.phases"
    await _topic(kafka_bootstrap, kafka_topic, 2)
    await _topic(kafka_bootstrap, phases, 2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        # Records larger than a measurement needs: one batch each (send_and_wait one by one).
        for i in range(4):
            await producer.send_and_wait(
                kafka_topic, b"x" * 300_000, key=b"k", partition=0, timestamp_ms=T0 + 1000 * i
            )
        for _ in range(3):
            await producer.send_and_wait(phases, b"p", key=b"k", partition=1)
    finally:
        await producer.stop()
    owners = {0: _owner(1), 1: _owner(0)}  # partition 1 holds no record: no lag
    now = [T0 / 1000 + 10.0]
    index: dict[str, int] | None = {source_key(phases, 1): 1}  # the index is 2 records behind
    monitor = LagMonitor(
        bootstrap=kafka_bootstrap,
        events_topic=kafka_topic,
        phases_topic=phases,
        owners=lambda: cast(Any, owners),
        index_offsets=lambda: index,
        clock=lambda: now[0],
    )
    async with monitor.consumer() as consumer:
        lag = await monitor.once(consumer)
        assert lag.records == {0: 3, 1: 0}
        assert lag.seconds == {0: pytest.approx(9.0), 1: 0.0}  # the record at offset 1: T0 + 1 s
        assert lag.index == 2
        # Nothing is fetched until the next measurement: what is assigned is paused.
        assert consumer.assignment()
        assert consumer.paused() == consumer.assignment()

        owners[0] = _owner(3)  # the owner applied two more records
        now[0] += 5.0
        lag = await monitor.once(consumer)
        assert lag.records == {0: 1, 1: 0}
        assert lag.seconds[0] == pytest.approx(12.0)  # offset 3: T0 + 3 s
        assert consumer.paused() == consumer.assignment()
        index = None  # no index kept by this worker
        assert (await monitor.once(consumer)).index is None
