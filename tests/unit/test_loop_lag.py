"""``agents.runtime.watch_loop_lag``: how late the event loop's timers fire, as the worker's
``runstream_event_loop_lag_seconds`` reports it."""

from __future__ import annotations

import asyncio
import time

import pytest

from agents.runtime import watch_loop_lag

pytestmark = pytest.mark.timeout(30)


async def test_a_step_that_holds_the_loop_shows_as_lag() -> None:
    seen: list[float] = []
    sampled = asyncio.Event()

    def observe(lag: float) -> None:
        seen.append(lag)
        sampled.set()

    watching = asyncio.ensure_future(watch_loop_lag(0.01, observe))
    try:
        await sampled.wait()
        sampled.clear()
        before = len(seen)
        # A step that never hands the loop back, begun less than 10 ms after the watcher's
        # timer was set: that timer fires at least 190 ms late, whatever the machine's speed.
        time.sleep(0.2)  # noqa: ASYNC251
        await sampled.wait()
    finally:
        watching.cancel()
    assert all(lag >= 0 for lag in seen)
    assert seen[before] >= 0.19
