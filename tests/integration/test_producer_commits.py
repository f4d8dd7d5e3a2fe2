"""How ``EventProducer`` sends commits (agents/producer.py): a call's events to a partition as one
record (split past the limits), an idle partition at once, appends made while a batch is in
flight together in the next request, per-run order kept. On the real broker; records are counted
on the topic itself, requests on the producer's connection."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from agents.producer import EventProducer
from events.catalogue import CancelRequested, Event, make_event
from events.codec import decode_record, encode
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


def _produce_requests(producer: EventProducer) -> int:
    """Requests written so far on the producer's connections (their correlation ids)."""
    client: Any = producer._producer.client
    return sum(conn._correlation_id for conn in client._conns.values())


async def test_appends_while_a_batch_is_in_flight_go_together_in_the_next(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    await _topic(kafka_bootstrap, kafka_topic)
    async with EventProducer(kafka_bootstrap, kafka_topic) as producer:
        # Alone on an idle partition: a commit of its own, sent at once.
        await producer.append([_event("r-1", 0)])
        # Sent in the next turn of the loop; twenty appends made while it is in flight wait
        # in the partition's next batch and go in one request when it is acknowledged.
        first = asyncio.ensure_future(producer.append([_event("r-1", 1)]))
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the first commit's request is written
        before = _produce_requests(producer)
        rest = [producer.append([_event(f"r-{i % 3}", 10 + i)]) for i in range(20)]
        await asyncio.gather(first, *rest)
        requests = _produce_requests(producer) - before
    records = await _records(kafka_bootstrap, kafka_topic)
    # A commit per call, in call order.
    assert [[e.id for e in r] for r in records] == [
        ["r-1.0"],
        ["r-1.1"],
        *([f"r-{i % 3}.{10 + i}"] for i in range(20)),
    ]
    assert requests == 1


async def test_a_call_goes_as_one_commit_split_past_the_limits(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    await _topic(kafka_bootstrap, kafka_topic)
    async with EventProducer(kafka_bootstrap, kafka_topic, max_commit_events=5) as producer:
        await producer.append([_event("r-9", i) for i in range(4)])
        await producer.append([_event("r-9", 10 + i) for i in range(23)])
        await asyncio.gather(*(producer.append([_event("r-8", i)]) for i in range(3)))
    records = await _records(kafka_bootstrap, kafka_topic)
    assert [len(r) for r in records] == [4, 5, 5, 5, 5, 3, 1, 1, 1]
    assert [e.id for r in records for e in r] == [
        *(f"r-9.{i}" for i in range(4)),
        *(f"r-9.{10 + i}" for i in range(23)),
        *(f"r-8.{i}" for i in range(3)),
    ]
    # By size: commits of at most max_commit_bytes, a lone larger event in one of its own.
    big = make_event(CancelRequested(), id="r-7.big", run_id=format_run_id(8), at=0)
    size = len(encode(big))
    async with EventProducer(
        kafka_bootstrap, kafka_topic, max_commit_bytes=2 * size + 3
    ) as producer:
        await producer.append([big] * 5)
    records = (await _records(kafka_bootstrap, kafka_topic))[9:]
    assert [len(r) for r in records] == [2, 2, 1]
