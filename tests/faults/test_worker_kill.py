"""Fault 2: the worker SIGKILLed at each step of a checkpoint, under load.

(a) after writing the data files, before the manifest: the S3 proxy kills it on the manifest PUT;
(b) after the manifest, before the etcd swap: killed once the manifest PUT was answered;
(c) after the swap, before Kafka offsets are committed: killed as soon as the etcd pointer moves
    (Faust commits offsets every few seconds, and acks only after the swap).
A fresh worker then takes over and must lose nothing and repeat nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agents.workload import generate
from datamanager import EtcdKv
from datamanager.keys import partition_pointer_key
from partition.materializer import offsets_key, partition_name
from tests.conftest import S3Endpoint
from tests.faults.checks import FaultRow
from tests.faults.load import Load
from tests.faults.s3proxy import Drop, Forward, Request, S3Proxy, Upstream
from tests.faults.stack import Stack, conclude, fault_settings
from tests.harness import Worker, committed_offsets

pytestmark = [
    pytest.mark.faults,
    pytest.mark.kafka,
    pytest.mark.etcd,
    pytest.mark.s3,
    pytest.mark.timeout(300),
]

RUNS = 2000
ARM_AFTER_CHUNK = 3


async def _kill_on_manifest(
    tmp_path: Path,
    unique: str,
    kafka: str,
    etcd: str,
    s3: S3Endpoint,
    bucket: str,
    report: Callable[[FaultRow], None],
    *,
    after_put: bool,
    fault: str,
    seed: int,
) -> None:
    killed = asyncio.Event()
    armed = False
    victim: list[Worker] = []

    async def hook(req: Request, forward: Forward) -> Upstream:
        if not (armed and req.is_manifest_put and not killed.is_set()):
            return await forward()
        if after_put:
            await forward()  # the manifest is stored; the swap never happens
        victim[0].kill()
        killed.set()
        raise Drop

    async with S3Proxy(s3.url, hook=hook) as proxy:
        s = fault_settings(unique, kafka, etcd, proxy.storage(bucket))
        stack = await Stack(s, tmp_path).prepare()
        try:
            victim.append(stack.start_worker())
            load = Load(s)

            async def arm(chunk: int) -> None:
                nonlocal armed
                armed = armed or chunk >= ARM_AFTER_CHUNK

            driving = asyncio.ensure_future(
                load.drive(generate(seed=seed, runs=RUNS), after_chunk=arm)
            )
            await asyncio.wait_for(killed.wait(), timeout=180)
            since = time.monotonic()
            assert not victim[0].alive()
            stack.start_worker()
            await driving
            await conclude(stack, load.acked, report, fault, since=since, note="S3 proxy kill")
        finally:
            await stack.close()


async def test_kill_after_data_files_before_manifest(
    tmp_path: Path,
    unique: str,
    kafka_bootstrap: str,
    etcd_endpoint: str,
    s3_endpoint: S3Endpoint,
    s3_bucket: str,
    fault_report: Callable[[FaultRow], None],
) -> None:
    await _kill_on_manifest(
        tmp_path,
        unique,
        kafka_bootstrap,
        etcd_endpoint,
        s3_endpoint,
        s3_bucket,
        fault_report,
        after_put=False,
        fault="2a worker kill: data files, no manifest",
        seed=21,
    )


async def test_kill_after_manifest_before_swap(
    tmp_path: Path,
    unique: str,
    kafka_bootstrap: str,
    etcd_endpoint: str,
    s3_endpoint: S3Endpoint,
    s3_bucket: str,
    fault_report: Callable[[FaultRow], None],
) -> None:
    await _kill_on_manifest(
        tmp_path,
        unique,
        kafka_bootstrap,
        etcd_endpoint,
        s3_endpoint,
        s3_bucket,
        fault_report,
        after_put=True,
        fault="2b worker kill: manifest, no etcd swap",
        seed=22,
    )


async def _pointer_revisions(kv: EtcdKv, topic: str, partitions: int) -> dict[int, int]:
    out = {}
    for p in range(partitions):
        got = await kv.get(partition_pointer_key(partition_name(topic, p)))
        out[p] = got.mod_revision if got else 0
    return out


async def _committed_behind(s_kafka: str, group: str, topic: str, manifest: dict[int, int]) -> int:
    """How many partitions have a Kafka committed offset behind their checkpoint."""
    committed = await committed_offsets(s_kafka, group, topic)
    return sum(1 for p, off in manifest.items() if committed.get(p, -1) < off)


async def test_kill_after_swap_before_offset_commit(
    tmp_path: Path,
    unique: str,
    kafka_bootstrap: str,
    etcd_endpoint: str,
    fault_report: Callable[[FaultRow], None],
) -> None:
    s = fault_settings(unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects")
    stack = await Stack(s, tmp_path).prepare()
    kv = EtcdKv(s.etcd, prefix=s.etcd_prefix)
    try:
        victim = stack.start_worker()
        load = Load(s)
        armed = asyncio.Event()

        async def arm(chunk: int) -> None:
            if chunk >= ARM_AFTER_CHUNK:
                armed.set()

        driving = asyncio.ensure_future(load.drive(generate(seed=23, runs=RUNS), after_chunk=arm))
        await asyncio.wait_for(armed.wait(), timeout=120)
        before = await _pointer_revisions(kv, s.topic_events, s.partitions)
        # Polling etcd (a watch would do too): the kill must land within milliseconds of the swap.
        while (now := await _pointer_revisions(kv, s.topic_events, s.partitions)) == before:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        victim.kill()
        since = time.monotonic()
        moved = [p for p in now if now[p] != before[p]]
        dm = await stack.resources.datamanager()
        covered = {}
        for p in moved:
            manifest, _, _ = await dm.current(partition_name(s.topic_events, p))
            covered[p] = manifest.offsets.get(offsets_key(s.topic_events, p), 0)
        behind = await _committed_behind(s.kafka, s.app_id, s.topic_events, covered)
        stack.start_worker()
        await driving
        note = (
            f"etcd pointer poll; Kafka offsets behind the swap in {behind}/{len(moved)} partitions"
        )
        await conclude(
            stack,
            load.acked,
            fault_report,
            "2c worker kill: swap, no offset commit",
            since=since,
            note=note,
        )
        assert behind > 0, "the kill came after the offset commit: not the fault under test"
    finally:
        await kv.close()
        await stack.close()
