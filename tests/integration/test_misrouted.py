"""A producer with the wrong partitioner (kafkajs's LegacyPartitioner, librdkafka's default CRC32)
sends a run's task events, keyed by the run id, to a partition the key does not hash to, and
another producer sends a record without a key: both reach the dead-letter topic (reasons
``wrong_partition``, ``no_key``) with their original bytes, instead of being refused as events
of an unknown run in silence. ``runstream dlq redrive`` sends them where murmur2 of the run id
puts them, the run goes on and finishes, nothing new is refused, and a replay of the log
(``runstream verify``) judges them alike and finds the same state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from agents import dlq
from agents.cli.replay import live_offsets, remove_target, replay, verify
from agents.readback import read_topic
from agents.resources import Resources
from api.client import AsyncClient
from events.catalogue import TaskStatusChanged, make_event
from events.codec import encode, encode_commit
from events.model import TaskStatus
from partition.placement import partition_for
from tests.harness import (
    Worker,
    caught_up,
    make_settings,
    prepare_topics,
    wait_healthy,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(300)]

PARTITIONS = 4
TASKS: list[dict[str, Any]] = [
    {"id": "build", "name": "build"},
    {"id": "test", "name": "test", "depends": [{"task_id": "build"}]},
]


def status(run_id: str, task: str, st: TaskStatus, n: int) -> bytes:
    data = TaskStatusChanged(task_id=task, status=st)
    return encode(make_event(data, id=f"{task}.{st}", run_id=run_id, at=1_780_000_000_000 + n))


def metric(text: str, name: str, reason: str) -> float:
    """The value of ``name{reason="..."}`` in a /metrics text (0 when absent)."""
    prefix = f'{name}{{reason="{reason}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


async def test_wrong_partition_and_keyless_records_are_dead_letters_and_redrive_fixes_them(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(
        unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects", partitions=PARTITIONS
    )
    await prepare_topics(s)
    resources = Resources(s)
    worker = Worker(s, tmp_path / "w.log").start()  # the scheduler is off: the test starts it
    url = f"http://127.0.0.1:{s.web_port}"
    try:
        await wait_healthy(url)
        async with AsyncClient(url) as client:
            run_id = (
                await client.create_run(
                    group=f"/project/{unique}/branch/main", name="ci", tasks=TASKS
                )
            ).run.id
            await client.start(run_id)
            home = partition_for(run_id, PARTITIONS)
            wrong, keyless_at = (home + 1) % PARTITIONS, (home + 2) % PARTITIONS

            async def task_statuses() -> dict[str, str]:
                run = (await client.get_run(run_id)).run
                return {t.id: t.status for t in run.tasks}

            # The wrong partitioner: key = run id, but a partition murmur2 does not give it.
            build = [
                status(run_id, "build", TaskStatus.RUNNING, 1),
                status(run_id, "build", TaskStatus.SUCCESS, 2),
            ]
            # A producer without a key: one commit of the test task's two statuses.
            test = encode_commit(
                [
                    make_event(
                        TaskStatusChanged(task_id="test", status=st),
                        id=f"test.{st}",
                        run_id=run_id,
                        at=1_780_000_000_010 + i,
                    )
                    for i, st in enumerate((TaskStatus.RUNNING, TaskStatus.SUCCESS))
                ]
            )
            producer = AIOKafkaProducer(bootstrap_servers=s.kafka, acks="all")
            await producer.start()
            try:
                for value in build:
                    await producer.send_and_wait(
                        s.topic_events,
                        value,
                        key=run_id.encode(),
                        partition=wrong,
                        headers=[("x-producer", b"legacy")],
                    )
                await producer.send_and_wait(
                    s.topic_events,
                    test,
                    key=None,
                    partition=keyless_at,
                    headers=[("x-producer", b"keyless")],
                )
            finally:
                await producer.stop()

            async def three_dead() -> bool:
                return len([r async for r in dlq.read(s)]) == 3

            await wait_until(three_dead, within=60, what="three dead letters")
            dead = sorted([r async for r in dlq.read(s)], key=lambda r: r.source_offset or 0)
            by_reason: dict[str, list[dlq.DeadLetterRecord]] = {}
            for r in dead:
                by_reason.setdefault(r.reason, []).append(r)
            assert sorted(by_reason) == ["no_key", "wrong_partition"]
            refused = by_reason["wrong_partition"]
            assert [r.value for r in refused] == build  # the original bytes, in order
            for r in refused:
                assert r.key == run_id.encode()
                assert r.source_partition == wrong
                assert r.header("runstream-error-message") == (
                    f"key {run_id} belongs to partition {home}, not {wrong}"
                )
                assert r.original_headers() == [("x-producer", b"legacy")]
            (no_key,) = by_reason["no_key"]
            assert (no_key.value, no_key.key, no_key.source_partition) == (test, None, keyless_at)
            assert no_key.header("runstream-error-message") == (
                f"no key: run {run_id} belongs to partition {home}, not {keyless_at}"
            )
            assert no_key.original_headers() == [("x-producer", b"keyless")]
            # Refused before they were applied: the run did not move, nothing was rejected.
            assert await task_statuses() == {"build": "notstarted", "test": "notstarted"}
            async with httpx.AsyncClient() as h:
                text = (await h.get(f"{url}/metrics")).text
            assert metric(text, "runstream_dead_letters_total", "wrong_partition") == 2
            assert metric(text, "runstream_dead_letters_total", "no_key") == 1
            assert metric(text, "runstream_events_rejected_total", "unknown_run") == 0

            # Redrive, as `runstream dlq redrive --reason ...` does: the build statuses first
            # (the test task is ready only once build succeeded), then the keyless commit.
            plans: list[dlq.Redrive] = []
            first = await dlq.redrive(
                s,
                dlq.selection_from(
                    reasons=["wrong_partition"], source_partitions=None, since=None, until=None
                ),
                progress=False,
                on_plan=plans.append,
            )
            assert (first.redriven, first.skipped) == (2, 0)

            async def build_done() -> bool:
                return (await task_statuses())["build"] == "success"

            await wait_until(build_done, within=60, what="the redriven build statuses")
            second = await dlq.redrive(
                s,
                dlq.selection_from(
                    reasons=["no_key"], source_partitions=None, since=None, until=None
                ),
                progress=False,
                on_plan=plans.append,
            )
            assert (second.redriven, second.skipped) == (1, 0)
            assert [(p.key, p.partition) for p in plans] == [(run_id.encode(), home)] * 3

            async def finished() -> bool:
                return bool((await client.get_run(run_id)).run.phase == "finished")

            await wait_until(finished, within=60, what="the run to finish")
            run = (await client.get_run(run_id)).run
            assert run.result == "success"
            history = (await client.run_history(run_id)).events
            assert all(e.outcome != "refused" for e in history), history
            async with httpx.AsyncClient() as h:
                text = (await h.get(f"{url}/metrics")).text
            assert metric(text, "runstream_events_rejected_total", "unknown_run") == 0
        assert len([r async for r in dlq.read(s)]) == 3  # nothing new was refused

        # The redriven copies: on the run's partition, keyed by its id, their own headers only.
        records = await read_topic(s.kafka, s.topic_events)
        copies = [
            (p, key, value, headers)
            for p, rows in records.items()
            for _, key, value, headers in rows
            if any(k == "x-producer" for k, _ in headers) and p == home
        ]
        assert sorted(v for _, _, v, _ in copies) == sorted([*build, test])
        assert {k for _, k, _, _ in copies} == {run_id.encode()}

        # A replay judges the records as the worker did: the same state, run by run.
        await wait_until(lambda: caught_up(s, resources), within=120, what="the checkpoints")
        target = f"verify-{unique}"
        report = await replay(s, target=target, until=await live_offsets(s), progress=False, jobs=1)
        assert report.dead_letters == 3
        try:
            checked = await verify(s, target=target)
            assert checked.identical, checked.differing
            assert checked.live_runs == checked.rebuilt_runs == 1
        finally:
            await remove_target(s, target)
    finally:
        worker.stop()
        await resources.close()
