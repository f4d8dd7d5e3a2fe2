"""A lease lock on etcd for singleton jobs (Agola's TryLock on a session).

The lock is a key created only if absent and attached to a lease. The holder keeps the lease
alive in a background task; if the holder dies (or is cut off from etcd) the lease expires and
etcd deletes the key, so another process can take the lock after at most ``ttl`` seconds.
``held`` turns False as soon as the holder knows it may have lost the lock. Correctness of the
data never rests on this lock alone (checkpoints are fenced by the pointer's compare-and-swap).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time

from datamanager.errors import DataManagerError, EtcdUnavailable, LockNotHeld
from datamanager.kv import Kv

__all__ = ["LeaseLock"]


class LeaseLock:
    """``async with LeaseLock(kv, key, ttl):`` waits for and holds the lock.

    ``try_acquire()`` does not wait; ``acquire(within)`` polls every ``poll`` seconds;
    ``release()`` is idempotent. ``held`` says whether this holder still owns the lock.
    """

    def __init__(self, kv: Kv, key: str, ttl: int = 10, *, poll: float = 0.25) -> None:
        if ttl < 2:
            raise ValueError("ttl must be at least 2 seconds")
        self.kv = kv
        self.key = key
        self.ttl = ttl
        self.poll = poll
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}".encode()
        self._lease = 0
        self._revision = 0
        self._held = False
        self._keepalive: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        return self._held

    @property
    def lease_id(self) -> int:
        """The etcd lease of the current hold (0 when not held)."""
        return self._lease

    async def try_acquire(self) -> bool:
        """Take the lock if it is free. True when this holder now owns it."""
        if self._held:
            return True
        lease = await self.kv.grant_lease(self.ttl)
        try:
            revision = await self.kv.compare_and_swap(
                self.key, self.holder, mod_revision=None, lease=lease
            )
        except BaseException:
            with contextlib.suppress(DataManagerError):
                await self.kv.revoke_lease(lease)
            raise
        if revision is None:
            await self.kv.revoke_lease(lease)
            return False
        self._lease, self._revision, self._held = lease, revision, True
        self._keepalive = asyncio.create_task(self._keep_alive(), name=f"lease-lock {self.key}")
        return True

    async def acquire(self, within: float | None = None) -> None:
        """Wait until the lock is ours. Raises ``TimeoutError`` after ``within`` seconds."""
        deadline = None if within is None else time.monotonic() + within
        while not await self.try_acquire():
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"lock {self.key} not acquired within {within}s")
            await asyncio.sleep(self.poll)

    async def release(self) -> None:
        """Give the lock up (delete the key if still ours, revoke the lease). Idempotent."""
        task, self._keepalive = self._keepalive, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._lease:
            lease, self._lease = self._lease, 0
            self._held = False
            with contextlib.suppress(EtcdUnavailable):
                await self.kv.compare_and_delete(self.key, mod_revision=self._revision)
            # Revoking also deletes the key if the delete above could not reach etcd in time.
            with contextlib.suppress(EtcdUnavailable):
                await self.kv.revoke_lease(lease)

    def ensure_held(self) -> None:
        """Raise ``LockNotHeld`` unless this holder still owns the lock."""
        if not self._held:
            raise LockNotHeld(f"lock {self.key} is not held")

    async def _keep_alive(self) -> None:
        # Refresh well within the TTL; give up once a full TTL passed without a refresh, since
        # etcd has then expired the lease (the local clock is the pessimistic bound).
        last_ok = time.monotonic()
        while self._held:
            await asyncio.sleep(self.ttl / 3)
            try:
                remaining = await self.kv.refresh_lease(self._lease)
            except EtcdUnavailable:
                if time.monotonic() - last_ok >= self.ttl:
                    self._held = False
                continue
            if remaining <= 0:
                self._held = False
            else:
                last_ok = time.monotonic()

    async def __aenter__(self) -> LeaseLock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()
