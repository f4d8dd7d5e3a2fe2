"""The pipeline end to end on real Kafka and etcd (object storage on posix or S3)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agents.cli.replay import replay, verify
from agents.producer import EventProducer
from agents.readback import end_offsets, materialized_states, phase_changes, read_topic
from agents.resources import Resources
from agents.workload import generate
from events.catalogue import Event, EventType
from events.codec import decode_record, encode
from partition.materializer import phase_seq
from tests.harness import Worker, caught_up, make_settings, prepare_topics, wait_until
from tests.oracle import Oracle

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(300)]


async def produce(bootstrap: str, topic: str, events: list[Event], chunk: int = 250) -> None:
    async with EventProducer(bootstrap, topic) as producer:
        await asyncio.gather(
            *(producer.append(events[i : i + chunk]) for i in range(0, len(events), chunk))
        )


def check_phase_stream(derived: list[Event], oracle: Oracle) -> None:
    """Per run: sequence numbers 1..n with no gap or repeat, and exactly the oracle's events
    (its phase changes; ``derived`` holds no task.ready)."""
    by_run: dict[str, list[Event]] = {}
    for ev in derived:
        by_run.setdefault(ev.run_id, []).append(ev)
    assert set(by_run) == set(oracle.derived)
    for rid, evs in by_run.items():
        assert [phase_seq(e) for e in evs] == list(range(1, len(evs) + 1)), rid
        want = [encode(e) for e in oracle.derived[rid] if phase_seq(e) >= 0]
        assert [encode(e) for e in evs] == want, rid


def check_derived_stream(
    phases: dict[int, list[Any]], tasks: dict[int, list[Any]], oracle: Oracle
) -> None:
    """The phases topic holds the oracle's phase changes and the tasks topic its ready tasks,
    each per run in log order, keyed by run id: nothing missing, nothing twice, nothing on the
    other topic."""
    for records, ready in ((phases, False), (tasks, True)):
        by_run: dict[str, list[bytes]] = {}
        for p in sorted(records):
            for _, key, value, _ in records[p]:
                for ev in decode_record(value):
                    assert key == ev.run_id.encode()
                    by_run.setdefault(ev.run_id, []).append(encode(ev))
        want = {
            rid: [encode(e) for e in evs if (e.type is EventType.TASK_READY) is ready]
            for rid, evs in oracle.derived.items()
        }
        assert by_run == {rid: evs for rid, evs in want.items() if evs}


async def test_thousand_runs_match_the_oracle(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects")
    await prepare_topics(s)
    events = generate(seed=7, runs=1000)
    await produce(s.kafka, s.topic_events, events)
    oracle = Oracle().feed(events)

    resources = Resources(s)
    worker = Worker(s, tmp_path / "worker.log").start()
    try:
        await wait_until(lambda: caught_up(s, resources), within=180, what="the checkpoints")
    finally:
        worker.stop()
    dm = await resources.datamanager()
    got = await materialized_states(dm, s.topic_events, range(s.partitions))
    assert got.keys() == oracle.states.keys()
    assert got == oracle.encoded()
    phases = await read_topic(s.kafka, s.topic_phases)
    check_phase_stream(phase_changes(phases), oracle)
    check_derived_stream(phases, await read_topic(s.kafka, s.topic_tasks), oracle)
    await resources.close()

    # The log rebuilds the same state: replay into a fresh prefix, then verify against live.
    report = await replay(s, target="r1", progress=False)
    assert report.events == len(events)
    assert sum(report.offsets.values()) == sum(
        (await end_offsets(s.kafka, s.topic_events)).values()
    )
    check = await verify(s, target="r1")
    assert check.identical, check.differing[:10]
    assert check.rebuilt_runs == check.live_runs == 1000
