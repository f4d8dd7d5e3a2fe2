"""``partition.slices``: long work hands the event loop back between slices; ``drain`` frees a
large container an entry at a time instead of all at once in one step."""

from __future__ import annotations

import asyncio
from typing import Any

from partition.slices import Slices, drain


async def _interleaved(items: list[Any] | dict[Any, Any], budget: float) -> list[int]:
    """Drain ``items``; returns the sizes left each time another task got the loop."""
    seen: list[int] = []
    done = False

    async def other() -> None:
        while not done:
            seen.append(len(items))
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)  # the other task runs first
    await drain(items, Slices(budget))
    done = True
    await task
    return seen


async def test_drain_empties_a_list_and_a_dict_handing_the_loop_back() -> None:
    big = list(range(50))
    seen = await _interleaved(big, budget=0.0)  # every entry is a slice of its own
    assert big == []
    assert seen[0] == 50
    assert {49, 25, 1} <= set(seen)  # the loop ran between the pops, all along
    table = {i: str(i) for i in range(30)}
    seen = await _interleaved(table, budget=0.0)
    assert table == {}
    assert {29, 15, 1} <= set(seen)


async def test_drain_within_one_slice_does_not_hand_back() -> None:
    big = list(range(1000))
    seen = await _interleaved(big, budget=60.0)
    assert big == []
    assert seen == [1000]  # only before the drain started
