"""Monotonic id allocation on etcd, leased in blocks (docs/design.md, "What a run is":
monotonic, fixed-width ids).

The etcd key holds the next free id as decimal text. A process takes a block of ``block`` ids
with one compare-and-swap (``next_free -> next_free + block``) and hands them out locally, so
ids are unique across processes and increasing within each allocator; across processes they
are only roughly ordered (each process owns a different block). Ids left in a block when a
process stops are skipped, never reused. Format ids with ``events.format_run_id``.
"""

from __future__ import annotations

import asyncio

from datamanager.errors import DataManagerError
from datamanager.kv import Kv

__all__ = ["IdAllocator"]


class IdAllocator:
    """``await allocator.next()`` returns the next id of this process's current block.

    ``start`` is the first id ever handed out when the key does not exist yet. Safe for
    concurrent use by many tasks of one event loop. Raises ``EtcdUnavailable`` (retriable)
    when a new block cannot be leased.
    """

    def __init__(self, kv: Kv, key: str, block: int = 1000, *, start: int = 1) -> None:
        if block < 1 or start < 1:
            raise ValueError("block and start must be positive")
        self.kv = kv
        self.key = key
        self.block = block
        self.start = start
        self._next = 0
        self._end = 0  # exclusive end of the leased block
        self._lock = asyncio.Lock()
        self.blocks_leased = 0

    async def next(self) -> int:
        async with self._lock:
            if self._next >= self._end:
                self._next, self._end = await self._lease_block(self.block)
            value = self._next
            self._next += 1
            return value

    async def _lease_block(self, size: int) -> tuple[int, int]:
        for _ in range(1000):
            got = await self.kv.get(self.key)
            first = self.start if got is None else _parse(got.value)
            revision = None if got is None else got.mod_revision
            swapped = await self.kv.compare_and_swap(
                self.key, str(first + size).encode(), mod_revision=revision
            )
            if swapped is not None:
                self.blocks_leased += 1
                return first, first + size
        raise DataManagerError(f"sequence {self.key}: too much contention leasing a block")


def _parse(value: bytes) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise DataManagerError(f"sequence value {value!r} is not an integer") from exc
