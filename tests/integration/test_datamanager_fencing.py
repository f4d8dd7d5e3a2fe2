"""Interrupted checkpoints and competing writers, on real etcd with posix and S3.

A checkpoint is three ordered steps: data files -> manifest -> compare-and-swap of the etcd
pointer. Each test interrupts it somewhere and checks that the previous manifest stays valid and
complete and that a later checkpoint (by a new owner, as after a crash) succeeds.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import ost
from datamanager import DataManager, EtcdKv, EtcdUnavailable, Fenced
from events import format_run_id
from tests.contract import dm_support
from tests.contract.dm_support import Crash, FailingStorage, FlakyKv

# Fixtures shared with the other datamanager suites (assigned, so pytest collects them here).
any_storage = dm_support.any_storage
kv = dm_support.kv

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(180)]

P = "runs.events-0"
BASE = "rundata"


def rid(i: int) -> str:
    return format_run_id(i)


def batch(lo: int, hi: int, tag: bytes) -> dict[str, bytes]:
    return {rid(i): tag + b"-" + os.urandom(150).hex().encode() for i in range(lo, hi)}


def dm_on(store: ost.ObjectStorage, kv: EtcdKv | FlakyKv) -> DataManager:
    return DataManager(store, kv, base=BASE, max_file_size=32 << 10, block_size=2048)


async def current_state(
    store: ost.ObjectStorage, kv: EtcdKv
) -> tuple[int, dict[str, list[tuple[str, bytes]]]]:
    snap = await dm_on(store, kv).read_partition(P)
    return snap.manifest.seq, await snap.load_all()


async def seed(store: ost.ObjectStorage, kv: EtcdKv) -> dict[str, bytes]:
    """Two checkpoints, so the files list has several files and a previous manifest."""
    writer = await dm_on(store, kv).open_partition(P)
    first = batch(1, 400, b"v0")
    await writer.checkpoint({"run": first, "runconfig": {rid(1): b"c1"}}, {}, {"log/0": 400})
    second = batch(400, 500, b"v0")
    await writer.checkpoint({"run": second}, {}, {"log/0": 500})
    return {**first, **second}


# The write after which the crash happens: before any data file, after some data files, right
# before the manifest (all data files written).
STEPS = {
    "before-data-files": lambda n, key: n == 0,
    "mid-data-files": lambda n, key: n == 2,
    "before-manifest": lambda n, key: "/manifests/" in key,
}


@pytest.mark.parametrize("step", list(STEPS))
async def test_crash_during_storage_steps(
    any_storage: ost.ObjectStorage, kv: EtcdKv, step: str
) -> None:
    model = await seed(any_storage, kv)
    before = await current_state(any_storage, kv)
    failing = FailingStorage(any_storage, STEPS[step])
    writer = await dm_on(failing, kv).open_partition(P)
    # Touch many files: updates across the whole range, deletes, new ids, a new datatype.
    change = {rid(i): b"v1" for i in range(1, 500, 5)} | batch(500, 700, b"v1")
    with pytest.raises(Crash):
        await writer.checkpoint(
            {"run": change, "runtask": {rid(3): b"t"}}, {"run": [rid(2)]}, {"log/0": 700}
        )
    assert await current_state(any_storage, kv) == before  # previous manifest valid and complete
    # A new owner (after the crash) replays the same changes and succeeds.
    owner = await dm_on(any_storage, kv).open_partition(P)
    assert owner.manifest.seq == 2
    m = await owner.checkpoint(
        {"run": change, "runtask": {rid(3): b"t"}}, {"run": [rid(2)]}, {"log/0": 700}
    )
    model.update(change)
    del model[rid(2)]
    seq, state = await current_state(any_storage, kv)
    assert seq == m.seq == 3
    assert state["run"] == sorted(model.items())
    assert state["runtask"] == [(rid(3), b"t")]
    assert dict(m.offsets) == {"log/0": 700}


async def test_crash_before_the_swap_reaches_etcd(
    any_storage: ost.ObjectStorage, kv: EtcdKv
) -> None:
    model = await seed(any_storage, kv)
    before = await current_state(any_storage, kv)
    flaky = FlakyKv(kv)
    writer = await dm_on(any_storage, flaky).open_partition(P)
    flaky.fail_next_cas = False
    change = batch(1, 50, b"v2")
    with pytest.raises(EtcdUnavailable):
        await writer.checkpoint({"run": change}, {}, {"log/0": 900})
    assert await current_state(any_storage, kv) == before
    # The same writer may retry: the swap had not happened, so it is not fenced.
    m = await writer.checkpoint({"run": change}, {}, {"log/0": 900})
    assert m.seq == 3
    model.update(change)
    assert (await current_state(any_storage, kv))[1]["run"] == sorted(model.items())


async def test_swap_applied_but_reply_lost(any_storage: ost.ObjectStorage, kv: EtcdKv) -> None:
    model = await seed(any_storage, kv)
    flaky = FlakyKv(kv)
    writer = await dm_on(any_storage, flaky).open_partition(P)
    flaky.fail_next_cas = True
    change = batch(1, 50, b"v3")
    with pytest.raises(EtcdUnavailable):
        await writer.checkpoint({"run": change}, {}, {"log/0": 901})
    # The swap did happen: the writer finds its own manifest at the pointer and carries on.
    more = batch(700, 720, b"v3")
    m = await writer.checkpoint({"run": more}, {}, {"log/0": 920})
    assert m.seq == 4
    model.update(change)
    model.update(more)
    assert (await current_state(any_storage, kv))[1]["run"] == sorted(model.items())


async def test_stale_owner_is_fenced(any_storage: ost.ObjectStorage, kv: EtcdKv) -> None:
    await seed(any_storage, kv)
    old = await dm_on(any_storage, kv).open_partition(P)
    new = await dm_on(any_storage, kv).open_partition(P)
    await new.checkpoint({"run": {rid(1): b"new owner"}}, {}, {"log/0": 501})
    with pytest.raises(Fenced):
        await old.checkpoint({"run": {rid(1): b"old owner"}}, {}, {"log/0": 501})
    assert old.fenced
    with pytest.raises(Fenced):  # a fenced writer stays fenced
        await old.checkpoint({}, {}, {})
    assert await (await dm_on(any_storage, kv).read_partition(P)).get("run", rid(1)) == b"new owner"


async def test_two_writers_one_wins_readers_never_see_a_mix(
    any_storage: ost.ObjectStorage, kv: EtcdKv
) -> None:
    base_model = await seed(any_storage, kv)
    a = await dm_on(any_storage, kv).open_partition(P)
    b = await dm_on(any_storage, kv).open_partition(P)
    change_a = {rid(i): b"A" for i in range(1, 500, 3)} | batch(500, 650, b"A")
    change_b = {rid(i): b"B" for i in range(2, 500, 4)} | batch(500, 600, b"B")
    expected = {
        "base": sorted(base_model.items()),
        "a": sorted((base_model | change_a).items()),
        "b": sorted((base_model | change_b).items()),
    }
    done = asyncio.Event()
    seen: set[str] = set()

    async def reader() -> None:
        reader_dm = dm_on(any_storage, kv)
        while not done.is_set():
            snap = await reader_dm.read_partition(P)
            state = await snap.load("run")
            matches = [name for name, want in expected.items() if state == want]
            assert matches, "a reader saw a state that is neither the old one nor one writer's"
            seen.add(matches[0])
            await asyncio.sleep(0)

    async def write(w: object, change: dict[str, bytes]) -> str:
        try:
            await w.checkpoint({"run": change}, {}, {"log/0": 700})  # type: ignore[attr-defined]
            return "won"
        except Fenced:
            return "fenced"

    readers = [asyncio.create_task(reader()) for _ in range(2)]
    results = await asyncio.gather(write(a, change_a), write(b, change_b))
    done.set()
    await asyncio.gather(*readers)
    assert sorted(results) == ["fenced", "won"]
    winner = "a" if results[0] == "won" else "b"
    loser = b if winner == "a" else a
    assert (await current_state(any_storage, kv))[1]["run"] == expected[winner]
    assert seen <= {"base", winner}

    # The loser's data files and manifest are garbage, collected once the grace period passed.
    referenced = (await dm_on(any_storage, kv).read_partition(P)).manifest.referenced_keys()
    all_keys = {o.key async for o in any_storage.list(f"{BASE}/{P}/")}
    loser_seq_files = {
        k for k in all_keys if "/data/" in k and k not in referenced and f"/{3:020d}-" in k
    }
    assert loser_seq_files, "the fenced writer's files should still exist before GC"
    collector = dm_on(any_storage, kv)
    report = await collector.collect_garbage(P, now=time.time() + collector.gc_grace + 60)
    assert loser_seq_files <= set(report.deleted_files)
    remaining = {o.key async for o in any_storage.list(f"{BASE}/{P}/")}
    assert not remaining & loser_seq_files
    assert (await current_state(any_storage, kv))[1]["run"] == expected[winner]
    assert loser.fenced
