"""Dense counters on etcd: run numbers per root group (Agola's ``runcounter``).

A counter is one etcd key holding the last number handed out, as decimal text. A number is taken
by compare-and-swap ``last → last + k`` at the key's mod revision, so numbers are dense and
increasing in the order they are taken across every process. Unlike ``IdAllocator`` there are no
blocks: a block left half-used by a stopping process would leave a gap.

Cost: one etcd transaction per number in the usual case (this process knows the key's value and
revision from its own last swap, so no read first). Concurrent takers of the same counter in one
process share one swap (the numbers of a batch are consecutive); takers in other processes make a
swap fail, which costs a read and another swap.

Failures after the number was taken: :meth:`Counters.give_back` returns the number when nobody
took a later one (the swap back succeeds only at the revision this process wrote); otherwise
:meth:`Counters.void` records the number as used by a creation that failed (``void/<n>`` under the
counter's key, naming the run id and why), so every number names a run or a void record.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import orjson

from datamanager.errors import DataManagerError
from datamanager.keys import counter_key, counter_void_key
from datamanager.kv import Kv

__all__ = ["Counters"]


@dataclass(slots=True)
class _Counter:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiters: list[asyncio.Future[int]] = field(default_factory=list)
    last: int | None = None  # last number as of ``revision`` (None: not read yet)
    revision: int | None = None  # the key's mod revision; None with last 0: no key yet


class Counters:
    """``await counters.next(name)`` → the next number of counter ``name`` (1, 2, 3, ...).

    Safe for many tasks of one event loop and many processes. Raises ``EtcdUnavailable``
    (retriable) when etcd does not answer; a number is then not taken.
    """

    def __init__(self, kv: Kv, *, attempts: int = 1000) -> None:
        self.kv = kv
        self.attempts = attempts
        self._counters: dict[str, _Counter] = {}
        self.swaps = 0  # etcd transactions that took numbers (for benchmarks)

    async def next(self, name: str) -> int:
        c = self._counters.get(name)
        if c is None:
            c = self._counters[name] = _Counter()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        c.waiters.append(fut)
        async with c.lock:
            if not fut.done():  # else an earlier holder served this taker in its batch
                batch, c.waiters = c.waiters, []
                try:
                    first = await self._take(name, c, len(batch))
                except BaseException as exc:
                    for f in batch:
                        if f is not fut and not f.done():
                            f.set_exception(exc)
                    raise
                for i, f in enumerate(batch):
                    f.set_result(first + i)
        return await fut

    async def _take(self, name: str, c: _Counter, k: int) -> int:
        key = counter_key(name)
        for _ in range(self.attempts):
            if c.last is None:
                await self._read(name, c)
            assert c.last is not None
            revision = await self.kv.compare_and_swap(
                key, str(c.last + k).encode(), mod_revision=c.revision
            )
            if revision is not None:
                first = c.last + 1
                c.last, c.revision = c.last + k, revision
                self.swaps += 1
                return first
            c.last = None  # another process took numbers: read again
        raise DataManagerError(f"counter {name!r}: too much contention")

    async def _read(self, name: str, c: _Counter) -> None:
        got = await self.kv.get(counter_key(name))
        if got is None:
            c.last, c.revision = 0, None
            return
        try:
            c.last, c.revision = int(got.value), got.mod_revision
        except ValueError as exc:
            raise DataManagerError(f"counter {name!r} holds {got.value!r}, not a number") from exc

    async def give_back(self, name: str, n: int) -> bool:
        """Return number ``n`` (taken by this process's last swap of ``name``) if nobody took a
        later one. True when returned: the next :meth:`next` hands ``n`` out again."""
        c = self._counters.get(name)
        if c is None:
            return False
        async with c.lock:
            if c.last != n or c.revision is None:
                return False
            revision = await self.kv.compare_and_swap(
                counter_key(name), str(n - 1).encode(), mod_revision=c.revision
            )
            if revision is None:
                c.last = None
                return False
            c.last, c.revision = n - 1, revision
            return True

    async def void(self, name: str, n: int, *, run_id: str, reason: str) -> None:
        """Record that number ``n`` of ``name`` went to a creation of ``run_id`` that failed (or
        whose outcome is unknown): the number stays used, and says so."""
        doc = orjson.dumps({"run_id": run_id, "reason": reason})
        await self.kv.put(counter_void_key(name, n), doc)

    async def voided(self, name: str) -> dict[int, dict[str, str]]:
        """Every void record of ``name``: number → ``{"run_id", "reason"}``."""
        prefix = counter_void_key(name, 0).rsplit("/", 1)[0] + "/"
        out: dict[int, dict[str, str]] = {}
        for key, value in await self.kv.get_prefix(prefix):
            out[int(key.rsplit("/", 1)[1])] = orjson.loads(value.value)
        return out
