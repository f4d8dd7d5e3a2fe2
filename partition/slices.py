"""Long work on the event loop in slices: a checkpoint encodes thousands of runs between two
records, and no record may wait behind it for more than one slice.

``Slices`` hands the loop back (``await asyncio.sleep(0)``) once a slice's time is used up, so
what waits for the loop — the next record to apply, an HTTP request — waits at most
``SLICE_SECONDS`` however large the checkpoint is (a fixed count of runs per slice made the wait
grow with the runs' size).
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Any

__all__ = ["SLICE_SECONDS", "Slices", "drain"]

SLICE_SECONDS = 0.001


class Slices:
    """``await slices.step()`` after each unit of work."""

    __slots__ = ("_budget", "_until")

    def __init__(self, budget: float = SLICE_SECONDS) -> None:
        self._budget = budget
        self._until = perf_counter() + budget

    async def step(self) -> None:
        if perf_counter() >= self._until:
            await self.hand_back()

    def due(self) -> bool:
        """True when this slice's time is used up (then ``hand_back``)."""
        return perf_counter() >= self._until

    async def hand_back(self) -> None:
        """Let the loop run what waits, then start the next slice."""
        await asyncio.sleep(0)
        self._until = perf_counter() + self._budget


async def drain(items: list[Any] | dict[Any, Any], slices: Slices) -> None:
    """Empty ``items`` an entry at a time, handing the loop back between slices. Dropping the
    last reference to a large container frees all it holds in one step: at the end of a
    checkpoint under load (1,800 records, 6,800 history entries, 530 finished runs, 6,300 sends)
    that was one step of 9 ms."""
    pop = items.popitem if isinstance(items, dict) else items.pop
    while items:
        pop()
        await slices.step()
