"""Counting the event loop's turns while a coroutine runs: whether long work hands the loop back
(other tasks run between its parts) or holds it to the end."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def turns_during(work: Awaitable[T]) -> tuple[T, int]:
    """``work``'s result and how many turns another task got while it ran (0: it never let go)."""
    turns = 0

    async def count() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count())
    try:
        result = await work
    finally:
        counter.cancel()
    return result, turns
