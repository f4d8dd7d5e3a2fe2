"""A producer that writes ``runs.events`` in Kafka transactions (any language's exactly-once
producer does) leaves a marker after each transaction: an offset no record is ever read at. A
real worker reads past them: it catches up to a log that ends with one (its checkpoints cover the
whole log, ``/healthz`` is ready), and after a restart it reads on from a checkpoint that ends
at one. (Before, a partition whose next offset was a marker waited for that record for ever.) The
events of an aborted transaction are never applied, by the worker or by a replay."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from agents.cli.replay import live_offsets, remove_target, replay, verify
from agents.kafka import end_offsets
from agents.readback import checkpointed_offsets, materialized_states
from agents.resources import Resources
from agents.workload import generate
from events.catalogue import Event
from events.codec import encode
from tests.harness import Worker, caught_up, make_settings, prepare_topics, wait_healthy, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(300)]


async def _produce_in_transactions(
    bootstrap: str,
    topic: str,
    events: Sequence[Event],
    tx_id: str,
    *,
    aborted: Sequence[Event] = (),
) -> None:
    """One record per event, keyed by run id, in transactions of 7 records; then ``aborted`` in a
    transaction that is aborted."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=tx_id)
    await producer.start()
    try:
        for start in range(0, len(events), 7):
            async with producer.transaction():
                for ev in events[start : start + 7]:
                    await producer.send(topic, encode(ev), key=ev.run_id.encode())
        if aborted:
            await producer.begin_transaction()
            sent = [
                await producer.send(topic, encode(ev), key=ev.run_id.encode()) for ev in aborted
            ]
            await asyncio.gather(*sent)
            await producer.abort_transaction()
    finally:
        await producer.stop()


async def test_a_worker_reads_past_transaction_markers_and_restarts_at_one(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects")
    await prepare_topics(s)
    events = generate(seed=11, runs=60)
    half = len(events) // 2
    # Other runs, in transactions that are aborted: never applied, by the worker or a replay.
    aborted = generate(seed=12, runs=10, first_run_id=1000)
    await _produce_in_transactions(
        s.kafka, s.topic_events, events[:half], f"{unique}-tx", aborted=aborted[:20]
    )
    resources = Resources(s)
    url = f"http://127.0.0.1:{s.web_port}"
    try:
        # Every partition's log ends with a marker.
        ends = await end_offsets(s.kafka, s.topic_events)
        assert sum(ends.values()) > half
        worker = Worker(s, tmp_path / "worker.log").start()
        try:
            await wait_healthy(url, within=120)  # every partition caught up to its end
            await wait_until(
                lambda: caught_up(s, resources), within=120, what="checkpoints to the end"
            )
        finally:
            worker.stop()
        # Where the checkpoints stop, more transactions, then a worker again.
        dm = await resources.datamanager()
        before = await checkpointed_offsets(dm, s.topic_events, ends)
        await _produce_in_transactions(
            s.kafka, s.topic_events, events[half:], f"{unique}-tx", aborted=aborted[20:]
        )
        worker = Worker(s, tmp_path / "worker.log").start()
        try:
            await wait_healthy(url, within=120)
            await wait_until(
                lambda: caught_up(s, resources), within=120, what="checkpoints to the new end"
            )
        finally:
            worker.stop()
        after = await checkpointed_offsets(dm, s.topic_events, ends)
        assert all(after[p] > before[p] for p in before if before[p] > 0)
        states = await materialized_states(dm, s.topic_events, ends)
        assert set(states) == {ev.run_id for ev in events}
        # A replay reads the same records: the same states, run by run.
        target = f"verify-{unique}"
        await replay(s, target=target, until=await live_offsets(s), progress=False, jobs=1)
        try:
            checked = await verify(s, target=target)
            assert checked.identical, checked.differing
            assert checked.live_runs == checked.rebuilt_runs == len(states)
        finally:
            await remove_target(s, target)
    finally:
        await resources.close()
