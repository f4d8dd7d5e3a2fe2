"""Fault 7: a rebalance in the middle of a checkpoint (a second worker joins, then leaves).

Checkpoints are made slow by the S3 proxy (every PUT delayed), so that a checkpoint is under way
when the second worker joins and again when it leaves: partitions move while their owner is
between its data files and its etcd swap, and the claim/fencing must keep exactly-once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agents.workload import generate
from tests.conftest import S3Endpoint
from tests.faults.checks import FaultRow
from tests.faults.load import Load
from tests.faults.s3proxy import Forward, Request, S3Proxy, Upstream
from tests.faults.stack import Stack, conclude, fault_settings

pytestmark = [
    pytest.mark.faults,
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.etcd,
    pytest.mark.s3,
    pytest.mark.timeout(420),
]


async def test_rebalance_mid_checkpoint(
    tmp_path: Path,
    unique: str,
    kafka_bootstrap: str,
    etcd_endpoint: str,
    s3_endpoint: S3Endpoint,
    s3_bucket: str,
    fault_report: Callable[[FaultRow], None],
) -> None:
    in_checkpoint = asyncio.Event()

    async def hook(req: Request, forward: Forward) -> Upstream:
        if req.is_put and "/data/" in req.path:
            in_checkpoint.set()  # data files are being written: the swap is still to come
            await asyncio.sleep(0.4)
            up = await forward()
            in_checkpoint.clear()
            return up
        return await forward()

    async with S3Proxy(s3_endpoint.url, hook=hook) as proxy:
        s = fault_settings(unique, kafka_bootstrap, etcd_endpoint, proxy.storage(s3_bucket))
        stack = await Stack(s, tmp_path).prepare()
        try:
            stack.start_worker()
            load = Load(s)
            moments: dict[str, float] = {}

            leaving: list[asyncio.Task[None]] = []

            async def leave_mid_checkpoint() -> None:
                # The load goes on meanwhile, so checkpoints keep coming: wait for one under
                # way, then SIGTERM the newcomer (in a thread: its last checkpoint goes through
                # the proxy on this event loop).
                await asyncio.wait_for(in_checkpoint.wait(), timeout=60)
                await asyncio.to_thread(stack.workers[1].stop)
                moments["left"] = time.monotonic()

            async def rebalance(chunk: int) -> None:
                if chunk == 8:
                    await asyncio.wait_for(in_checkpoint.wait(), timeout=60)
                    stack.start_worker()  # joins while the first is mid-checkpoint
                    moments["joined"] = time.monotonic()
                elif chunk == 30:  # the newcomer must own partitions before it can leave them
                    deadline = time.monotonic() + 120
                    while "partition loaded" not in stack.workers[1].log_text():
                        assert time.monotonic() < deadline, "the second worker never joined"
                        await asyncio.sleep(0.3)
                    leaving.append(asyncio.ensure_future(leave_mid_checkpoint()))

            await load.drive(generate(seed=71, runs=3000), after_chunk=rebalance, pause=0.15)
            await asyncio.gather(*leaving)
            assert "left" in moments, "the newcomer never left"
            fenced = stack.logs().count("fenced: another owner claimed")
            note = f"S3 PUTs delayed 0.4 s; joined and left mid-checkpoint; {fenced} fenced"
            await conclude(
                stack,
                load.acked,
                fault_report,
                "7 rebalance mid-checkpoint",
                since=moments["left"],
                note=note,
            )
            assert stack.workers[0].alive()
        finally:
            await stack.close()
