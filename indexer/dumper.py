"""Periodic dumps of the index: ``once()`` dumps if due, ``run_forever()`` loops around it.

A dump is due after ``every_changes`` applied updates, or ``every_seconds`` after the last dump
if anything changed at all. Only one indexer dumps at a time: every dump runs inside ``lock``,
any async context manager (the datamanager's etcd ``LeaseLock`` in production). The state is
copied on the event loop (consistent with the offsets it names), then encoded in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from indexer.dump import encode, snapshot
from indexer.index import RunIndex
from indexer.store import DumpStore

__all__ = ["DumpLock", "DumpPolicy", "DumpResult", "Dumper"]

log = logging.getLogger(__name__)


class DumpLock(Protocol):
    """Held while one dump is written and old ones pruned (an etcd lease lock, in production)."""

    async def __aenter__(self) -> object: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DumpPolicy:
    """When to dump and how many dumps to keep."""

    every_seconds: float = 300.0
    every_changes: int = 200_000
    keep: int = 3
    zstd_level: int = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class DumpResult:
    """One dump written (and read back valid)."""

    number: int
    key: str
    size: int
    runs: int
    offsets: dict[str, int] = field(default_factory=dict)
    pruned: tuple[str, ...] = ()
    seconds: float


class Dumper:
    """Dumps ``index`` to ``store`` under ``lock`` by ``policy``."""

    def __init__(
        self,
        index: RunIndex,
        store: DumpStore,
        lock: DumpLock,
        policy: DumpPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.index = index
        self.store = store
        self.lock = lock
        self.policy = policy or DumpPolicy()
        self._clock = clock
        self._last_at = clock()
        self._last_changes = index.changes
        self._busy = asyncio.Lock()

    def due(self) -> bool:
        """Whether enough changed, or enough time passed with some change, since the last dump."""
        changed = self.index.changes - self._last_changes
        if changed >= self.policy.every_changes:
            return True
        return changed > 0 and self._clock() - self._last_at >= self.policy.every_seconds

    async def once(self, *, force: bool = False) -> DumpResult | None:
        """Dump now if due (or ``force``); None if not due. Raises what storage raises, and
        ``BadDump`` if the dump read back is not valid (then nothing is pruned)."""
        # One dump at a time per process too: a lease lock is re-entrant for its holder, so two
        # concurrent calls (the loop and a forced dump) would otherwise pick the same number.
        async with self._busy:
            if not (force or self.due()):
                return None
            return await self._dump()

    async def _dump(self) -> DumpResult:
        started = self._clock()
        async with self.lock:
            snap = snapshot(self.index)
            data = await asyncio.to_thread(encode, snap, level=self.policy.zstd_level)
            number, key = await self.store.write(data)
            await self.store.check(key)
            pruned = await self.store.prune(self.policy.keep, newest_valid=number)
        self._last_at, self._last_changes = self._clock(), snap.changes
        result = DumpResult(
            number=number,
            key=key,
            size=len(data),
            runs=snap.runs,
            offsets=snap.offsets,
            pruned=tuple(pruned),
            seconds=self._clock() - started,
        )
        log.info(
            "index dump %s: %d runs, %d bytes, %.3f s",
            key,
            result.runs,
            result.size,
            result.seconds,
        )
        return result

    async def run_forever(self, poll_seconds: float = 1.0, retry_seconds: float = 10.0) -> None:
        """Call :meth:`once` every ``poll_seconds`` until cancelled. A failure is logged and
        retried after ``retry_seconds`` (the index stays correct in memory meanwhile; only the
        replay after a restart grows)."""
        while True:
            try:
                await self.once()
            except Exception:
                log.exception("index dump failed; retrying in %.1f s", retry_seconds)
                await asyncio.sleep(max(0.0, retry_seconds - poll_seconds))
            await asyncio.sleep(poll_seconds)
