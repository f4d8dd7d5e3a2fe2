"""The HTTP API served by a real worker: create, read back at once, act, list, follow the stream."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agents.producer import EventProducer
from api.client import AsyncClient
from api.errors import BadRequest, NotFound
from events.catalogue import TaskStatusChanged, make_event
from events.model import TaskStatus
from tests.harness import Worker, make_settings, prepare_topics, wait_healthy, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(240)]

TASKS = [
    {"id": "build", "name": "build"},
    {"id": "test", "name": "test", "depends": [{"task_id": "build"}]},
]


async def test_the_api_of_a_real_worker(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects")
    await prepare_topics(s)
    worker = Worker(s, tmp_path / "w.log").start()
    url = f"http://127.0.0.1:{s.web_port}"
    try:
        await wait_healthy(url)
        async with AsyncClient(url) as client:
            seen: list = []

            async def watch() -> None:
                async for item in client.watch(None, reconnect=False):
                    seen.append(item)

            watcher = asyncio.ensure_future(watch())
            await asyncio.sleep(1.0)
            created = await client.create_run(
                group=f"/project/{unique}/branch/main", name="ci", tasks=TASKS
            )
            run_id = created.run.id
            assert created.run.phase == "queued"
            assert (await client.get_run(run_id)).run.phase == "queued"  # read-your-writes

            await client.start(run_id)
            async with EventProducer(s.kafka, s.topic_events) as executor:
                for i, (task, status) in enumerate(
                    [("build", TaskStatus.RUNNING), ("build", TaskStatus.SUCCESS),
                     ("test", TaskStatus.RUNNING), ("test", TaskStatus.SUCCESS)]
                ):  # fmt: skip
                    await executor.append([make_event(TaskStatusChanged(task_id=task, status=status),
                                                      id=f"exec-{i}", run_id=run_id, at=1_780_000_000_000 + i)])  # fmt: skip

            async def finished() -> bool:
                return (await client.get_run(run_id)).run.phase == "finished"

            await wait_until(finished, within=60, what="the run to finish")
            run = (await client.get_run(run_id)).run
            assert run.result == "success"

            async def listed() -> bool:
                page = await client.list_runs(groups=[f"/project/{unique}"])
                return [(r.id, r.phase) for r in page.runs] == [(run_id, "finished")]

            await wait_until(listed, within=30, what="the index to list the finished run")

            async def streamed() -> bool:
                return len([i for i in seen if i.event.run_id == run_id]) >= 3

            await wait_until(streamed, within=30, what="the phase changes on the event stream")
            watcher.cancel()
            mine = [i for i in seen if i.event.run_id == run_id]
            assert [i.event.data.seq for i in mine] == [1, 2, 3]
            assert [i.event.data.phase for i in mine] == ["queued", "running", "finished"]

            # Resume from the first event's cursor: exactly the later ones, no repeat.
            resumed = []
            async for item in client.watch(mine[0].cursor, reconnect=False):
                resumed.append(item)
                if len(resumed) == 2:
                    break
            assert [i.event.data.seq for i in resumed] == [2, 3]

            with pytest.raises(NotFound):
                await client.get_run("9999999999999999")
            with pytest.raises(BadRequest):
                await client.start(run_id)  # finished runs cannot start
            with pytest.raises(BadRequest):
                await anext(aiter(client.watch("v1.garbage", reconnect=False)))
    finally:
        worker.stop()


async def test_an_oversize_creation_is_413_and_leaves_no_trace(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    """The event a request would make is above what the log accepts: refused before the append,
    so nothing reaches the log, the dead letters or any read."""
    from agents.readback import end_offsets
    from api.errors import PayloadTooLarge

    s = make_settings(
        unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects",
        max_event_bytes=64 << 10,
    )  # fmt: skip
    await prepare_topics(s)
    worker = Worker(s, tmp_path / "w.log").start()
    url = f"http://127.0.0.1:{s.web_port}"
    try:
        await wait_healthy(url)
        group = f"/project/{unique}/branch/big"
        # ~80 KB of body becomes a larger event (task levels, defaults): above the 64 KiB limit.
        tasks = [{"id": f"t{i}", "name": f"task {i}", "steps": [{"run": "x" * 60}]} for i in range(800)]  # fmt: skip
        async with AsyncClient(url) as client:
            with pytest.raises(PayloadTooLarge, match="65536"):
                await client.create_run(group=group, name="big", tasks=tasks)
            small = await client.create_run(group=group, name="small", tasks=TASKS)
            ends = await end_offsets(s.kafka, s.topic_events)
            dead = await end_offsets(s.kafka, s.topic_dlq)
            assert sum(ends.values()) == 1  # the small creation only
            assert sum(dead.values()) == 0

            async def listed() -> bool:
                page = await client.list_runs(groups=[group])
                return [r.id for r in page.runs] == [small.run.id]

            await wait_until(listed, within=30, what="the index to list the small run only")
            big_id = f"{int(small.run.id) - 1:016d}"  # the id the big one was given
            with pytest.raises(NotFound):
                await client.get_run(big_id)
    finally:
        worker.stop()
