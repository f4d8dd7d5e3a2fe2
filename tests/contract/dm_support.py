"""Support for the ost/datamanager suites: fixtures (a storage per adapter, an etcd Kv per
test) and fault-injecting wrappers of the ost and Kv ports to interrupt a checkpoint at a step.

Test modules import the fixtures they use from here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import pytest

import ost
from datamanager import EtcdKv, EtcdUnavailable, Kv, KvValue
from tests.conftest import S3Endpoint


class Crash(Exception):
    """The injected failure (stands for the process dying at that point)."""


class FailingStorage:
    """Delegates to ``inner``; the write for which ``should_fail(n, key)`` is true raises ``Crash``
    (``n`` counts writes from 0). Writes before it went through, as in a crash."""

    def __init__(self, inner: ost.ObjectStorage, should_fail: Callable[[int, str], bool]) -> None:
        self.inner = inner
        self.should_fail = should_fail
        self.writes: list[str] = []

    async def stat(self, key: str) -> ost.ObjectInfo:
        return await self.inner.stat(key)

    async def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        return await self.inner.read(key, start, length)

    async def write(
        self, key: str, data: bytes | BinaryIO, size: int = -1, persist: bool = True
    ) -> None:
        if self.should_fail(len(self.writes), key):
            raise Crash(f"injected crash before writing {key}")
        self.writes.append(key)
        await self.inner.write(key, data, size, persist)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    def list(
        self, prefix: str, start_after: str = "", recursive: bool = True
    ) -> AsyncIterator[ost.ObjectInfo]:
        return self.inner.list(prefix, start_after, recursive)


class FlakyKv:
    """Delegates to ``inner``; the next compare-and-swap fails with ``EtcdUnavailable``, before
    (``applied=False``) or after (``applied=True``) reaching etcd."""

    def __init__(self, inner: Kv) -> None:
        self.inner = inner
        self.fail_next_cas: bool | None = None  # None: no failure; else the "applied" flag

    async def compare_and_swap(
        self, key: str, value: bytes, *, mod_revision: int | None, lease: int = 0
    ) -> int | None:
        applied, self.fail_next_cas = self.fail_next_cas, None
        if applied is None:
            return await self.inner.compare_and_swap(
                key, value, mod_revision=mod_revision, lease=lease
            )
        if applied:
            await self.inner.compare_and_swap(key, value, mod_revision=mod_revision, lease=lease)
        raise EtcdUnavailable("injected: connection lost during the swap")

    async def create_all(self, items: Sequence[tuple[str, bytes]], *, lease: int = 0) -> bool:
        return await self.inner.create_all(items, lease=lease)

    async def get(self, key: str) -> KvValue | None:
        return await self.inner.get(key)

    async def get_prefix(self, prefix: str) -> list[tuple[str, KvValue]]:
        return await self.inner.get_prefix(prefix)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        return await self.inner.put(key, value, lease=lease)

    async def delete(self, key: str) -> bool:
        return await self.inner.delete(key)

    async def compare_and_delete(self, key: str, *, mod_revision: int) -> bool:
        return await self.inner.compare_and_delete(key, mod_revision=mod_revision)

    async def grant_lease(self, ttl: int) -> int:
        return await self.inner.grant_lease(ttl)

    async def refresh_lease(self, lease_id: int) -> int:
        return await self.inner.refresh_lease(lease_id)

    async def revoke_lease(self, lease_id: int) -> None:
        await self.inner.revoke_lease(lease_id)

    async def close(self) -> None:
        await self.inner.close()


def make_s3(endpoint: S3Endpoint, bucket: str) -> ost.ObjectStorage:
    from ost.s3 import S3Storage

    return S3Storage(
        bucket,
        endpoint_url=endpoint.url,
        access_key=endpoint.access_key,
        secret_key=endpoint.secret_key,
        region=endpoint.region,
    )


@pytest.fixture(params=["posix", pytest.param("s3", marks=pytest.mark.s3)])
def any_storage(request: pytest.FixtureRequest, tmp_path: Path) -> ost.ObjectStorage:
    """The same test on a posix directory and on a fresh S3 bucket."""
    if request.param == "posix":
        return ost.PosixStorage(tmp_path / "ost")
    return make_s3(request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_bucket"))


@pytest.fixture
async def kv(etcd_endpoint: str, etcd_prefix: str) -> AsyncIterator[EtcdKv]:
    """An etcd Kv confined to this test's unique prefix."""
    client = EtcdKv(etcd_endpoint, etcd_prefix)
    yield client
    await client.close()
