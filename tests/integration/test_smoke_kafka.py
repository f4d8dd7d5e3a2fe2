"""The broker is a real Kafka: a Faust agent consumes what aiokafka produced through it."""

from __future__ import annotations

import asyncio

import faust
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


async def test_faust_agent_consumes_through_the_broker(kafka_bootstrap: str, unique: str) -> None:
    topic_name = f"smoke.{unique}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic_name, num_partitions=2, replication_factor=1)])
        for _ in range(100):  # a new topic's metadata reaches the broker's cache shortly after
            described = await admin.describe_topics([topic_name])
            if described[0]["partitions"]:
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    assert len(described[0]["partitions"]) == 2

    app = faust.App(
        f"smoke-{unique}",
        broker=f"kafka://{kafka_bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_replication_factor=1,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
    )
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes, value_serializer="raw")
    got: asyncio.Queue[tuple[bytes | None, bytes]] = asyncio.Queue()

    @app.agent(topic)
    async def collect(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            await got.put((event.key, event.value))

    sent = {f"k{i}".encode(): f"value-{i}-{unique}".encode() for i in range(20)}
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for k, v in sent.items():
            await producer.send_and_wait(topic_name, v, key=k)
    finally:
        await producer.stop()

    await app.start()
    try:
        received = {}
        while len(received) < len(sent):
            k, v = await asyncio.wait_for(got.get(), timeout=60)
            assert k is not None
            received[k] = v
    finally:
        await app.stop()
    assert received == sent
