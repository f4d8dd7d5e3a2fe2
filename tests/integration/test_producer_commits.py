"""When ``EventProducer`` sends a commit (agents/producer.py): an idle partition sends at once,
appends made while a commit is in flight go together as the next one, and per-run order holds.
On the real broker; records are counted on the topic itself."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from agents.producer import EventProducer
from events.catalogue import CancelRequested, Event, make_event
from events.codec import decode_record
from events.ids import format_run_id

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


def _event(run: str, n: int) -> Event:
    """Event ``n`` of run ``r-<k>``; its id is ``r-<k>.<n>``."""
    run_id = format_run_id(int(run.removeprefix("r-")) + 1)
    return make_event(CancelRequested(), id=f"{run}.{n}", run_id=run_id, at=n)


async def _records(bootstrap: str, topic: str) -> list[list[Event]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[list[Event]] = []
        while len(out) < end:
            got = await consumer.getmany(tp, timeout_ms=1000)
            out.extend(decode_record(m.value) for m in got.get(tp, []) if m.value is not None)
        return out
    finally:
        await consumer.stop()


async def _topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        await admin.close()


async def test_appends_while_a_commit_is_in_flight_form_the_next_commit(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    await _topic(kafka_bootstrap, kafka_topic)
    async with EventProducer(kafka_bootstrap, kafka_topic) as producer:
        # Alone on an idle partition: a commit of its own.
        await producer.append([_event("r-1", 0)])
        # Appended in one turn of the loop: one commit, sent at once.
        first = asyncio.ensure_future(producer.append([_event("r-1", 1)]))
        await asyncio.sleep(0)  # the first commit is now in flight
        rest = [producer.append([_event(f"r-{i % 3}", 10 + i)]) for i in range(20)]
        await asyncio.gather(first, *rest)
    records = await _records(kafka_bootstrap, kafka_topic)
    assert [[e.id for e in r] for r in records[:2]] == [["r-1.0"], ["r-1.1"]]
    # The twenty appends made while r-1.1 was in flight went as one commit, in call order.
    assert len(records) == 3
    assert [e.id for e in records[2]] == [f"r-{i % 3}.{10 + i}" for i in range(20)]


async def test_a_full_commit_goes_without_waiting_for_the_one_in_flight(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    await _topic(kafka_bootstrap, kafka_topic)
    async with EventProducer(kafka_bootstrap, kafka_topic, max_commit_events=5) as producer:
        await asyncio.gather(*(producer.append([_event("r-9", i)]) for i in range(23)))
    records = await _records(kafka_bootstrap, kafka_topic)
    assert all(len(r) <= 5 for r in records)
    assert [e.id for r in records for e in r] == [f"r-9.{i}" for i in range(23)]
