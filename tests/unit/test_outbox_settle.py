"""Outbox.settle: every send waited for, the highest acknowledged offset per topic, and each
send that failed or was cancelled counted as lost (the checkpoint is then not written); no send
held once it finished (partition.outbox.Sends)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from dataclasses import dataclass
from typing import Any, cast

from partition.outbox import Outbox, Sends


@dataclass(frozen=True)
class _Meta:
    topic: str
    offset: int


def _done(loop: asyncio.AbstractEventLoop, meta: _Meta) -> asyncio.Future[Any]:
    fut = loop.create_future()
    fut.set_result(meta)
    return fut


async def test_settle_waits_for_every_send_and_counts_the_lost() -> None:
    loop = asyncio.get_running_loop()
    outbox = Outbox(
        cast(Any, None), source_topic="ev", phases_topic="ph", dlq_topic="dlq", partition=0,
        tasks_topic="tk",
    )  # fmt: skip
    failed: asyncio.Future[Any] = loop.create_future()
    failed.set_exception(RuntimeError("not acknowledged"))
    cancelled: asyncio.Future[Any] = loop.create_future()
    cancelled.cancel()
    late: asyncio.Future[Any] = loop.create_future()
    loop.call_later(0.01, late.set_result, _Meta("ph", 41))

    async def coro() -> _Meta:  # a send may be any awaitable
        await asyncio.sleep(0)
        return _Meta("tk", 7)

    sends = Sends("ph", "tk")
    for send in [
        _done(loop, _Meta("ph", 3)),
        failed,
        late,
        _done(loop, _Meta("tk", 5)),
        cancelled,
        coro(),
        _done(loop, _Meta("dlq", 99)),  # neither topic: no offset kept
    ]:
        sends.add(send)
    assert len(sends) == 7
    settled = await outbox.settle(sends, phases_offset=10, tasks_offset=0)
    assert late.done()
    assert (settled.phases_offset, settled.tasks_offset, settled.lost) == (42, 8, 2)

    assert len(sends) == 0
    one = Sends("ph", "tk")
    one.add(_done(loop, _Meta("ph", 1)))
    settled = await outbox.settle(one, phases_offset=10)
    assert (settled.phases_offset, settled.lost) == (10, 0)  # never below what was acknowledged
    settled = await outbox.settle(Sends("ph", "tk"), phases_offset=3, tasks_offset=4)
    assert (settled.phases_offset, settled.tasks_offset, settled.lost) == (3, 4, 0)  # none sent


async def test_a_finished_send_is_not_held() -> None:
    loop = asyncio.get_running_loop()
    sends = Sends("ph", "tk")
    fut: asyncio.Future[Any] = loop.create_future()
    sends.add(fut)
    gone = weakref.ref(fut)
    fut.set_result(_Meta("ph", 5))
    del fut
    await asyncio.sleep(0)  # the done callback runs
    gc.collect()
    assert gone() is None
    assert (len(sends), sends.phases_offset) == (0, 6)


async def test_settle_returns_once_the_last_send_finishes() -> None:
    loop = asyncio.get_running_loop()
    outbox = Outbox(
        cast(Any, None), source_topic="ev", phases_topic="ph", dlq_topic="d", partition=0
    )
    sends = Sends("ph", "ph")
    first: asyncio.Future[Any] = loop.create_future()
    second: asyncio.Future[Any] = loop.create_future()
    sends.add(first)
    sends.add(second)
    settling = asyncio.ensure_future(outbox.settle(sends, phases_offset=0))
    first.set_result(_Meta("ph", 2))
    await asyncio.sleep(0.01)
    assert not settling.done()  # one still running
    second.set_result(_Meta("ph", 3))
    settled = await asyncio.wait_for(settling, 5)
    assert (settled.phases_offset, settled.lost) == (4, 0)
