"""An in-memory ``datamanager.Kv`` with etcd's revision semantics (for unit tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from datamanager import KvValue


class MemoryKv:
    """One global revision, bumped by every write; ``mod_revision`` / ``create_revision`` as etcd
    keeps them. Leases are accepted and ignored (nothing here expires). Reads and swaps yield to
    the loop once, as a network round trip would."""

    def __init__(self) -> None:
        self.data: dict[str, KvValue] = {}
        self.revision = 0
        self.writes = 0

    def _put(self, key: str, value: bytes) -> int:
        self.revision += 1
        self.writes += 1
        old = self.data.get(key)
        created = old.create_revision if old is not None else self.revision
        self.data[key] = KvValue(value=value, mod_revision=self.revision, create_revision=created)
        return self.revision

    async def get(self, key: str) -> KvValue | None:
        await asyncio.sleep(0)
        return self.data.get(key)

    async def get_prefix(self, prefix: str) -> list[tuple[str, KvValue]]:
        return sorted((k, v) for k, v in self.data.items() if k.startswith(prefix))

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        return self._put(key, value)

    async def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    async def compare_and_swap(
        self, key: str, value: bytes, *, mod_revision: int | None, lease: int = 0
    ) -> int | None:
        await asyncio.sleep(0)
        cur = self.data.get(key)
        if (cur is None) != (mod_revision is None):
            return None
        if cur is not None and cur.mod_revision != mod_revision:
            return None
        return self._put(key, value)

    async def create_all(self, items: Sequence[tuple[str, bytes]], *, lease: int = 0) -> bool:
        await asyncio.sleep(0)
        if any(k in self.data for k, _ in items):
            return False
        for k, v in items:
            self._put(k, v)
        return True

    async def compare_and_delete(self, key: str, *, mod_revision: int) -> bool:
        cur = self.data.get(key)
        if cur is None or cur.mod_revision != mod_revision:
            return False
        del self.data[key]
        self.revision += 1
        return True

    async def grant_lease(self, ttl: int) -> int:
        return 1

    async def refresh_lease(self, lease_id: int) -> int:
        return 10

    async def revoke_lease(self, lease_id: int) -> None:
        return None

    async def close(self) -> None:
        return None
