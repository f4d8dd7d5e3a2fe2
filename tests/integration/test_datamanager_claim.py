"""A new owner's claim fences the previous owner, not the other way round."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamanager import DataManager, EtcdKv, Fenced
from ost.posix import PosixStorage

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(60)]


async def test_claim_fences_the_previous_owner(
    etcd_endpoint: str, etcd_prefix: str, tmp_path: Path
) -> None:
    kv = EtcdKv(etcd_endpoint, prefix=etcd_prefix)
    dm = DataManager(PosixStorage(str(tmp_path)), kv, base="claims")
    try:
        old = await dm.open_partition("p-0", claim=True)  # claims a pointer that did not exist
        await old.checkpoint({"run": {"1": b"a"}}, {}, {"log/0": 1})
        new = await dm.open_partition("p-0", claim=True)
        assert new.manifest.offsets == {"log/0": 1}
        # The zombie writes after the new owner claimed: it is fenced ...
        with pytest.raises(Fenced):
            await old.checkpoint({"run": {"1": b"zombie"}}, {}, {"log/0": 2})
        # ... and the new owner goes on, seeing only its own and the old owner's committed work.
        await new.checkpoint({"run": {"2": b"b"}}, {}, {"log/0": 3})
        snap = await dm.read_partition("p-0")
        assert await snap.load("run") == [("1", b"a"), ("2", b"b")]
        assert snap.manifest.offsets == {"log/0": 3}
    finally:
        await kv.close()


async def test_claim_before_any_checkpoint_reads_as_empty(
    etcd_endpoint: str, etcd_prefix: str, tmp_path: Path
) -> None:
    kv = EtcdKv(etcd_endpoint, prefix=etcd_prefix)
    dm = DataManager(PosixStorage(str(tmp_path)), kv, base="claims")
    try:
        first = await dm.open_partition("p-1", claim=True)
        second = await dm.open_partition("p-1", claim=True)
        assert first.manifest.seq == second.manifest.seq == 0
        with pytest.raises(Fenced):
            await first.checkpoint({"run": {"1": b"a"}}, {}, {})
        await second.checkpoint({"run": {"1": b"b"}}, {}, {})
        assert await (await dm.read_partition("p-1")).get("run", "1") == b"b"
        report = await dm.collect_garbage("p-1")
        assert report.deleted_manifests == ()
    finally:
        await kv.close()
