"""Run numbers: dense and increasing across processes, given back or voided after a failure."""

from __future__ import annotations

import asyncio
import random

from api.ports import Refused
from datamanager import Counters
from datamanager.keys import counter_key
from tests.fakes_kv import MemoryKv

ROOT = "/project/p"


def test_numbers_are_dense_across_processes_and_tasks() -> None:
    async def go() -> None:
        kv = MemoryKv()
        procs = [Counters(kv), Counters(kv), Counters(kv)]
        rng = random.Random(7)

        async def take(c: Counters) -> int:
            await asyncio.sleep(rng.random() / 1000)
            return await c.next(ROOT)

        got = await asyncio.gather(*(take(procs[i % 3]) for i in range(300)))
        assert sorted(got) == list(range(1, 301))
        assert (await kv.get(counter_key(ROOT))).value == b"300"  # type: ignore[union-attr]
        # Another root group has its own numbers.
        assert await procs[0].next("/user/u") == 1

    asyncio.run(go())


def test_numbers_follow_the_order_they_are_taken_in() -> None:
    async def go() -> None:
        kv = MemoryKv()
        a, b = Counters(kv), Counters(kv)
        assert [await c.next(ROOT) for c in (a, b, a, a, b)] == [1, 2, 3, 4, 5]

    asyncio.run(go())


def test_concurrent_takers_in_one_process_share_one_swap() -> None:
    async def go() -> None:
        kv = MemoryKv()
        c = Counters(kv)
        first = asyncio.ensure_future(c.next(ROOT))
        await asyncio.sleep(0)
        rest = await asyncio.gather(*(c.next(ROOT) for _ in range(49)))
        assert sorted([await first, *rest]) == list(range(1, 51))
        assert c.swaps < 10

    asyncio.run(go())


def test_a_number_is_given_back_unless_a_later_one_was_taken() -> None:
    async def go() -> None:
        kv = MemoryKv()
        a, b = Counters(kv), Counters(kv)
        n = await a.next(ROOT)
        assert await a.give_back(ROOT, n)
        assert await b.next(ROOT) == n  # handed out again: no gap
        m = await a.next(ROOT)
        assert await b.next(ROOT) == m + 1
        assert not await a.give_back(ROOT, m)  # m + 1 is taken: m stays used
        await a.void(ROOT, m, run_id="0000000000000042", reason="run id taken")
        assert await a.voided(ROOT) == {m: {"run_id": "0000000000000042", "reason": "run id taken"}}
        assert await a.next(ROOT) == m + 2

    asyncio.run(go())


# -------------------------------------------------------------------- through the API (fakes)
async def test_the_api_numbers_runs_per_root_group_and_a_retry_on_a_taken_id_keeps_it() -> None:
    from dataclasses import replace

    from aiohttp.test_utils import TestClient, TestServer

    from api import create_api
    from events import (
        RunConfigTask,
        RunCreated,
        StartRequested,
        TaskStatus,
        TaskStatusChanged,
        make_event,
    )
    from tests.fakes_api import Fakes

    fakes = Fakes()
    # Run id 2 is used already (a producer writing to the log): the API's second creation gets
    # refused at the owner, retries with id 3, and must keep the number it had taken.
    taken = RunCreated(name="x", group="/project/other", tasks=(RunConfigTask(id="a", name="a"),))
    assert not isinstance(
        fakes.owners.apply(make_event(taken, id="foreign", run_id="0000000000000002", at=1)),
        Refused,
    )
    counters = Counters(MemoryKv())
    app = create_api(replace(fakes.deps(), counters=counters))
    body = {"name": "ci", "tasks": [{"id": "a", "name": "a"}]}
    async with TestClient(TestServer(app)) as client:
        got = []
        for group in ("/project/a/branch/main", "/project/a/branch/dev", "/user/a", "/project/a"):
            resp = await client.post("/api/v1/runs", json={**body, "group": group})
            assert resp.status == 201, await resp.text()
            run = (await resp.json())["run"]
            got.append((run["id"], run["counter"]))
        assert got == [
            ("0000000000000001", 1),
            ("0000000000000003", 2),  # id 2 was taken: same number, next id
            ("0000000000000004", 1),  # /user/a counts on its own
            ("0000000000000005", 3),
        ]
        # Run 1 finishes; its recreation is a new run with the next number of /project/a.
        for i, data in enumerate(
            (StartRequested(), *(TaskStatusChanged(task_id="a", status=st) for st in (TaskStatus.RUNNING, TaskStatus.SUCCESS)))
        ):  # fmt: skip
            fakes.owners.apply(make_event(data, id=f"e{i}", run_id="0000000000000001", at=2 + i))
        resp = await client.post(
            "/api/v1/runs", json={"run_id": "0000000000000001", "from_start": True}
        )
        assert resp.status == 201, await resp.text()
        assert (await resp.json())["run"]["counter"] == 4
        resp = await client.get("/api/v1/runs/0000000000000003")
        assert (await resp.json())["run"]["counter"] == 2
        assert await counters.voided("/project/a") == {}
