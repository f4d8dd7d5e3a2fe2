"""The etcd id allocator: unique across processes, increasing within each one."""

from __future__ import annotations

import asyncio
import multiprocessing
import os

import pytest

from datamanager import EtcdKv, IdAllocator
from datamanager.keys import sequence_key
from events import format_run_id

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(180)]

PROCESSES = 4
PER_PROCESS = 3000
BLOCK = 50  # small blocks: many compare-and-swaps contend


def _allocate(endpoint: str, prefix: str, count: int, conn: object) -> None:
    async def main() -> list[int]:
        kv = EtcdKv(endpoint, prefix)
        try:
            alloc = IdAllocator(kv, sequence_key("runs"), block=BLOCK)
            # Several tasks share one allocator, as request handlers in one worker would.
            results: list[int] = []

            async def task(n: int) -> None:
                for _ in range(n):
                    results.append(await alloc.next())

            await asyncio.gather(*(task(count // 4) for _ in range(4)))
            return results
        finally:
            await kv.close()

    ids = asyncio.run(main())
    conn.send((os.getpid(), ids))  # type: ignore[attr-defined]
    conn.close()  # type: ignore[attr-defined]


def test_ids_unique_and_increasing_across_processes(etcd_endpoint: str, etcd_prefix: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    pipes = []
    procs = []
    for _ in range(PROCESSES):
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_allocate, args=(etcd_endpoint, etcd_prefix, PER_PROCESS, child))
        proc.start()
        child.close()
        pipes.append(parent)
        procs.append(proc)
    per_process = [pipe.recv()[1] for pipe in pipes]
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    everything = [i for ids in per_process for i in ids]
    assert len(everything) == PROCESSES * PER_PROCESS
    assert len(set(everything)) == len(everything), "an id was handed out twice"
    for ids in per_process:
        assert ids == sorted(ids), "ids of one process must increase"
        assert len(ids) == PER_PROCESS
    assert min(everything) >= 1
    # Blocks are dense: nothing is skipped except the tails of blocks still leased.
    assert max(everything) <= PROCESSES * PER_PROCESS + PROCESSES * BLOCK
    # Fixed-width text keeps numeric order.
    texts = [format_run_id(i) for i in everything]
    assert sorted(texts) == [format_run_id(i) for i in sorted(everything)]


async def test_a_new_allocator_continues_after_the_last_block(
    etcd_endpoint: str, etcd_prefix: str
) -> None:
    kv = EtcdKv(etcd_endpoint, etcd_prefix)
    try:
        first = IdAllocator(kv, sequence_key("s"), block=10)
        got = [await first.next() for _ in range(3)]
        assert got == [1, 2, 3]
        second = IdAllocator(kv, sequence_key("s"), block=10)
        assert await second.next() == 11  # the rest of the first block is never reused
        assert [await first.next() for _ in range(7)] == [4, 5, 6, 7, 8, 9, 10]
        assert await first.next() == 21  # the first allocator leases its next block
        assert first.blocks_leased == 2
    finally:
        await kv.close()


async def test_start_value(etcd_endpoint: str, etcd_prefix: str) -> None:
    kv = EtcdKv(etcd_endpoint, etcd_prefix)
    try:
        alloc = IdAllocator(kv, sequence_key("x"), block=5, start=1000)
        assert [await alloc.next() for _ in range(6)] == [1000, 1001, 1002, 1003, 1004, 1005]
    finally:
        await kv.close()
