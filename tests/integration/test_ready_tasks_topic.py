"""Ready tasks have a topic of their own, on the real stack: a worker sends every ``task.ready``
to ``runs.tasks`` (key = run id, on the partition of the same number as the run's ``runs.events``
partition), ``runs.phases`` carries the phase changes only, and the ready-task stream
(``GET /api/v1/runs/tasks/events``) follows ``runs.tasks`` while the phase stream keeps its own
events and cursors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from agents.readback import read_topic
from api.client import AsyncClient
from api.wire import SseParser, WatchEvent
from events import EventType, decode_record
from partition.placement import partition_for
from tests.harness import Worker, make_settings, prepare_topics, wait_healthy, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(240)]

TASKS = [
    {"id": "compile", "name": "compile"},
    {"id": "lint", "name": "lint"},
    {"id": "test", "name": "test", "depends": [{"task_id": "compile"}]},
]


async def sse(
    url: str, path: str, into: list[WatchEvent], opened: asyncio.Event, after: str | None = None
) -> None:
    """Append the events of the stream at ``path`` to ``into`` until cancelled; ``opened`` is set
    once the server answered (it follows its topic from then on)."""
    headers = {"Accept": "text/event-stream"}
    if after is not None:
        headers["Last-Event-ID"] = after
    timeout = httpx.Timeout(10.0, read=None)
    async with (
        httpx.AsyncClient(base_url=url, timeout=timeout) as http,
        http.stream("GET", path, headers=headers) as response,
    ):
        assert response.status_code == 200, await response.aread()
        opened.set()
        parser = SseParser()
        async for line in response.aiter_lines():
            item = parser.feed(line)
            if item is not None:
                into.append(item)


@contextlib.asynccontextmanager
async def following(url: str, path: str, after: str | None = None) -> AsyncIterator[list[WatchEvent]]:  # fmt: skip
    got: list[WatchEvent] = []
    opened = asyncio.Event()
    task = asyncio.ensure_future(sse(url, path, got, opened, after))
    try:
        # The stream is open (from now on) before anything happens.
        await asyncio.wait_for(asyncio.shield(opened.wait()), 30)
        yield got
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def records(rows: dict[int, list[Any]]) -> list[tuple[int, bytes | None, Any]]:
    """(partition, key, event) of every event of ``read_topic``'s rows."""
    return [(p, key, ev) for p, recs in rows.items() for _, key, value, _ in recs for ev in decode_record(value)]  # fmt: skip


async def test_ready_tasks_land_on_runs_tasks_and_runs_phases_carries_phase_changes_only(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(
        unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects", partitions=3
    )
    await prepare_topics(s)
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka)
    await admin.start()
    try:
        [described] = await admin.describe_topics([s.topic_tasks])
        assert len(described["partitions"]) == 3  # the same count as runs.events
    finally:
        await admin.close()
    url = f"http://127.0.0.1:{s.web_port}"
    worker = Worker(s, tmp_path / "w.log").start()
    try:
        await wait_healthy(url)
        async with (
            AsyncClient(url) as client,
            following(url, "/api/v1/runs/tasks/events") as ready,
            following(url, "/api/v1/runs/events") as phases,
        ):
            runs = []
            for n in range(4):  # spread over the partitions
                created = await client.create_run(group=f"/project/{unique}/branch/b{n}", name="t", tasks=TASKS)  # fmt: skip
                run_id = created.run.id
                runs.append(run_id)
                await client.start(run_id)
                for tid in ("compile", "lint", "test"):
                    await client.report(run_id, tid, "running")
                    await client.report(run_id, tid, "success")

            async def streamed() -> bool:
                return len(ready) == 3 * len(runs) and len(phases) == 3 * len(runs)

            await wait_until(streamed, within=60, what="every ready task and phase change streamed")
            tasks_rows = await read_topic(s.kafka, s.topic_tasks)
            phases_rows = await read_topic(s.kafka, s.topic_phases)

        # runs.tasks: the ready tasks, key = run id, on the run's partition number, in seq order.
        on_tasks = records(tasks_rows)
        assert {ev.type for _, _, ev in on_tasks} == {EventType.TASK_READY}
        for p, key, ev in on_tasks:
            assert key == ev.run_id.encode()
            assert p == partition_for(ev.run_id, s.partitions)
        for run_id in runs:
            mine = [ev.data for _, _, ev in on_tasks if ev.run_id == run_id]
            assert [(d.seq, d.task_id) for d in mine] == [  # type: ignore[union-attr]
                (1, "compile"),
                (2, "lint"),
                (3, "test"),
            ]
        # runs.phases: the phase changes only (queued, running, finished per run).
        on_phases = records(phases_rows)
        assert {ev.type for _, _, ev in on_phases} == {EventType.PHASE_CHANGED}
        for p, key, ev in on_phases:
            assert key == ev.run_id.encode()
            assert p == partition_for(ev.run_id, s.partitions)
        assert len(on_phases) == 3 * len(runs)

        # The HTTP streams: each its own topic's events, nothing mixed.
        assert {item.event["type"] for item in ready} == {"task.ready"}
        assert {item.event["type"] for item in phases} == {"run.phase_changed"}
        assert sorted(item.event["id"] for item in ready) == sorted(ev.id for _, _, ev in on_tasks)
        # The ready-task stream resumes from its own cursor: what follows it, exactly once (in
        # order per partition; the partitions interleave as they come).
        async with following(url, "/api/v1/runs/tasks/events", after=ready[4].cursor) as rest:

            async def resumed() -> bool:
                return len(rest) >= len(ready) - 5

            await wait_until(resumed, within=30, what="the ready-task stream to resume")
            await asyncio.sleep(0.5)
            assert sorted(i.event["id"] for i in rest) == sorted(i.event["id"] for i in ready[5:])
    finally:
        worker.stop()
