"""Faults 1 and 4a: the Kafka broker SIGKILLed under load, and etcd SIGKILLed and restarted.

Both kill the local stack's process (``deploy/local``, by pid) and restart it with
``deploy/local up <name>``; they are skipped when the endpoint is not that local process. They
disturb every other user of the shared services, so they are ``slow`` (``make faults`` only).
The load driver retries every append that fails; a worker that exits is replaced (counted).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agents.workload import generate
from tests.faults.checks import FaultRow
from tests.faults.load import Load
from tests.faults.stack import (
    Stack,
    conclude,
    fault_settings,
    kill_local,
    require_local,
    restart_local,
)

pytestmark = [
    pytest.mark.faults,
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.etcd,
    pytest.mark.timeout(600),
]

Report = Callable[[FaultRow], None]


async def _kill_and_restart(
    name: str,
    endpoint: str,
    tmp_path: Path,
    unique: str,
    kafka: str,
    etcd: str,
    report: Report,
    *,
    fault: str,
    seed: int,
) -> None:
    require_local(name, endpoint)
    s = fault_settings(unique, kafka, etcd, f"file://{tmp_path}/objects")
    stack = await Stack(s, tmp_path).prepare()
    restarted: list[asyncio.Task[None]] = []
    marks: dict[str, float] = {}
    try:
        worker = stack.start_worker()
        load = Load(s)
        # Under load means a worker that owns its partitions and has checkpointed: warm it up.
        await load.drive(generate(seed=seed + 1000, runs=300, first_run_id=100_000))
        await stack.settle()
        assert "partition loaded" in worker.log_text()

        async def fault_at(chunk: int) -> None:
            if chunk != 10:
                return
            pid = require_local(name, endpoint)
            kill_local(pid)
            marks["killed"] = time.monotonic()

            async def later() -> None:
                await asyncio.sleep(2.0)
                await restart_local(name)
                marks["restarted"] = time.monotonic()

            restarted.append(asyncio.ensure_future(later()))

        await load.drive(generate(seed=seed, runs=3000), after_chunk=fault_at, pause=0.15)
        await asyncio.gather(*restarted)
        replaced = 0
        while not all(w.alive() for w in stack.workers[-1:]):
            replaced += 1  # the worker gave up while the service was away: a supervisor restarts it
            stack.start_worker()
        down = marks["restarted"] - marks["killed"]
        note = (
            f"{name} down {down:.1f} s; {load.retries} appends retried; "
            f"{'worker survived' if not replaced else f'worker restarted {replaced}x'}"
        )
        await conclude(stack, load.acked, report, fault, since=marks["killed"], note=note)
    finally:
        for t in restarted:
            await asyncio.gather(t, return_exceptions=True)
        await stack.close()


async def test_kafka_broker_sigkill_under_load(
    tmp_path: Path, unique: str, kafka_bootstrap: str, etcd_endpoint: str, fault_report: Report
) -> None:
    await _kill_and_restart(
        "kafka",
        kafka_bootstrap,
        tmp_path,
        unique,
        kafka_bootstrap,
        etcd_endpoint,
        fault_report,
        fault="1 Kafka broker SIGKILL + restart",
        seed=11,
    )


async def test_etcd_sigkill_and_restart(
    tmp_path: Path, unique: str, kafka_bootstrap: str, etcd_endpoint: str, fault_report: Report
) -> None:
    await _kill_and_restart(
        "etcd",
        etcd_endpoint,
        tmp_path,
        unique,
        kafka_bootstrap,
        etcd_endpoint,
        fault_report,
        fault="4 etcd SIGKILL + restart",
        seed=41,
    )
