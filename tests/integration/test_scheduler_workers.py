"""Two real workers: the scheduler's cap per group, under interleaved creations, finishes and a
worker killed mid-way; every queued run starts; run numbers are dense per root group.

The test is the executor: it finishes whatever run it finds running (read at the owner, so
linearizable) by reporting its one task running then successful. The cap is checked from the
runs' own start and end times (set by the owner from the start and the last task event): sorted
by start, no run of a group may start before N earlier ones ended. With N = 1 the runs of a group
also start in the order they were created, although each group's creations alternate between the
workers, whose ids come from two blocks (so a newer run can have the lower id: the scheduler
orders by run number, not by id); each creation waits until both workers' indexes list the run,
so a scheduler never sees a newer queued run without the older ones.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from agents.producer import EventProducer
from api.client import AsyncClient
from api.errors import ApiError
from api.views import RunView
from events.catalogue import TaskStatusChanged, make_event
from events.model import TaskStatus
from tests.harness import Worker, free_port, make_settings, prepare_topics, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(420)]

T = TypeVar("T")
TASKS = [{"id": "a", "name": "a"}]


async def _retrying(call: Callable[[], Awaitable[T]], *, within: float = 90) -> T:
    """``call()``, retried while the cluster rebalances after the kill (503s, refused
    connections to the dead worker's relay)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            return await call()
        except (ApiError, httpx.TransportError) as exc:
            status = getattr(exc, "status", 503)
            if status < 500 or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)


def max_overlap(runs: list[RunView]) -> int:
    """The most runs running at one instant, from their [start, end) times."""
    points = sorted(
        itertools.chain.from_iterable(((r.start_time, 1), (r.end_time, -1)) for r in runs),
        key=lambda p: (p[0], p[1]),  # an end at the same millisecond as a start comes first
    )
    now = best = 0
    for _, d in points:
        now += d
        best = max(best, now)
    return best


@pytest.mark.parametrize("n", [1, 2])
async def test_the_scheduler_caps_each_group_across_two_workers_and_a_kill(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path, n: int
) -> None:
    base = make_settings(
        f"{unique}{n}",
        kafka_bootstrap,
        etcd_endpoint,
        f"file://{tmp_path}/objects",
        max_running_per_group=n,
        session_timeout=6.0,
    )
    await prepare_topics(base)
    workers = [Worker(base, tmp_path / "w1.log").start()]
    workers.append(Worker(replace(base, web_port=free_port()), tmp_path / "w2.log").start())
    urls = [f"http://127.0.0.1:{w.settings.web_port}" for w in workers]
    project = f"/project/{unique}{n}"
    groups = [f"{project}/branch/feature", f"{project}/branch/feature02"]
    created: list[str] = []  # run ids in creation order
    finished: set[str] = set()
    reported: set[str] = set()
    runs: dict[str, RunView] = {}
    try:

        async def healthy() -> bool:
            try:
                async with httpx.AsyncClient() as h:
                    codes = [(await h.get(f"{u}/healthz")).status_code for u in urls]
                return codes == [200, 200]
            except httpx.TransportError:
                return False

        await wait_until(healthy, within=120, what="both workers to be ready")
        clients = [AsyncClient(u) for u in urls]
        alive = [0, 1]
        async with EventProducer(base.kafka, base.topic_events) as executor:

            async def create(i: int) -> None:
                # Each group's creations alternate between the workers (ids from two blocks).
                c = clients[alive[(i // 2) % len(alive)]]
                group = groups[i % 2]
                made = await _retrying(lambda: c.create_run(group=group, name="ci", tasks=TASKS))
                assert made.run.phase == "queued"
                rid = made.run.id
                created.append(rid)

                async def listed() -> bool:
                    pages = [await clients[a].list_runs(groups=[group]) for a in alive]
                    return all(rid in {r.id for r in p.runs} for p in pages)

                await wait_until(listed, within=60, what=f"run {rid} in every index")

            async def execute() -> None:
                """Finish every run found running; check the cap on what is seen."""
                c = clients[alive[0]]
                for rid in created:
                    if rid in finished:
                        continue
                    run = (await _retrying(lambda rid=rid: c.get_run(rid))).run  # type: ignore[misc]
                    runs[rid] = run
                    if run.phase == "finished":
                        finished.add(rid)
                    elif run.phase == "running" and rid not in reported:
                        reported.add(rid)
                        # Real time (the same clock as the scheduler's starts): the end time
                        # is when the run really ended, after this test saw it running.
                        at = max(int(time.time() * 1000), run.start_time + 1)
                        events = [
                            make_event(
                                TaskStatusChanged(task_id="a", status=st),
                                id=f"x-{rid}-{st}",
                                run_id=rid,
                                at=at + k,
                            )
                            for k, st in enumerate((TaskStatus.RUNNING, TaskStatus.SUCCESS))
                        ]
                        await executor.append(events)

            for i in range(8):  # creations interleaved with finishes, through both workers
                await create(i)
                if i >= 5:  # runs pile up first: a newer, lower id waits beside an older one
                    await execute()
            workers[1].kill()  # SIGKILL: its partitions (and groups) move to the first worker
            alive[:] = [0]
            for i in range(8, 12):
                await create(i)
                await execute()

            async def all_finished() -> bool:
                await execute()
                return len(finished) == len(created)

            await wait_until(all_finished, within=240, what="every queued run to start and end")
        for c in clients:
            await c.aclose()
        for g in groups:
            mine = [runs[r] for r in created if runs[r].group == g]
            assert len(mine) == 6
            assert all(r.start_time is not None for r in mine)
            assert max_overlap(mine) <= n, f"{g}: more than {n} runs ran at once"
        # Run numbers: one sequence for the project, dense, in creation order.
        assert [runs[r].counter for r in created] == list(range(1, len(created) + 1))
        if n == 1:  # one at a time: started in creation order (whatever the ids' order)
            for g in groups:
                mine = [r for r in created if runs[r].group == g]
                assert sorted(mine, key=lambda r: runs[r].start_time) == mine
    finally:
        for w in workers:
            w.stop()
