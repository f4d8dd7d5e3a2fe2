"""Run numbers on the creation agent's paths (``runs.requests``, ``runs.setup-errors``): each
creation takes the next number of its root group before its append, a retried request keeps its
number, and a number that could not be bound is given back or voided (as ``POST /runs`` does).

The agent runs over in-memory etcd and a recording producer; no Kafka.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from agents import keys
from agents.config import Settings
from agents.creation import CreationService
from datamanager import Counters, IdAllocator
from datamanager.keys import sequence_key
from events.catalogue import Event
from tests.fakes_kv import MemoryKv

SETTINGS = Settings()
TASKS = [{"id": "a", "name": "a"}]


class Producer:
    """``EventProducer.append``: records the events; fails the next ``fail`` appends."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.fail = 0

    async def append(self, events: Sequence[Event]) -> None:
        if self.fail:
            self.fail -= 1
            raise TimeoutError("broker did not answer")
        self.events.extend(events)


class Numbers:
    """``agents.counters.RunNumbers`` over one ``Counters``."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    async def next(self, name: str) -> int:
        return await self.counters.next(name)

    async def give_back(self, name: str, n: int) -> bool:
        return await self.counters.give_back(name, n)

    async def void(self, name: str, n: int, *, run_id: str, reason: str) -> None:
        await self.counters.void(name, n, run_id=run_id, reason=reason)


def service(kv: MemoryKv) -> tuple[CreationService, Producer, Counters]:
    async def send_and_wait(*_a: Any, **_k: Any) -> None:
        return None

    app = SimpleNamespace(
        runstream_topics=SimpleNamespace(setup_errors="se", requests="rq"),
        agent=lambda *_a, **_k: lambda fn: fn,
        producer=SimpleNamespace(send_and_wait=send_and_wait),
    )
    resources = SimpleNamespace(kv=lambda: _ready(kv))
    counters = Counters(kv)
    svc = CreationService(app, SETTINGS, resources, numbers=Numbers(counters))  # type: ignore[arg-type]
    producer = Producer()
    svc._producer = producer  # type: ignore[assignment]
    svc._ids = IdAllocator(kv, sequence_key("runs"), block=100)
    return svc, producer, counters


async def _ready(kv: MemoryKv) -> MemoryKv:
    return kv


def request(rid: str, group: str) -> bytes:
    return orjson.dumps({"request_id": rid, "name": "ci", "group": group, "tasks": TASKS})


def report(rid: str, group: str, **more: object) -> bytes:
    return orjson.dumps({"id": rid, "group": group, "errors": [{"message": "bad yaml"}], **more})


def numbers(events: Sequence[Event]) -> list[tuple[str, int]]:
    return [(e.data.group, e.data.counter) for e in events]  # type: ignore[union-attr]


def test_every_creation_path_takes_the_next_number_of_its_root_group() -> None:
    async def go() -> None:
        kv = MemoryKv()
        svc, out, counters = service(kv)
        rq, se = SETTINGS.topic_requests, SETTINGS.topic_setup_errors
        await svc.handle(rq, request("r1", "/project/a/branch/main"), 0, 0)
        await svc.handle(se, report("h1", "/project/a/branch/dev"), 0, 0)
        await svc.handle(rq, request("r2", "/user/u/branch/x"), 0, 1)
        await svc.handle(rq, request("r3", "/project/a"), 0, 2)
        assert numbers(out.events) == [
            ("/project/a/branch/main", 1),
            ("/project/a/branch/dev", 2),
            ("/user/u/branch/x", 1),  # its own root group
            ("/project/a", 3),
        ]
        # Handled again (a redelivery after a crash): the same event (its time aside: that of
        # the handling), which the reducer drops as a duplicate; no number taken.
        await svc.handle(rq, request("r1", "/project/a/branch/main"), 0, 0)
        again, first = out.events[-1], out.events[0]
        assert (again.id, again.run_id, again.data) == (first.id, first.run_id, first.data)
        await svc.handle(rq, request("r4", "/project/a/branch/main"), 0, 3)
        assert numbers(out.events)[-1] == ("/project/a/branch/main", 4)
        assert await counters.voided("/project/a") == {}

    asyncio.run(go())


def test_a_failed_append_is_retried_with_the_same_number() -> None:
    async def go() -> None:
        kv = MemoryKv()
        svc, out, counters = service(kv)
        rq = SETTINGS.topic_requests
        out.fail = 1
        with pytest.raises(TimeoutError):
            await svc.handle(rq, request("r1", "/project/a/branch/main"), 0, 0)
        await svc.handle(rq, request("r1", "/project/a/branch/main"), 0, 0)  # the retry
        await svc.handle(rq, request("r2", "/project/a/branch/main"), 0, 1)
        assert [c for _, c in numbers(out.events)] == [1, 2]
        assert await counters.voided("/project/a") == {}

    asyncio.run(go())


def test_a_number_not_bound_is_given_back_else_voided() -> None:
    async def go() -> None:
        kv = MemoryKv()
        svc, out, counters = service(kv)
        rq = SETTINGS.topic_requests
        real = kv.compare_and_swap

        async def lost(key: str, value: bytes, **kw: Any) -> int | None:
            if key.startswith("agents/request-numbers/"):
                raise TimeoutError("etcd did not answer")
            return await real(key, value, **kw)

        # etcd fails while binding: nobody took a later number, so it is given back.
        kv.compare_and_swap = lost  # type: ignore[method-assign]
        with pytest.raises(TimeoutError):
            await svc.handle(rq, request("r1", "/project/a/branch/main"), 0, 0)
        kv.compare_and_swap = real  # type: ignore[method-assign]
        await svc.handle(rq, request("r1", "/project/a/branch/main"), 0, 0)
        assert numbers(out.events) == [("/project/a/branch/main", 1)]
        # Now another process takes a number meanwhile: the unbound one cannot come back.
        other = Counters(kv)

        async def lost_after_another(key: str, value: bytes, **kw: Any) -> int | None:
            if key.startswith("agents/request-numbers/"):
                await other.next("/project/a")
                raise TimeoutError("etcd did not answer")
            return await real(key, value, **kw)

        kv.compare_and_swap = lost_after_another  # type: ignore[method-assign]
        with pytest.raises(TimeoutError):
            await svc.handle(rq, request("r2", "/project/a/branch/main"), 0, 1)
        kv.compare_and_swap = real  # type: ignore[method-assign]
        await svc.handle(rq, request("r2", "/project/a/branch/main"), 0, 1)
        run_id = out.events[-1].run_id
        assert await counters.voided("/project/a") == {
            2: {"run_id": run_id, "reason": "outcome unknown"}
        }
        # 2 void, 3 the other process's, 4 this request's: every number names a run or a void.
        assert numbers(out.events)[-1] == ("/project/a/branch/main", 4)

    asyncio.run(go())


def test_a_request_numbered_by_another_handler_keeps_that_number() -> None:
    async def go() -> None:
        kv = MemoryKv()
        svc, out, counters = service(kv)
        rq = SETTINGS.topic_requests
        # Another handler of r1 bound number 7 between this one's read and its swap.
        real_get = kv.get

        async def get(key: str) -> Any:
            got = await real_get(key)
            if key.startswith("agents/request-numbers/") and got is None:
                await kv.compare_and_swap(key, b"7", mod_revision=None)
            return got

        kv.get = get  # type: ignore[method-assign]
        await svc.handle(rq, request("r1", "/project/a/branch/main"), 0, 0)
        assert numbers(out.events) == [("/project/a/branch/main", 7)]
        # This handler's own number (1) went back: the next creation gets it.
        kv.get = real_get  # type: ignore[method-assign]
        await svc.handle(rq, request("r2", "/project/a/branch/main"), 0, 1)
        assert numbers(out.events)[-1] == ("/project/a/branch/main", 1)
        assert await counters.voided("/project/a") == {}

    asyncio.run(go())


def test_a_report_that_carries_its_counter_keeps_it() -> None:
    async def go() -> None:
        kv = MemoryKv()
        svc, out, _ = service(kv)
        se = SETTINGS.topic_setup_errors
        await svc.handle(se, report("h1", "/project/a/branch/main", counter=41), 0, 0)
        await svc.handle(se, report("h2", "/project/a/branch/main"), 0, 1)
        assert [c for _, c in numbers(out.events)] == [41, 1]
        assert await kv.get(keys.request_number_key(keys.setup_report_key("h1"))) is None

    asyncio.run(go())
