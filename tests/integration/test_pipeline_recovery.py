"""Crashes, duplicates, poison records and scale-out, on real Kafka and etcd."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from agents.config import Settings
from agents.readback import materialized_states, phase_changes, read_topic
from agents.resources import Resources
from agents.workload import generate
from events.catalogue import Event
from events.codec import encode, encode_commit
from partition.placement import partition_for
from tests.harness import (
    Worker,
    caught_up,
    free_port,
    make_settings,
    prepare_topics,
    wait_until,
)
from tests.integration.test_pipeline import check_derived_stream, check_phase_stream, produce
from tests.oracle import Oracle

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(300)]


async def produce_slowly(
    s: Settings, events: list[Event], *, chunk: int = 500, pause: float = 0.05
) -> None:
    """Produce in acknowledged chunks over a few seconds, so a worker can die in the middle."""
    for i in range(0, len(events), chunk):
        await produce(s.kafka, s.topic_events, events[i : i + chunk], chunk=chunk)
        await asyncio.sleep(pause)


async def settle_and_compare(s: Settings, events: list[Event], resources: Resources) -> None:
    await wait_until(lambda: caught_up(s, resources), within=180, what="the checkpoints")
    oracle = Oracle().feed(events)
    dm = await resources.datamanager()
    got = await materialized_states(dm, s.topic_events, range(s.partitions))
    assert got.keys() == oracle.states.keys()
    assert got == oracle.encoded()
    phases = await read_topic(s.kafka, s.topic_phases)
    check_phase_stream(phase_changes(phases), oracle)
    # A dead worker's ready tasks beyond its checkpoint are read back from runs.tasks, not sent
    # again: each exactly once, on its own topic.
    check_derived_stream(phases, await read_topic(s.kafka, s.topic_tasks), oracle)


async def test_sigkill_mid_load_loses_nothing_and_repeats_nothing(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects")
    await prepare_topics(s)
    events = generate(seed=11, runs=3000)
    resources = Resources(s)
    first = Worker(s, tmp_path / "w1.log").start()
    load = asyncio.ensure_future(produce_slowly(s, events))
    try:
        # Kill once the worker has checkpointed part of the load but not all of it.
        async def some_progress() -> bool:
            dm = await resources.datamanager()
            from agents.readback import checkpointed_offsets

            done = await checkpointed_offsets(dm, s.topic_events, range(s.partitions))
            return sum(done.values()) > 0

        await wait_until(some_progress, within=120, what="a first checkpoint")
        first.kill(signal.SIGKILL)
        await load  # every event is acknowledged by Kafka before we go on
        second = Worker(s, tmp_path / "w2.log").start()
        try:
            await settle_and_compare(s, events, resources)
        finally:
            second.stop()
    finally:
        first.kill()
        load.cancel()
        await resources.close()


async def test_duplicates_change_nothing_and_poison_goes_to_the_dlq(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects")
    await prepare_topics(s)
    events = generate(seed=5, runs=300)
    first_run = events[0].run_id
    poison = {
        "invalid_json": b'{"type": "run.created", ',
        "unknown_type": orjson.dumps({**orjson.loads(encode(events[0])), "type": "run.teleported"}),
        "unsupported_version": orjson.dumps({**orjson.loads(encode(events[0])), "version": 99}),
        "oversize": b'{"pad": "' + b"x" * (s.max_event_bytes + 10) + b'"}',
        "schema": orjson.dumps({**orjson.loads(encode(events[0])), "data": {"name": 3}}),
        # a creation sent to a partition its run does not hash to
        "misrouted": encode(events[0]),
    }
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka, acks="all", max_request_size=4 << 20)
    await producer.start()
    try:
        half = len(events) // 2
        await produce(s.kafka, s.topic_events, events[:half])
        for reason, raw in poison.items():
            home = partition_for(first_run, s.partitions)
            target = (home + 1) % s.partitions if reason == "misrouted" else home
            await producer.send_and_wait(
                s.topic_events, raw, partition=target, headers=[("x-test", reason.encode())]
            )
        # The same bytes twice (a producer retry) and the same events again in a new commit.
        home = partition_for(first_run, s.partitions)
        same = [e for e in events[:half] if partition_for(e.run_id, s.partitions) == home][:50]
        dup = encode_commit(same)
        await producer.send_and_wait(s.topic_events, dup, partition=home)
        await producer.send_and_wait(s.topic_events, dup, partition=home)
        await produce(s.kafka, s.topic_events, events[half:])
        await produce(s.kafka, s.topic_events, events[half : half + 100])
    finally:
        await producer.stop()

    resources = Resources(s)
    worker = Worker(s, tmp_path / "w.log").start()
    try:
        await settle_and_compare(s, events, resources)
    finally:
        worker.stop()
        await resources.close()

    dead = [r for recs in (await read_topic(s.kafka, s.topic_dlq)).values() for r in recs]
    assert len(dead) == len(poison)
    by_reason = {}
    for _, _, value, headers in dead:
        h = dict(headers)
        by_reason[h["runstream-error"].decode()] = (value, h)
    assert set(by_reason) == set(poison)
    for reason, (value, h) in by_reason.items():
        assert value == poison[reason]  # the original bytes
        assert h["x-test"] == reason.encode()  # the original headers kept
        assert h["runstream-source-topic"] == s.topic_events.encode()
        assert int(h["runstream-source-offset"]) >= 0
        assert h["runstream-error-message"]


async def test_two_workers_then_one_killed_the_survivor_takes_over(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects")
    await prepare_topics(s)
    events = generate(seed=13, runs=2000)
    resources = Resources(s)
    a = Worker(s, tmp_path / "a.log").start()
    # A port of its own (the next one up may be taken: it once was, and b crashed at start).
    b = Worker(Settings(**{**_fields(s), "web_port": free_port()}), tmp_path / "b.log").start()
    try:

        async def both_own_partitions() -> bool:
            return all("partition loaded" in w.log_text() for w in (a, b))

        await wait_until(both_own_partitions, within=120, what="both workers to own partitions")
        load = asyncio.ensure_future(produce_slowly(s, events, chunk=400))
        await asyncio.sleep(1.0)
        a.kill(signal.SIGKILL)
        await load
        await settle_and_compare(s, events, resources)
        assert b.alive()
    finally:
        with contextlib.suppress(Exception):
            a.kill()
        b.stop()
        await resources.close()


def _fields(s: Settings) -> dict[str, object]:
    from dataclasses import fields

    return {f.name: getattr(s, f.name) for f in fields(s)}
