"""The datamanager on real etcd, on posix and on S3: checkpoints, reads, splitting, GC."""

from __future__ import annotations

import itertools
import os
import random
import time

import pytest

import ost
from datamanager import DataManager, EtcdKv, Manifest, NotExist, datafile
from events import format_run_id
from tests.contract import dm_support

# Fixtures shared with the other datamanager suites (assigned, so pytest collects them here).
any_storage = dm_support.any_storage
kv = dm_support.kv

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(120)]

P = "runs.events-3"


def rid(i: int) -> str:
    return format_run_id(i)


def run(i: int, version: int = 0) -> bytes:
    return b'{"id":"%s","v":%d,"pad":"%s"}' % (
        rid(i).encode(),
        version,
        os.urandom(40).hex().encode(),
    )


@pytest.fixture
def dm(any_storage: ost.ObjectStorage, kv: EtcdKv) -> DataManager:
    return DataManager(any_storage, kv, base="rundata", max_file_size=1 << 20, block_size=4096)


async def assert_state(dm: DataManager, model: dict[str, dict[str, bytes]]) -> Manifest:
    """The current manifest holds exactly ``model`` (datatype -> id -> value)."""
    snap = await dm.read_partition(P)
    assert set(snap.manifest.datatypes()) == {dt for dt, m in model.items() if m}
    for datatype, entries in model.items():
        assert await snap.load(datatype) == sorted(entries.items())
        assert [e async for e in snap.iterate(datatype)] == sorted(entries.items())
        for entry_id in sorted(entries)[:: max(1, len(entries) // 20)]:
            assert await snap.get(datatype, entry_id) == entries[entry_id]
    return snap.manifest


async def test_fresh_partition_is_empty(dm: DataManager) -> None:
    writer = await dm.open_partition(P)
    assert writer.manifest.seq == 0
    assert dict(writer.manifest.offsets) == {}
    assert await writer.load("run") == []
    with pytest.raises(NotExist):
        await writer.get("run", rid(1))


async def test_checkpoint_then_read_back(dm: DataManager) -> None:
    writer = await dm.open_partition(P)
    runs = {rid(i): run(i) for i in range(1, 501)}
    configs = {rid(i): b"cfg%d" % i for i in range(1, 501, 7)}
    m = await writer.checkpoint({"run": runs, "runconfig": configs}, {}, {"runs.events/3": 500})
    assert m.seq == 1
    assert dict(m.offsets) == {"runs.events/3": 500}
    assert await writer.get("run", rid(42)) == runs[rid(42)]
    with pytest.raises(NotExist):
        await writer.get("run", rid(501))
    with pytest.raises(NotExist):
        await writer.get("nosuchtype", rid(1))
    await assert_state(dm, {"run": runs, "runconfig": configs})
    reopened = await dm.open_partition(P)
    assert reopened.manifest == m
    # Every data file names the checkpoint and the offsets it covers.
    ref = m.files["run"][0]
    meta = datafile.read_meta(await dm.store.read(ref.key))
    assert meta == {"partition": P, "seq": 1, "offsets": {"runs.events/3": 500}}


async def test_updates_deletes_and_offsets_accumulate(dm: DataManager) -> None:
    writer = await dm.open_partition(P)
    model = {rid(i): run(i) for i in range(1, 301)}
    await writer.checkpoint({"run": model}, {}, {"a/0": 10, "a/1": 5})
    updates = {rid(i): run(i, 1) for i in range(1, 301, 3)}
    gone = [rid(i) for i in range(2, 301, 3)] + [rid(9999)]  # deleting a missing id is a no-op
    new = {rid(i): run(i) for i in range(301, 350)}
    m = await writer.checkpoint({"run": {**updates, **new}}, {"run": gone}, {"a/0": 20})
    model.update(updates)
    model.update(new)
    for g in gone:
        model.pop(g, None)
    assert dict(m.offsets) == {"a/0": 20, "a/1": 5}
    assert m.seq == 2
    await assert_state(dm, {"run": model})
    with pytest.raises(NotExist):
        await writer.get("run", rid(2))
    # Deleting every entry removes the datatype from the manifest.
    m = await writer.checkpoint({}, {"run": list(model)}, {"a/0": 21})
    assert m.datatypes() == []
    await assert_state(dm, {"run": {}})


async def test_offsets_only_checkpoint_keeps_the_files(dm: DataManager) -> None:
    writer = await dm.open_partition(P)
    m1 = await writer.checkpoint({"run": {rid(1): b"x"}}, {}, {"o": 1})
    m2 = await writer.checkpoint({}, {}, {"o": 2})
    assert m2.files == m1.files
    assert dict(m2.offsets) == {"o": 2}


async def test_split_at_max_size_and_only_touched_files_rewritten(
    any_storage: ost.ObjectStorage,
    kv: EtcdKv,
) -> None:
    max_size = 64 << 10
    dm = DataManager(any_storage, kv, base="rundata", max_file_size=max_size, block_size=4096)
    writer = await dm.open_partition(P)
    model = {rid(i): os.urandom(300) for i in range(1, 3001)}  # ~900 KiB, incompressible
    m1 = await writer.checkpoint({"run": model}, {}, {})
    files = m1.files["run"]
    assert len(files) >= 10
    for ref in files:
        assert ref.size <= max_size
        assert (await any_storage.stat(ref.key)).size == ref.size
    # One change in the middle rewrites one file; every other file is carried over as is.
    middle = files[len(files) // 2]
    target = middle.first_id
    m2 = await writer.checkpoint({"run": {target: b"changed"}}, {}, {})
    model[target] = b"changed"
    before, after = set(files), set(m2.files["run"])
    assert before - after == {middle}
    assert all(r.key.split("/")[-1].startswith(f"{2:020d}-") for r in after - before)
    await assert_state(dm, {"run": model})


async def test_point_reads_at_block_and_file_edges(dm: DataManager) -> None:
    writer = await dm.open_partition(P)
    model = {rid(i): os.urandom(200) for i in range(10, 8000, 2)}
    m = await writer.checkpoint({"run": model}, {}, {})
    edges = {r.first_id for r in m.files["run"]} | {r.last_id for r in m.files["run"]}
    for entry_id in edges:
        assert await writer.get("run", entry_id) == model[entry_id]
    for missing in (rid(1), rid(11), rid(7999), rid(10**6)):
        with pytest.raises(NotExist):
            await writer.get("run", missing)


async def test_gc_keeps_last_manifests_and_respects_grace(
    any_storage: ost.ObjectStorage,
    kv: EtcdKv,
) -> None:
    dm = DataManager(
        any_storage, kv, base="rundata", max_file_size=1 << 20, keep_manifests=2, gc_grace=60.0
    )
    writer = await dm.open_partition(P)
    model: dict[str, bytes] = {}
    for round_ in range(5):
        batch = {rid(i): run(i, round_) for i in range(1, 200)}
        model.update(batch)
        await writer.checkpoint({"run": batch}, {}, {"o": round_})
        if round_ == 0:
            early_reader = await dm.read_partition(P)
            early_model = dict(model)
    manifests = [o.key async for o in any_storage.list("rundata/" + P + "/manifests/")]
    data_files = [o.key async for o in any_storage.list("rundata/" + P + "/data/")]
    assert len(manifests) == 5
    # Within the grace period nothing goes (a reader may be using the old files).
    report = await dm.collect_garbage(P, now=time.time())
    assert report.deleted_files == ()
    assert report.deleted_manifests == ()
    assert await early_reader.load("run") == sorted(early_model.items())
    # Long after: only the last 2 manifests and the files they reference stay.
    report = await dm.collect_garbage(P, now=time.time() + 3600)
    assert len(report.kept_manifests) == 2
    assert len(report.deleted_manifests) == 3
    left = {o.key async for o in any_storage.list("rundata/")}
    assert {m for m in manifests if m in left} == set(report.kept_manifests)
    assert len(left) < len(manifests) + len(data_files)
    await assert_state(dm, {"run": model})
    reopened = await dm.open_partition(P)
    assert reopened.manifest.seq == 5
    # A second pass has nothing left to do.
    again = await dm.collect_garbage(P, now=time.time() + 3600)
    assert again.deleted_files == ()
    assert again.deleted_manifests == ()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_checkpoints_match_a_dict_model(
    any_storage: ost.ObjectStorage, kv: EtcdKv, seed: int
) -> None:
    """Many checkpoints of random puts and deletes (small files, many splits) against a model;
    a fresh owner reopens the partition midway, as after a rebalance."""
    rng = random.Random(seed)
    dm = DataManager(any_storage, kv, base="rundata", max_file_size=8 << 10, block_size=1024)
    writer = await dm.open_partition(P)
    model: dict[str, dict[str, bytes]] = {"run": {}, "runconfig": {}}
    for step in range(12):
        puts: dict[str, dict[str, bytes]] = {}
        deletes: dict[str, list[str]] = {}
        for datatype, entries in model.items():
            new = {
                rid(rng.randrange(1, 600)): rng.randbytes(rng.randrange(0, 120))
                for _ in range(rng.randrange(0, 80))
            }
            live = sorted(set(entries) - set(new))
            gone = rng.sample(live, min(len(live), rng.randrange(0, 30)))
            puts[datatype], deletes[datatype] = new, gone
            entries.update(new)
            for g in gone:
                del entries[g]
        m = await writer.checkpoint(puts, deletes, {"log": step})
        assert m.seq == step + 1
        for refs in m.files.values():
            assert all(a.last_id < b.first_id for a, b in itertools.pairwise(refs))
        if step == 6:
            writer = await dm.open_partition(P)
        await assert_state(dm, model)


async def test_appends_write_new_files_only_and_fold_when_the_tail_is_full(
    any_storage: ost.ObjectStorage, kv: EtcdKv
) -> None:
    dm = DataManager(
        any_storage, kv, base="rundata", max_file_size=1 << 20, block_size=4096, max_tail_files=3
    )
    writer = await dm.open_partition(P, claim=True)
    model: dict[str, bytes] = {}
    for n in range(7):  # 7 checkpoints of 3 chunks each: the 4th folds the 3 tail files
        chunk = {f"{rid(i)}/{n:020d}": run(i, n) for i in (1, 5, 9)}
        model.update(chunk)
        before = {r.key for refs in writer.manifest.files.values() for r in refs}
        manifest = await writer.checkpoint({}, {}, {"t/3": n}, appends={"log": chunk})
        tail = manifest.files.get("log.tail", ())
        assert len(tail) <= 3
        if n % 4 != 3:  # an append: the files listed before are all kept, one file is added
            now = {r.key for refs in manifest.files.values() for r in refs}
            assert before <= now
            assert len(now - before) == 1
        else:  # the tail was full: folded into the sorted files, the tail is empty
            assert tail == ()
            assert sum(r.count for r in manifest.files["log"]) == len(model)
        for i in (1, 5, 9):
            want = sorted((k, v) for k, v in model.items() if k.startswith(rid(i) + "/"))
            assert await writer.get_range("log", rid(i), rid(i) + "0") == want
        assert await writer.get_range("log", rid(2), rid(5)) == []
    # A retried checkpoint appends the same ids with the same values: each is read once.
    again = {f"{rid(5)}/{6:020d}": model[f"{rid(5)}/{6:020d}"]}
    await writer.checkpoint({}, {}, {"t/3": 7}, appends={"log": again})
    reader = await dm.read_partition(P)
    got = await reader.get_range("log", rid(5), rid(5) + "0")
    assert got == sorted((k, v) for k, v in model.items() if k.startswith(rid(5) + "/"))
    with pytest.raises(ValueError, match="both changed and appended"):
        await writer.checkpoint({"log": {"x": b"1"}}, {}, {}, appends={"log": {"y": b"2"}})
