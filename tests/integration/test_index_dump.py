"""Index dumps on real S3 with the real etcd lease lock: two indexers dumping at once are
serialized, every dump is valid, retention holds, and a start-up loads the newest."""

from __future__ import annotations

import asyncio

import pytest

from datamanager import EtcdKv, LeaseLock
from events import Phase, Result
from indexer import Dumper, DumpPolicy, DumpStore, RunIndex, compare
from tests.conftest import S3Endpoint
from tests.contract.dm_support import make_s3

pytestmark = [pytest.mark.s3, pytest.mark.etcd]


def index_of(n: int, offset: int) -> RunIndex:
    ix = RunIndex()
    for rid in range(1, n + 1):
        ix.apply(rid, f"/project/{rid % 7}/branch/main", Phase.FINISHED, Result.SUCCESS, 3)
    ix.mark_offset("runs.phases/0", offset)
    return ix


async def test_two_indexers_dump_one_at_a_time(
    s3_endpoint: S3Endpoint, s3_bucket: str, etcd_endpoint: str, etcd_prefix: str
) -> None:
    store = DumpStore(make_s3(s3_endpoint, s3_bucket), prefix="rs/")
    kv = EtcdKv(etcd_endpoint, etcd_prefix)
    try:
        a, b = index_of(1000, 1000), index_of(1200, 1200)
        policy = DumpPolicy(keep=3)
        dumpers = [
            Dumper(ix, store, LeaseLock(kv, "indexer/dump-lock", ttl=5), policy) for ix in (a, b)
        ]
        results = await asyncio.gather(*(d.once(force=True) for d in dumpers for _ in range(2)))
        numbers = sorted(r.number for r in results if r is not None)
        assert numbers == [1, 2, 3, 4]  # no two dumps took the same number
        assert await store.numbers() == [2, 3, 4]
        loaded = await store.load_latest()
        assert loaded is not None
        assert loaded.number == 4
        expected = a if loaded.header.offsets["runs.phases/0"] == 1000 else b
        assert compare(loaded.index, expected).equal
    finally:
        await kv.close()
