"""Run numbers in the worker: ``datamanager.Counters`` over the worker's etcd (``api.ports.RunCounters``),
created on first use inside the running loop."""

from __future__ import annotations

from agents.resources import Resources
from datamanager import Counters

__all__ = ["RunNumbers"]


class RunNumbers:
    """One ``Counters`` per worker process: its cached revisions make a number one etcd swap."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self._counters: Counters | None = None

    async def _get(self) -> Counters:
        if self._counters is None:
            self._counters = Counters(await self.resources.kv())
        return self._counters

    async def next(self, name: str) -> int:
        return await (await self._get()).next(name)

    async def give_back(self, name: str, n: int) -> bool:
        return await (await self._get()).give_back(name, n)

    async def void(self, name: str, n: int, *, run_id: str, reason: str) -> None:
        await (await self._get()).void(name, n, run_id=run_id, reason=reason)
