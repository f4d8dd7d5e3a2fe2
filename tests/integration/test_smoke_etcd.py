"""The etcd is real: put / get, a compare-and-swap transaction, and a lease that expires."""

from __future__ import annotations

import asyncio

import aetcd
import pytest

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(60)]


def _client(endpoint: str) -> aetcd.Client:
    host, _, port = endpoint.rpartition(":")
    return aetcd.Client(host=host, port=int(port))


async def test_put_get_cas_and_lease_expiry(etcd_endpoint: str, etcd_prefix: str) -> None:
    key = f"{etcd_prefix}pointer".encode()
    async with _client(etcd_endpoint) as etcd:
        await etcd.put(key, b"v1")
        got = await etcd.get(key)
        assert got is not None
        assert got.value == b"v1"
        rev = got.mod_revision

        # CAS on the mod revision: the first swap wins, a second one with the stale revision loses.
        ok, _ = await etcd.transaction(
            compare=[etcd.transactions.mod(key) == rev],
            success=[etcd.transactions.put(key, b"v2")],
            failure=[],
        )
        assert ok
        stale, _ = await etcd.transaction(
            compare=[etcd.transactions.mod(key) == rev],
            success=[etcd.transactions.put(key, b"v3")],
            failure=[],
        )
        assert not stale
        got = await etcd.get(key)
        assert got is not None
        assert got.value == b"v2"

        # A key attached to a lease disappears once the lease expires without keep-alives.
        lease = await etcd.lease(ttl=1)
        lkey = f"{etcd_prefix}leased".encode()
        await etcd.put(lkey, b"alive", lease=lease)
        assert await etcd.get(lkey) is not None
        for _ in range(50):
            if await etcd.get(lkey) is None:
                break
            await asyncio.sleep(0.2)
        assert await etcd.get(lkey) is None
