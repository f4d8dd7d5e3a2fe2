"""Faults 4b and 8: index dumps interrupted.

8. The worker is SIGKILLed while its index dump PUT is in flight (the S3 proxy holds it); a new
   worker starts from the newest dump + tail. Then a torn dump (the first half of a real one, as a
   non-atomic store or a bad disk leaves it) is planted as the newest: start-up skips it.
4b. The dump lock's etcd lease is revoked while a dump is being written (slowed by a storage
   wrapper); a second dumper takes the lock and dumps meanwhile. Every dump left is complete, the
   newest loads, and it holds exactly the runs of the snapshot it was taken from.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ost
from agents import keys
from agents.workload import generate
from datamanager import EtcdKv, LeaseLock
from datamanager.keys import lock_key
from events import parse_run_id
from indexer import Dumper, DumpPolicy, DumpStore, RunIndex, compare
from indexer.keys import dump_key
from tests.conftest import S3Endpoint
from tests.faults.checks import FaultRow, Tally, tally_index, tally_index_entries
from tests.faults.load import Load
from tests.faults.s3proxy import Drop, Forward, Request, S3Proxy, Upstream
from tests.faults.stack import Stack, conclude, fault_settings
from tests.harness import Worker
from tests.oracle import Oracle

pytestmark = [pytest.mark.faults, pytest.mark.etcd, pytest.mark.timeout(300)]

Report = Callable[[FaultRow], None]


@pytest.mark.kafka
@pytest.mark.s3
async def test_dump_interrupted_midway(
    tmp_path: Path,
    unique: str,
    kafka_bootstrap: str,
    etcd_endpoint: str,
    s3_endpoint: S3Endpoint,
    s3_bucket: str,
    fault_report: Report,
) -> None:
    killed = asyncio.Event()
    dumps_done = 0
    victim: list[Worker] = []

    async def hook(req: Request, forward: Forward) -> Upstream:
        nonlocal dumps_done
        if not (req.is_put and "/index/dumps/" in req.path) or killed.is_set():
            return await forward()
        if dumps_done < 1:
            dumps_done += 1
            return await forward()
        victim[0].kill()  # the PUT never reaches the store
        killed.set()
        raise Drop

    async with S3Proxy(s3_endpoint.url, hook=hook) as proxy:
        s = fault_settings(unique, kafka_bootstrap, etcd_endpoint, proxy.storage(s3_bucket))
        stack = await Stack(s, tmp_path).prepare()
        try:
            victim.append(stack.start_worker())
            load = Load(s)
            driving = asyncio.ensure_future(load.drive(generate(seed=81, runs=2500)))
            await asyncio.wait_for(killed.wait(), timeout=180)
            since = time.monotonic()
            stack.start_worker()
            await driving
            await conclude(
                stack,
                load.acked,
                fault_report,
                "8 index dump interrupted (kill)",
                since=since,
                note="worker SIGKILLed with its dump PUT in flight",
            )
            # A torn newest dump: start-up must skip it and still build the right index.
            prefix = keys.index_prefix(stack.resources.settings.etcd_prefix)
            store = DumpStore(await stack.resources.store(), prefix=prefix)
            newest = (await store.numbers())[-1]
            data = await store.storage.read(dump_key(newest, prefix))
            await store.storage.write(dump_key(newest + 1, prefix), data[: len(data) // 2])
            tally = Tally()
            await tally_index(s, stack.resources, Oracle().feed(load.acked), tally)
            fault_report(
                tally.row("8 index dump torn", len(load.acked), None, f"torn dump #{newest + 1}")
            )
            tally.assert_ok()
            assert f"dump #{newest} " in tally.notes[0], tally.notes
        finally:
            await stack.close()


class SlowWrites:
    """An ``ost`` storage whose writes wait ``delay`` seconds first (and say when they start)."""

    def __init__(self, inner: ost.ObjectStorage, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.writing = asyncio.Event()

    async def write(self, key: str, data: Any, size: int = -1, persist: bool = True) -> None:
        self.writing.set()
        await asyncio.sleep(self.delay)
        await self.inner.write(key, data, size, persist)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _index(oracle: Oracle) -> RunIndex:
    ix = RunIndex()
    for rid, st in oracle.states.items():
        ix.apply(parse_run_id(rid), st.run.group, st.run.phase, st.run.result, st.seq)
    return ix


async def test_dump_lock_lease_expires_mid_dump(
    tmp_path: Path, etcd_endpoint: str, etcd_prefix: str, fault_report: Report
) -> None:
    events = generate(seed=82, runs=3000)
    half = len(events) // 2
    older, newer = Oracle().feed(events[:half]), Oracle().feed(events)
    ix_old, ix_new = _index(older), _index(newer)
    posix = ost.open_storage(f"file://{tmp_path}/objects")
    slow = SlowWrites(posix, delay=3.0)
    kv = EtcdKv(etcd_endpoint, prefix=etcd_prefix)
    key = lock_key(keys.index_dump_lock())
    lock1, lock2 = LeaseLock(kv, key, ttl=2), LeaseLock(kv, key, ttl=2)
    policy = DumpPolicy(keep=3)
    first = Dumper(ix_old, DumpStore(slow, prefix=""), lock1, policy)  # type: ignore[arg-type]
    second = Dumper(ix_new, DumpStore(posix, prefix=""), lock2, policy)
    try:
        started = time.monotonic()
        stale = asyncio.ensure_future(first.once(force=True))
        await asyncio.wait_for(slow.writing.wait(), timeout=30)
        await kv.revoke_lease(lock1.lease_id)  # as if the holder had stalled past its TTL
        fresh = await asyncio.wait_for(second.once(force=True), timeout=30)
        late = await asyncio.wait_for(stale, timeout=30)
        seconds = time.monotonic() - started
        store = DumpStore(posix, prefix="")
        loaded = await store.load_latest()
        assert loaded is not None
        assert not loaded.skipped, f"torn dumps: {loaded.skipped}"
        for n in await store.numbers():  # every dump left is complete
            await store.check(dump_key(n, ""))
        tally = Tally()
        # The newest dump must be one whole snapshot: the new holder's, or the stale holder's
        # when both picked the same number and the stale write landed last.
        assert fresh is not None
        assert late is not None
        candidates = ((newer, ix_new), (older, ix_old))
        matches = [o for o, ix in candidates if compare(loaded.index, ix).equal]
        if matches:
            tally_index_entries(loaded.index, matches[0], tally)
        else:
            tally.diverged += 1
            tally.example("the newest dump is neither snapshot: torn or mixed")
        who = "new holder" if matches and matches[0] is newer else "stale holder"
        note = (
            f"lease revoked mid-write; new holder wrote #{fresh.number}, stale holder "
            f"#{late.number}; newest #{loaded.number} is the {who}'s snapshot, whole"
        )
        fault_report(tally.row("4 dump-lock lease expired mid-dump", len(events), seconds, note))
        tally.assert_ok()
    finally:
        await lock1.release()
        await lock2.release()
        await kv.close()
