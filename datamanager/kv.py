"""The small key/value port the datamanager needs from etcd.

Only ``datamanager.etcd`` implements it with aetcd; the rest of the package sees these types.
Keys are ``str`` relative to the adapter's prefix; values are bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Kv", "KvValue"]


@dataclass(frozen=True, slots=True, kw_only=True)
class KvValue:
    """A stored value and its etcd revisions (``mod_revision`` is the fencing token)."""

    value: bytes
    mod_revision: int
    create_revision: int
    lease: int = 0


class Kv(Protocol):
    """Key/value operations with compare-and-swap and leases.

    Every method raises ``EtcdUnavailable`` when the server does not answer and
    ``DataManagerError`` for anything else.
    """

    async def get(self, key: str) -> KvValue | None:
        """The value at ``key`` or None."""
        ...

    async def get_prefix(self, prefix: str) -> list[tuple[str, KvValue]]:
        """Every key under ``prefix`` (relative keys), in key order."""
        ...

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Unconditional put. Returns the new mod revision."""
        ...

    async def delete(self, key: str) -> bool:
        """Delete ``key``. True when it existed."""
        ...

    async def compare_and_swap(
        self, key: str, value: bytes, *, mod_revision: int | None, lease: int = 0
    ) -> int | None:
        """Put ``value`` only if ``key``'s mod revision is ``mod_revision`` (``None``: only if
        ``key`` does not exist). Returns the new mod revision, or None if the compare failed."""
        ...

    async def compare_and_delete(self, key: str, *, mod_revision: int) -> bool:
        """Delete ``key`` only if its mod revision is ``mod_revision``. True when deleted."""
        ...

    async def create_all(self, items: Sequence[tuple[str, bytes]], *, lease: int = 0) -> bool:
        """Put every ``(key, value)`` of ``items`` (distinct keys) in one transaction, only if
        none of the keys exists: True when all were written, False (nothing written) when one
        existed. One write to the store for many create-only puts (group commit)."""
        ...

    async def grant_lease(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds. Returns its id."""
        ...

    async def refresh_lease(self, lease_id: int) -> int:
        """Keep ``lease_id`` alive. Returns the remaining TTL; ≤ 0 means it has expired."""
        ...

    async def revoke_lease(self, lease_id: int) -> None:
        """Revoke a lease (its keys are deleted). Revoking an expired lease is not an error."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...
