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

        # Faust's aiokafka producer was made with the prompt sender routine (send_promptly).
        assert quirks.producer_for_batches(app.producer)._sender._runstream_in_flight >= 1  # type: ignore[attr-defined]

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


async def _requests_written(producer: AIOKafkaProducer, topic: str, turns: int) -> int:
    """Produce requests the producer wrote within ``turns`` turns of the event loop after a
    record was handed to it (counted by the connection's correlation ids)."""
    from aiokafka.client import ConnectionGroup

    client: Any = producer.client
    node = client.cluster.leader_for_partition(__import__("aiokafka").TopicPartition(topic, 0))
    conn = client._conns[(node, ConnectionGroup.DEFAULT)]
    before = conn._correlation_id
    fut = await producer.send(topic, b"turns", partition=0)
    for _ in range(turns):
        await asyncio.sleep(0)
    written = int(conn._correlation_id - before)
    await fut
    return written


async def test_send_promptly_writes_a_request_one_turn_after_the_record(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    await _topic(kafka_bootstrap, kafka_topic, 1)
    plain = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)  # fmt: skip
    prompt = quirks.send_promptly(
        AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    )
    for producer in (plain, prompt):
        await producer.start()
    try:
        for producer in (plain, prompt):
            await producer.send_and_wait(kafka_topic, b"warm", partition=0)  # metadata, connection
        # What the quirk works around: aiokafka writes the request on the third turn.
        assert await _requests_written(plain, kafka_topic, 2) == 0
        assert await _requests_written(plain, kafka_topic, 3) == 1
        # With it, on the first.
        assert await _requests_written(prompt, kafka_topic, 1) == 1
    finally:
        for producer in (plain, prompt):
            await producer.stop()


async def test_send_promptly_keeps_each_partitions_order_with_requests_in_flight(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    from aiokafka import TopicPartition

    partitions = 4
    await _topic(kafka_bootstrap, kafka_topic, partitions)
    producer = quirks.send_promptly(
        AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True),
        in_flight=3,
    )
    await producer.start()
    sender: Any = producer._sender  # type: ignore[attr-defined]
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:  # requests in flight to one broker, at every turn
        nonlocal peak
        while not done.is_set():
            peak = max(peak, *sender._runstream_sending.values(), 0)
            await asyncio.sleep(0)

    # Partitions 0 and 1 get single records, 2 and 3 batches of three, from many tasks at
    # once: several requests (other partitions) are in flight together, and records wait
    # while their partition's request is.
    async def single(p: int, i: int) -> list[tuple[int, bytes]]:
        value = b"%d-%d" % (p, i)
        meta = await producer.send_and_wait(kafka_topic, value, partition=p)
        return [(meta.offset, value)]

    async def batch(p: int, i: int) -> list[tuple[int, bytes]]:
        b = producer.create_batch()
        values = [b"%d-%d.%d" % (p, i, j) for j in range(3)]
        for v in values:
            assert b.append(key=None, value=v, timestamp=None)
        meta = await (await producer.send_batch(b, kafka_topic, partition=p))
        return [(meta.offset + j, v) for j, v in enumerate(values)]

    watching = asyncio.ensure_future(watch())
    try:
        # A record for partition 0, its request written (a turn), then one for partition 1: its
        # request goes while the first is in flight (an answer takes the broker's round trip).
        for i in range(20):
            first = await producer.send(kafka_topic, b"0-pair%d" % i, partition=0)
            await asyncio.sleep(0)
            second = await producer.send(kafka_topic, b"1-pair%d" % i, partition=1)
            await asyncio.gather(first, second)
        calls = [(single if p < 2 else batch)(p, i) for i in range(60) for p in range(partitions)]
        results = await asyncio.gather(*calls)
    finally:
        done.set()
        await watching
        await producer.stop()
    assert 1 < peak <= 3  # requests were in flight together, never more than allowed
    pairs = 20  # the pairs' records come first in partitions 0 and 1
    acked: dict[int, dict[int, bytes]] = {p: {} for p in range(partitions)}
    for (p, _), records in zip(
        [(p, i) for i in range(60) for p in range(partitions)], results, strict=True
    ):
        for offset, value in records:
            assert offset not in acked[p]
            acked[p][offset] = value

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(kafka_topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        log: dict[int, dict[int, bytes]] = {p: {} for p in range(partitions)}
        deadline = time.monotonic() + 60
        while sum(map(len, log.values())) < sum(map(len, acked.values())):
            assert time.monotonic() < deadline, "timed out"
            for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
                log[tp.partition].update((m.offset, m.value) for m in msgs)
    finally:
        await quirks.stop_despite_stray_cancel(consumer)
    # Every record is in the log once, at the offset it was acknowledged at; single records in
    # the order they were sent, each batch's records together and in order.
    for p in (0, 1):
        ordered = [log[p][o] for o in sorted(log[p])]
        assert ordered[:pairs] == [b"%d-pair%d" % (p, i) for i in range(pairs)]
        assert ordered[pairs:] == [b"%d-%d" % (p, i) for i in range(60)]
        for o in sorted(log[p])[:pairs]:
            del log[p][o]
    assert log == acked


async def _fetch_written_on_taking(
    consumer: AIOKafkaConsumer, tp: Any, producer: AIOKafkaProducer, *, fetch_now: bool = True
) -> int:
    """Fetch requests the consumer wrote from the moment its long-polling fetch waited at the
    broker until getmany_promptly handed over the record that fetch brought, counted by the
    connection's correlation ids at the end of the hand-over's own step (the consumers here
    hold a fetch 30 s, so no other fetch ends meanwhile)."""
    from aiokafka.client import ConnectionGroup

    client: Any = consumer._client  # type: ignore[attr-defined]
    conn = client._conns[(client.cluster.leader_for_partition(tp), ConnectionGroup.DEFAULT)]

    async def take() -> tuple[Any, int]:
        got = await quirks.getmany_promptly(consumer, wait=60, max_records=10, fetch_now=fetch_now)  # fmt: skip
        return got, conn._correlation_id  # in the same step as the hand-over

    waiting = asyncio.ensure_future(take())
    await asyncio.sleep(0.3)  # the consumer's fetch waits at the broker
    before = conn._correlation_id
    await producer.send_and_wait(tp.topic, b"x", partition=tp.partition)
    got, after = await waiting
    assert [m.value for m in got[tp]] == [b"x"]
    return int(after - before)


async def test_fetch_promptly_writes_the_next_fetch_as_the_records_are_taken(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    from aiokafka import TopicPartition

    await _topic(kafka_bootstrap, kafka_topic, 2)
    tps = {"plain": TopicPartition(kafka_topic, 0), "prompt": TopicPartition(kafka_topic, 1)}
    tp = tps["prompt"]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    plain, prompt = (
        AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, fetch_max_wait_ms=30_000
        )
        for _ in range(2)
    )
    await producer.start()
    for consumer in (plain, prompt):
        await consumer.start()
    try:
        await quirks.fetch_promptly(prompt)
        await quirks.fetch_promptly(prompt)  # once is enough; again changes nothing
        for consumer, name in ((plain, "plain"), (prompt, "prompt")):
            consumer.assign([tps[name]])
            await consumer.seek_to_end(tps[name])
        # What the quirk works around: the next fetch is not written yet as the records are
        # handed over (the fetcher's routine writes it turns later).
        assert await _fetch_written_on_taking(plain, tps["plain"], producer) == 0
        # With it, by then it is.
        assert await _fetch_written_on_taking(prompt, tp, producer) == 1
        # Unless the caller says not now (the worker's reader while its fetches batch).
        assert await _fetch_written_on_taking(prompt, tp, producer, fetch_now=False) == 0
        # And the consumer reads on as before: records in order, none twice.
        for i in range(50):
            await producer.send(kafka_topic, b"%d" % i, partition=tp.partition)
        await producer.flush()
        values: list[bytes] = []
        while len(values) < 50:
            got = await quirks.getmany_promptly(prompt, wait=10, max_records=7)
            values += [m.value for m in got.get(tp, [])]
        assert values == [b"%d" % i for i in range(50)]
        # A consumer assigned already is refused (its routine may be fetching).
        with pytest.raises(ValueError, match="not assigned"):
            await quirks.fetch_promptly(plain)
    finally:
        await producer.stop()
        for consumer in (plain, prompt):
            await quirks.stop_despite_stray_cancel(consumer)
