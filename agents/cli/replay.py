"""``runstream replay`` and ``runstream verify``: rebuild state from the log, compare with live.

Replay reads ``runs.events`` from the beginning with a bare aiokafka consumer (no consumer group,
no Faust: the log is read as fast as the broker serves it), feeds every partition's records to a
``PartitionMaterializer`` whose datamanager lives under a fresh prefix (object keys under
``<object prefix>replay/<name>``, the deployment's object prefix of ``agents.keys``; etcd keys
under ``<etcd prefix>replay/<name>/``), and checkpoints each
partition at the end. It emits nothing. Verify compares the rebuilt states with the live
checkpoints by content hash and names every run that differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

import ost
from agents.config import Settings
from agents.kafka import READ_COMMITTED, bare_consumer, read_range
from agents.keys import object_prefix, rundata_base
from agents.readback import (
    checkpointed_offsets,
    end_offsets,
    materialized_states,
    state_digest,
)
from agents.resources import storage_url
from agents.runtime import tune_gc
from datamanager import DataManager, EtcdKv
from partition.materializer import PartitionMaterializer

__all__ = [
    "ReplayReport",
    "VerifyReport",
    "live_offsets",
    "remove_target",
    "replay",
    "target_exists",
    "verify",
]


@dataclass(slots=True, kw_only=True)
class ReplayReport:
    target: str
    records: int = 0
    events: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    offsets: dict[int, int] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


@dataclass(slots=True, kw_only=True)
class VerifyReport:
    live_runs: int
    rebuilt_runs: int
    live_digest: str
    rebuilt_digest: str
    differing: list[str]

    @property
    def identical(self) -> bool:
        return not self.differing and self.live_digest == self.rebuilt_digest


def replay_base(settings: Settings, target: str) -> str:
    """Object key prefix of replay ``target``: under the deployment's object prefix."""
    return f"{object_prefix(settings.etcd_prefix)}replay/{target}"


def _datamanager(settings: Settings, *, target: str | None) -> tuple[DataManager, EtcdKv]:
    store = ost.open_storage(
        storage_url(settings.storage),
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
    )
    prefix = settings.etcd_prefix + (f"replay/{target}/" if target else "")
    kv = EtcdKv(settings.etcd, prefix=prefix)
    base = replay_base(settings, target) if target else rundata_base(settings.etcd_prefix)
    return DataManager(store, kv, base=base, max_file_size=settings.max_file_size), kv


async def target_exists(settings: Settings, target: str) -> bool:
    """True when replay ``target`` holds anything: an etcd key under its prefix or an object
    under ``<object prefix>replay/<target>/``."""
    dm, kv = _datamanager(settings, target=target)
    try:
        if await kv.get_prefix(""):
            return True
        async for _ in dm.store.list(replay_base(settings, target) + "/"):
            return True
        return False
    finally:
        await kv.close()


async def remove_target(settings: Settings, target: str) -> int:
    """Delete replay ``target``: its objects and its etcd keys. Returns how many were removed;
    idempotent (a missing target removes nothing)."""
    dm, kv = _datamanager(settings, target=target)
    removed = 0
    try:
        keys = [info.key async for info in dm.store.list(replay_base(settings, target) + "/")]
        for key in keys:
            with contextlib.suppress(ost.NotExist):
                await dm.store.delete(key)
            removed += 1
        for key, _ in await kv.get_prefix(""):
            removed += await kv.delete(key)
    finally:
        await kv.close()
    return removed


async def replay(
    settings: Settings,
    *,
    target: str | None = None,
    until: dict[int, int] | None = None,
    progress: bool = True,
    jobs: int | None = None,
) -> ReplayReport:
    """Rebuild the materialized state of every partition from offset 0 into ``target``, up to
    ``until`` (partition → offset; default: the log's end offsets when the replay starts).

    Partitions are independent, so ``jobs`` processes (default: one per core, at most one per
    partition) replay disjoint sets of partitions in parallel; each writes its own partitions'
    checkpoints. Raises the first job's error.
    """
    target = target or time.strftime("%Y%m%dT%H%M%S")
    ends = (
        until
        if until is not None
        else await end_offsets(settings.kafka, settings.topic_events, committed=True)
    )
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(ends)))
    started = time.perf_counter()
    bar = tqdm(total=sum(ends.values()), unit="rec", desc="replay", disable=not progress)
    try:
        if jobs == 1:
            report = await _replay_partitions(
                settings, target, ends, len(ends), on_batch=bar.update
            )
        else:
            report = await _replay_in_processes(settings, target, ends, jobs, bar)
    finally:
        bar.close()
    report.seconds = time.perf_counter() - started
    return report


async def _replay_in_processes(
    settings: Settings,
    target: str,
    ends: dict[int, int],
    jobs: int,
    bar: tqdm,
) -> ReplayReport:
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with a running event loop
    results = ctx.Queue()
    counters = [ctx.Value("q", 0) for _ in range(jobs)]
    shares = [
        {p: e for i, (p, e) in enumerate(sorted(ends.items())) if i % jobs == j}
        for j in range(jobs)
    ]
    procs = [
        ctx.Process(
            target=_job,
            args=(settings, target, share, len(ends), counters[j], results),
            daemon=True,
        )
        for j, share in enumerate(shares)
    ]
    for proc in procs:
        proc.start()
    reports: list[ReplayReport | BaseException] = []
    while len(reports) < jobs:
        while not results.empty():
            reports.append(results.get())
        bar.n = sum(c.value for c in counters)
        bar.refresh()
        if len(reports) < jobs and not any(p.is_alive() for p in procs) and results.empty():
            raise RuntimeError("a replay job died without a report")
        await asyncio.sleep(0.1)
    for proc in procs:
        proc.join()
    merged = ReplayReport(target=target)
    for r in reports:
        if isinstance(r, BaseException):
            raise r
        merged.records += r.records
        merged.events += r.events
        merged.dead_letters += r.dead_letters
        merged.offsets.update(r.offsets)
    return merged


def _job(
    settings: Settings,
    target: str,
    ends: dict[int, int],
    partitions: int,
    counter: Any,
    results: Any,
) -> None:
    """One replay process: its share of the partitions, reported through ``results``."""
    tune_gc()

    def advance(n: int) -> None:
        with counter.get_lock():
            counter.value += n

    try:
        results.put(
            asyncio.run(_replay_partitions(settings, target, ends, partitions, on_batch=advance))
        )
    except BaseException as exc:  # the parent re-raises it
        results.put(RuntimeError(f"replay of partitions {sorted(ends)} failed: {exc!r}"))


async def _replay_partitions(
    settings: Settings,
    target: str,
    ends: dict[int, int],
    partitions: int,
    *,
    on_batch: Callable[[int], object],
    fetch: int = 20_000,
) -> ReplayReport:
    """Replay the partitions in ``ends`` (partition → offset to stop at) in this process."""
    dm, kv = _datamanager(settings, target=target)
    report = ReplayReport(target=target)
    try:
        async with bare_consumer(
            settings.kafka,
            auto_offset_reset="earliest",
            isolation_level=READ_COMMITTED,  # as the worker reads (agents.eventreader)
            max_partition_fetch_bytes=8 << 20,
            fetch_max_bytes=64 << 20,
        ) as consumer:
            pms = {}
            for p in ends:
                pms[p] = await PartitionMaterializer.open(
                    dm,
                    topic=settings.topic_events,
                    partition=p,
                    phases_topic=settings.topic_phases,
                    max_event_bytes=settings.max_event_bytes,
                    partitions=partitions,
                    derive=False,  # state only: the phase changes and ready tasks are not sent
                    encode_final=True,  # every run held to the end: as bytes once it ended
                )
            ranges = {p: (pm.next_offset, ends[p]) for p, pm in pms.items()}
            async for p, msgs in read_range(
                consumer, settings.topic_events, ranges, max_records=fetch
            ):
                pm = pms[p]
                for m in msgs:
                    # Judged as the owner judges it (partition.owner.PartitionOwner.handle).
                    out = pm.route_check(m.offset, m.value, m.key)
                    if out is None:
                        out = pm.apply_record(m.offset, m.value)
                    report.records += 1
                    report.events += out.applied + out.duplicates + out.refused
                    report.dead_letters += out.dead is not None
                on_batch(len(msgs))
            # The partitions' last checkpoints at once: one's data files are compressed and
            # written (threads, storage) while the next one's states are encoded.
            await asyncio.gather(*(pm.commit(pm.prepare(), phases_offset=0) for pm in pms.values()))
            for p, pm in pms.items():
                report.offsets[p] = pm.next_offset
    finally:
        await kv.close()
    return report


async def live_offsets(settings: Settings) -> dict[int, int]:
    """The ``runs.events`` offsets the live checkpoints cover, per partition."""
    dm, kv = _datamanager(settings, target=None)
    try:
        ends = await end_offsets(settings.kafka, settings.topic_events, committed=True)
        return await checkpointed_offsets(dm, settings.topic_events, ends)
    finally:
        await kv.close()


async def verify(
    settings: Settings, *, target: str, partitions: Iterable[int] | None = None
) -> VerifyReport:
    """Compare the live checkpoints with the replay ``target`` run by run (replay up to
    :func:`live_offsets` first, so both cover the same records)."""
    live_dm, live_kv = _datamanager(settings, target=None)
    re_dm, re_kv = _datamanager(settings, target=target)
    try:
        parts = list(partitions) if partitions is not None else list(range(settings.partitions))
        live = await materialized_states(live_dm, settings.topic_events, parts)
        rebuilt = await materialized_states(re_dm, settings.topic_events, parts)
    finally:
        await live_kv.close()
        await re_kv.close()
    differing = sorted(
        rid for rid in live.keys() | rebuilt.keys() if live.get(rid) != rebuilt.get(rid)
    )
    return VerifyReport(
        live_runs=len(live),
        rebuilt_runs=len(rebuilt),
        live_digest=state_digest(live),
        rebuilt_digest=state_digest(rebuilt),
        differing=differing,
    )
