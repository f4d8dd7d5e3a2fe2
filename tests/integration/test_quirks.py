"""Faust's and aiokafka's quirks (``agents/quirks.py``) on the real broker, with the installed
versions: the private names each workaround uses are there on a real started consumer and
producer, the behaviour each works around still happens, and each workaround works."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import ConsumerStoppedError

from agents import quirks
from agents.app import FETCH_MAX_WAIT_MS, create_app
from agents.materializer_service import _FaustSender
from tests.harness import make_settings

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


async def _topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
        for _ in range(100):  # a new topic's metadata reaches the broker's cache shortly after
            described = await admin.describe_topics([name])
            if len(described[0]["partitions"]) == partitions:
                return
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def _until(check: Any, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_faust_quirks_on_a_started_worker(kafka_bootstrap: str, unique: str) -> None:
    settings = make_settings(unique, kafka_bootstrap, "unused", "unused", partitions=2)
    await _topic(kafka_bootstrap, settings.topic_events, 2)
    app = create_app(settings)
    topic = app.runstream_topics.events  # type: ignore[attr-defined]
    seen: list[tuple[int, bytes | None]] = []

    @app.agent(topic)
    async def collect(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            if event.message.partition == 0:
                seen.append((event.message.offset, event.value))

    await app.start()
    try:
        consumer: Any = app.consumer
        await _until(lambda: consumer.assignment() and consumer.flow_active and not app.rebalancing)

        # Faust's fixed fetch wait: aiokafka's consumer keeps Faust's value, its fetcher has ours
        # (set at the assignment by agents.app through override_fixed_fetch_wait).
        fetcher = quirks.consumer_fetcher(app)
        assert fetcher is not None
        assert fetcher._fetch_max_wait_ms == FETCH_MAX_WAIT_MS
        assert consumer._thread._consumer._fetch_max_wait_ms == quirks.FAUST_FETCH_MAX_WAIT_MS

        # Faust's producer has no batch call: the aiokafka one inside it sends a batch.
        assert isinstance(quirks.producer_for_batches(app.producer), AIOKafkaProducer)
        values = [b"v0", b"v1", b"v2"]
        sent = await _FaustSender(app).send_batch(
            settings.topic_events, 0, [(b"k", v) for v in values]
        )
        assert (await sent).offset == 2
        await _until(lambda: len(seen) == 3)
        assert seen == list(enumerate(values))
    finally:
        await app.stop()


async def test_a_fresh_consumer_knows_no_partitions_until_asked(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    await _topic(kafka_bootstrap, kafka_topic, 3)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        assert consumer.partitions_for_topic(kafka_topic) is None
        assert kafka_topic in await consumer.topics()  # public, but names only...
        assert consumer.partitions_for_topic(kafka_topic) is None  # ...and the cache stays empty
        assert await quirks.uncached_partitions_for_topic(consumer, kafka_topic) == {0, 1, 2}
        assert await quirks.uncached_partitions_for_topic(consumer, kafka_topic + ".none") == set()
        # Asked about, not created (deploy/local's broker creates topics on demand otherwise).
        assert kafka_topic + ".none" not in await consumer.topics()
    finally:
        await quirks.stop_despite_stray_cancel(consumer)


async def test_partitions_are_asked_for_the_one_topic(kafka_bootstrap: str, kafka_topic: str) -> None:  # fmt: skip
    # Not the metadata of every topic of the cluster: its cost grows with the cluster's topics.
    await _topic(kafka_bootstrap, kafka_topic, 2)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    asked: list[object] = []
    client = consumer._client
    get_conn = client._get_conn

    async def spying(*args: Any, **kwargs: Any) -> Any:
        conn = await get_conn(*args, **kwargs)
        if conn is not None and not hasattr(conn, "_spied"):
            send = conn.send

            def send_spied(request: Any, *a: Any, **k: Any) -> Any:
                asked.append(getattr(request, "_topics", "?"))
                return send(request, *a, **k)

            conn.send, conn._spied = send_spied, True
        return conn

    client._get_conn = spying
    try:
        assert await quirks.uncached_partitions_for_topic(consumer, kafka_topic) == {0, 1}
        assert asked == [[kafka_topic]]
    finally:
        client._get_conn = get_conn
        await quirks.stop_despite_stray_cancel(consumer)


async def test_a_consumer_stopped_right_after_it_started(kafka_bootstrap: str) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    with pytest.raises(asyncio.CancelledError):
        await consumer.stop()  # the stray one, which leaves the fetcher running
    assert not consumer._fetcher._fetch_task.done()
    await consumer._fetcher.close()
    await consumer._client.close()

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    await quirks.stop_despite_stray_cancel(consumer)
    assert consumer._fetcher._fetch_task.done()  # stopped all the way
    task = asyncio.current_task()
    assert task is not None
    assert not task.cancelling()


async def test_getmany_promptly_waits_for_records_then_takes_them(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    from aiokafka import TopicPartition

    await _topic(kafka_bootstrap, kafka_topic, 1)
    tp = TopicPartition(kafka_topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    await producer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        # Nothing to read: {} once the wait passed.
        assert await quirks.getmany_promptly(consumer, wait=0.3, max_records=10) == {}
        # Waiting when the record is produced: it is handed over.
        waiting = asyncio.ensure_future(quirks.getmany_promptly(consumer, wait=60, max_records=10))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await producer.send_and_wait(kafka_topic, b"one", partition=0)
        got = await waiting
        assert [m.value for m in got[tp]] == [b"one"]
        # Records fetched already are taken without waiting, at most max_records at a time.
        for i in range(5):
            await producer.send_and_wait(kafka_topic, b"%d" % i, partition=0)
        values: list[bytes] = []
        while len(values) < 5:
            got = await quirks.getmany_promptly(consumer, wait=10, max_records=2)
            assert len(got[tp]) <= 2
            values += [m.value for m in got[tp]]
        assert values == [b"0", b"1", b"2", b"3", b"4"]
        # A wake-up with no record to take (the routine's own, after the wrapper's) does not
        # end the wait early: the call waits on for a record.
        waiting = asyncio.ensure_future(quirks.getmany_promptly(consumer, wait=60, max_records=10))
        await asyncio.sleep(0.2)
        fetcher = consumer._fetcher
        assert fetcher._fetch_waiters
        for waiter in list(fetcher._fetch_waiters):
            fetcher._notify(waiter)
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await producer.send_and_wait(kafka_topic, b"late", partition=0)
        assert [m.value for m in (await waiting)[tp]] == [b"late"]
        # A consumer stopped while waiting: {} (as getmany returns), no error.
        waiting = asyncio.ensure_future(quirks.getmany_promptly(consumer, wait=60, max_records=10))
        await asyncio.sleep(0.2)
        await quirks.stop_despite_stray_cancel(consumer)
        assert await asyncio.wait_for(waiting, 30) == {}
        # Called once it stopped: the error getmany raises (a loop around it ends, not spins).
        with pytest.raises(ConsumerStoppedError):
            await quirks.getmany_promptly(consumer, wait=1, max_records=10)
    finally:
        await producer.stop()
        await quirks.stop_despite_stray_cancel(consumer)
