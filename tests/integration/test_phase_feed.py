"""``agents.phasefeed.PhaseHub`` on a real Kafka: one consumer fanned out to many followers.

Every test writes ``run.phase_changed`` records straight to a fresh topic (one event per record,
as the materializer does) and checks what followers receive: every change exactly once and in
order per partition, resumption from a cursor, 410/400 for cursors, ``close()``, slow followers;
and a hub of the ready-task stream, which streams ``task.ready`` only, with cursors of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete

from agents.kafka import bare_consumer, partitions_of
from agents.phasefeed import (
    READY_CURSOR_PREFIX,
    PhaseHub,
    decode_feed_cursor,
    encode_feed_cursor,
    is_ready_task,
)
from api.errors import CursorExpired, InvalidCursor, Unavailable
from events import Phase, PhaseChanged, Result, TaskReady, encode, make_event
from events.catalogue import Event
from tests.harness import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

PARTITIONS = 3
MARK = "end"  # the group of a marker event: the last one a test writes to a partition


async def make_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)]
        )
    finally:
        await admin.close()
    async with bare_consumer(bootstrap) as c:

        async def known() -> bool:
            return len(await partitions_of(c, topic)) == PARTITIONS

        await wait_until(known, within=30, what=f"the partitions of {topic}")


def change(n: int, *, group: str = "/project/p/branch/main") -> Event:
    data = PhaseChanged(group=group, phase=Phase.QUEUED, result=Result.UNKNOWN, seq=1)
    return make_event(data, id=f"{n:016d}.phase.1", run_id=f"{n:016d}", at=n)


class Log:
    """Writes phase changes to the topic, remembering (partition, run id) in write order."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.written: list[tuple[int, str]] = []
        self.n = 0

    async def write(self, count: int) -> None:
        for _ in range(count):
            self.n += 1
            ev = change(self.n)
            p = self.n % PARTITIONS
            await self.producer.send_and_wait(self.topic, encode(ev), partition=p)
            self.written.append((p, ev.run_id))

    async def mark(self) -> None:
        """One marker per partition, after everything else (run id ≡ partition, as the others)."""
        for p in range(PARTITIONS):
            ev = change(PARTITIONS * 10**9 + p, group=MARK)
            await self.producer.send_and_wait(self.topic, encode(ev), partition=p)


@asynccontextmanager
async def log_of(bootstrap: str, topic: str) -> AsyncIterator[Log]:
    await make_topic(bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        yield Log(producer, topic)
    finally:
        await producer.stop()


@asynccontextmanager
async def hub_of(bootstrap: str, topic: str, **kw: int) -> AsyncIterator[PhaseHub]:
    hub = PhaseHub(bootstrap, topic, **kw)
    try:
        yield hub
    finally:
        await hub.close()


async def until_marks(
    stream: AsyncIterator[tuple[str, Event]],
) -> tuple[list[tuple[int, str]], list[str]]:
    """(partition, run id) of everything before every partition's marker, and the cursors."""
    got: list[tuple[int, str]] = []
    cursors: list[str] = []
    marks: set[int] = set()
    async for cursor, ev in stream:
        p = int(ev.run_id) % PARTITIONS
        cursors.append(cursor)
        if isinstance(ev.data, PhaseChanged) and ev.data.group == MARK:
            marks.add(p)
            if len(marks) == PARTITIONS:
                return got, cursors
        else:
            got.append((p, ev.run_id))
    raise AssertionError(f"stream ended before the markers; had {len(got)}")


def per_partition(items: list[tuple[int, str]]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    for p, run_id in items:
        out[p].append(run_id)
    return out


def runs(items: Iterator[tuple[int, str]] | list[tuple[int, str]]) -> list[str]:
    return [run_id for _, run_id in items]


async def test_fifty_followers_each_get_every_change_once_in_partition_order(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    async with (
        log_of(kafka_bootstrap, kafka_topic) as log,
        hub_of(kafka_bootstrap, kafka_topic) as hub,
    ):
        await log.write(5)  # before anyone follows: not part of "from now"
        streams = [await hub.follow(None) for _ in range(50)]
        assert hub.followers == 50
        readers = [asyncio.ensure_future(until_marks(s)) for s in streams]
        await log.write(300)
        await log.mark()
        results = await asyncio.gather(*readers)
        want = per_partition(log.written[5:])
        for got, cursors in results:
            assert per_partition(got) == want
            assert len(cursors) == 300 + PARTITIONS
        # The last cursor names the end of every partition.
        ends = [sum(1 for p, _ in log.written if p == q) + 1 for q in range(PARTITIONS)]
        assert decode_feed_cursor(results[0][1][-1], PARTITIONS) == ends
        for s in streams:
            await s.aclose()  # type: ignore[attr-defined]
        assert hub.followers == 0


async def test_resume_from_a_cursor_yields_exactly_the_rest_across_catch_up_and_live(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    async with (
        log_of(kafka_bootstrap, kafka_topic) as log,
        hub_of(kafka_bootstrap, kafka_topic) as hub,
    ):
        first = await hub.follow(None)
        await log.write(120)
        seen: list[tuple[str, str]] = []
        async for cursor, ev in first:
            seen.append((cursor, ev.run_id))
            if len(seen) == 120:
                break
        assert sorted(r for _, r in seen) == sorted(runs(log.written))
        # Resume after the 40th: the 80 later ones come from the catch-up consumer (the hub is
        # past them), then what is written now comes from the hub's queue; nothing twice.
        resumed = await hub.follow(seen[39][0])
        reader = asyncio.ensure_future(until_marks(resumed))
        await log.write(60)
        await log.mark()
        got, _ = await reader
        order = {r: i for i, (_, r) in enumerate(seen)}
        later_in_partition = [
            (p, r) for p, r in log.written[:120] if order[r] > 39
        ]  # what follows the cursor: per partition, everything after the 40th event
        want = per_partition(later_in_partition + log.written[120:])
        assert per_partition(got) == want
        assert len(got) == len(set(runs(got))) == 80 + 60
        # From the very beginning: everything.
        whole, _ = await until_marks(await hub.follow(encode_feed_cursor([0] * PARTITIONS)))
        assert per_partition(whole) == per_partition(log.written)


async def test_cursors_older_than_the_log_are_410_and_bad_ones_400_before_streaming(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    async with (
        log_of(kafka_bootstrap, kafka_topic) as log,
        hub_of(kafka_bootstrap, kafka_topic) as hub,
    ):
        await log.write(30)  # 10 per partition
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:  # retention, by hand: partition 1 now starts at offset 6
            await admin.delete_records({TopicPartition(kafka_topic, 1): RecordsToDelete(6)})
        finally:
            await admin.close()
        with pytest.raises(CursorExpired, match="partition 1 starts at 6"):
            await hub.follow(encode_feed_cursor([0, 5, 0]))
        with pytest.raises(InvalidCursor, match="beyond the end"):
            await hub.follow(encode_feed_cursor([0, 6, 11]))
        for bad in ("v1.0.0", "v2.0.0.0", "v1.a.0.0", "v1.0.-1.0", "nonsense"):
            with pytest.raises(InvalidCursor, match="malformed"):
                await hub.follow(bad)
        assert hub.followers == 0  # nothing was subscribed for a refused cursor
        ok = await hub.follow(encode_feed_cursor([10, 6, 10]))  # the first retained: fine
        await log.write(3)
        await log.mark()
        got, _ = await until_marks(ok)
        retained = [(p, r) for p, r in log.written[:30] if p == 1][6:]
        assert per_partition(got) == per_partition(retained + log.written[30:])


async def test_close_ends_every_follower_and_refuses_new_ones(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    async with log_of(kafka_bootstrap, kafka_topic) as log:
        hub = PhaseHub(kafka_bootstrap, kafka_topic)
        await log.write(3000)
        live = [await hub.follow(None) for _ in range(20)]
        # One follower in the middle of a long catch-up on its own consumer.
        catching_up = await hub.follow(encode_feed_cursor([0] * PARTITIONS))
        first = await anext(catching_up)

        async def drain(stream: AsyncIterator[tuple[str, Event]]) -> int:
            return sum([1 async for _ in stream])

        tasks = [asyncio.ensure_future(drain(s)) for s in live]
        await asyncio.sleep(0.2)  # let every reader block in its wait
        assert not any(t.done() for t in tasks)
        await hub.close()
        counts = await asyncio.gather(*tasks)  # they end (the test's timeout guards a hang)
        assert counts == [0] * 20
        # The catching-up one stops at once too, 2,999 records short of its catch-up's end.
        assert first[1].run_id in runs(log.written)
        assert [item async for item in catching_up] == []
        assert hub.followers == 0
        with pytest.raises(Unavailable):
            await hub.follow(None)
        await hub.close()  # idempotent


async def test_a_slow_follower_is_disconnected_without_holding_back_the_others(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    async with (
        log_of(kafka_bootstrap, kafka_topic) as log,
        hub_of(kafka_bootstrap, kafka_topic, queue_limit=10) as hub,
    ):
        slow = await hub.follow(None)
        fast = await hub.follow(None)
        reader = asyncio.ensure_future(until_marks(fast))
        await log.write(2)
        had = [await anext(slow), await anext(slow)]  # then it stops reading
        await log.write(100)
        await log.mark()
        got, _ = await reader
        assert per_partition(got) == per_partition(log.written)  # the fast one got everything
        rest = [item async for item in slow]  # its queue overflowed: the iterator has ended
        assert rest == []
        assert hub.followers == 1  # only the fast one is still subscribed
        # The slow client resumes from its last cursor and gets exactly what it missed.
        resumed, _ = await until_marks(await hub.follow(had[-1][0]))
        assert sorted(runs(resumed)) == sorted(runs(log.written[2:]))
        assert per_partition(resumed) == per_partition(log.written[2:])


async def test_a_ready_task_hub_streams_only_ready_tasks_with_cursors_of_its_own(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    async with (
        log_of(kafka_bootstrap, kafka_topic) as log,
        hub_of(kafka_bootstrap, kafka_topic) as phases,
    ):
        ready = PhaseHub(
            kafka_bootstrap, kafka_topic, streams=is_ready_task, cursor_prefix=READY_CURSOR_PREFIX
        )
        try:
            from_now = await ready.follow(None)
            changes = await phases.follow(None)
            # Both kinds on one topic (a log written before runs.tasks): each hub keeps its own.
            for n in range(1, 7):
                p = n % PARTITIONS
                task = TaskReady(task_id=f"t{n}", level=0, seq=1)
                ev = make_event(task, id=f"{n:016d}.ready.1", run_id=f"{n:016d}", at=n)
                await log.producer.send_and_wait(kafka_topic, encode(ev), partition=p)
                await log.producer.send_and_wait(kafka_topic, encode(change(n)), partition=p)
            got = [await anext(from_now) for _ in range(6)]
            assert sorted(ev.id for _, ev in got) == sorted(
                f"{n:016d}.ready.1" for n in range(1, 7)
            )
            assert all(c.startswith(f"{READY_CURSOR_PREFIX}.") for c, _ in got)
            seen = [await anext(changes) for _ in range(6)]
            assert {type(ev.data) for _, ev in seen} == {PhaseChanged}
            # A cursor of the phase stream is not one of this stream, and the other way round.
            with pytest.raises(InvalidCursor, match="malformed"):
                await ready.follow(seen[-1][0])
            with pytest.raises(InvalidCursor, match="malformed"):
                await phases.follow(got[-1][0])
            # Resuming from its own cursor: every later ready task exactly once.
            rest = await ready.follow(encode_feed_cursor([0] * PARTITIONS, READY_CURSOR_PREFIX))
            again = [await anext(rest) for _ in range(6)]
            assert sorted(ev.id for _, ev in again) == sorted(ev.id for _, ev in got)
            for stream in (from_now, changes, rest):
                await stream.aclose()  # type: ignore[attr-defined]
        finally:
            await ready.close()
