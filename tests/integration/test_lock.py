"""The etcd lease lock: one holder at a time, released on release or when the holder dies."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator

import pytest

from datamanager import EtcdKv, LeaseLock, LockNotHeld
from datamanager.keys import lock_key

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(120)]


@pytest.fixture
async def kv(etcd_endpoint: str, etcd_prefix: str) -> AsyncIterator[EtcdKv]:
    client = EtcdKv(etcd_endpoint, etcd_prefix)
    yield client
    await client.close()


async def test_one_holder_at_a_time(kv: EtcdKv) -> None:
    a = LeaseLock(kv, lock_key("checkpoint"), ttl=5)
    b = LeaseLock(kv, lock_key("checkpoint"), ttl=5)
    assert await a.try_acquire()
    assert a.held
    assert not await b.try_acquire()
    assert not b.held
    with pytest.raises(LockNotHeld):
        b.ensure_held()
    await a.release()
    assert not a.held
    assert await b.try_acquire()
    await b.release()
    await b.release()  # idempotent


async def test_async_with_waits_for_the_holder(kv: EtcdKv) -> None:
    a = LeaseLock(kv, lock_key("job"), ttl=5, poll=0.05)
    order: list[str] = []
    await a.acquire()

    async def second() -> None:
        async with LeaseLock(kv, lock_key("job"), ttl=5, poll=0.05) as b:
            assert b.held
            order.append("b")

    task = asyncio.create_task(second())
    await asyncio.sleep(0.3)
    order.append("a-release")
    await a.release()
    await asyncio.wait_for(task, 30)
    assert order == ["a-release", "b"]


async def test_acquire_gives_up_after_within(kv: EtcdKv) -> None:
    a = LeaseLock(kv, lock_key("busy"), ttl=5)
    assert await a.try_acquire()
    with pytest.raises(TimeoutError):
        await LeaseLock(kv, lock_key("busy"), ttl=5, poll=0.05).acquire(within=0.3)
    await a.release()


async def test_the_lock_outlives_its_ttl_while_the_holder_lives(kv: EtcdKv) -> None:
    a = LeaseLock(kv, lock_key("long"), ttl=2)
    assert await a.try_acquire()
    await asyncio.sleep(3.5)  # longer than the TTL: the keepalive must have refreshed it
    assert a.held
    assert not await LeaseLock(kv, lock_key("long"), ttl=2).try_acquire()
    await a.release()


async def test_held_turns_false_when_the_lease_is_gone(kv: EtcdKv) -> None:
    a = LeaseLock(kv, lock_key("lost"), ttl=3)
    assert await a.try_acquire()
    await kv.revoke_lease(a.lease_id)  # as if etcd expired it during a long partition
    for _ in range(100):
        if not a.held:
            break
        await asyncio.sleep(0.1)
    assert not a.held
    assert await LeaseLock(kv, lock_key("lost"), ttl=3).try_acquire()


HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from datamanager import EtcdKv, LeaseLock

    async def main():
        kv = EtcdKv(sys.argv[1], sys.argv[2])
        lock = LeaseLock(kv, sys.argv[3], ttl=2)
        assert await lock.try_acquire()
        print("held", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_released_when_the_holder_dies(
    kv: EtcdKv, etcd_endpoint: str, etcd_prefix: str
) -> None:
    key = lock_key("singleton")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, etcd_endpoint, etcd_prefix, key,
        stdout=asyncio.subprocess.PIPE, cwd=os.getcwd(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"held"
        waiter = LeaseLock(kv, key, ttl=2, poll=0.1)
        assert not await waiter.try_acquire()
        proc.send_signal(signal.SIGKILL)  # no release: only the lease expiry frees the lock
        await asyncio.wait_for(proc.wait(), 10)
        await waiter.acquire(within=30)
        assert waiter.held
        await waiter.release()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
