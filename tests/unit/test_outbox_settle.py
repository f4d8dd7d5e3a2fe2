"""Outbox.settle: every send waited for, the highest acknowledged offset per topic, and each
send that failed or was cancelled counted as lost (the checkpoint is then not written)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

from partition.outbox import Outbox


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

    sends = [
        _done(loop, _Meta("ph", 3)),
        failed,
        late,
        _done(loop, _Meta("tk", 5)),
        cancelled,
        coro(),
        _done(loop, _Meta("dlq", 99)),  # neither topic: no offset kept
    ]
    settled = await outbox.settle(sends, phases_offset=10, tasks_offset=0)
    assert late.done()
    assert (settled.phases_offset, settled.tasks_offset, settled.lost) == (42, 8, 2)

    settled = await outbox.settle([_done(loop, _Meta("ph", 1))], phases_offset=10)
    assert (settled.phases_offset, settled.lost) == (10, 0)  # never below what was acknowledged
