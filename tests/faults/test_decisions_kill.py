"""Fault 9 (issue 20): the owner SIGKILLed while leases are lapsing and timeouts are due.

Six runs of one task each: three held by executors that never heartbeat (lease 3 s), three
claimed with a 3 s timeout. The worker is SIGKILLed as soon as the first ``task.released`` is in
``runs.events`` (some decisions appended, others due, one maybe appended but not yet applied or
checkpointed). A fresh worker takes the partitions over. Every release must be appended exactly
once: never lost (each run ends), never twice (a new owner that caught up with its
predecessor's decision does not decide it again; the deterministic id would make a second copy
a duplicate anyway, but it must not even be appended).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from agents.producer import EventProducer
from agents.readback import read_topic
from api.client import AsyncClient
from events import EventType, TaskClaimed, decode_record, make_event
from partition.decisions import RETRY_AFTER
from tests.faults.checks import FaultRow
from tests.harness import Worker, free_port, make_settings, prepare_topics, wait_healthy, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(300)]

RUNS = 6
LEASE_MS = TIMEOUT_MS = 3_000


async def _releases(bootstrap: str, topic: str) -> Counter[tuple[str, str, int]]:
    found: Counter[tuple[str, str, int]] = Counter()
    for rows in (await read_topic(bootstrap, topic)).values():
        for _, _, value, _ in rows:
            for e in decode_record(value):
                if e.type is EventType.TASK_RELEASED:
                    found[(e.run_id, e.data.task_id, e.data.attempt)] += 1  # type: ignore[union-attr]
    return found


async def test_killing_the_owner_mid_decisions_appends_each_release_exactly_once(
    kafka_bootstrap: str,
    etcd_endpoint: str,
    unique: str,
    tmp_path: Path,
    fault_report: Callable[[FaultRow], None],
) -> None:
    s = make_settings(
        unique,
        kafka_bootstrap,
        etcd_endpoint,
        f"file://{tmp_path}/objects",
        session_timeout=6.0,
        topic_heartbeats=f"{unique}.heartbeats",
    )
    await prepare_topics(s)
    first = Worker(s, tmp_path / "w1.log").start()
    second: Worker | None = None
    url = f"http://127.0.0.1:{s.web_port}"
    run_ids: list[str] = []
    try:
        await wait_healthy(url)
        async with AsyncClient(url) as client, EventProducer(s.kafka, s.topic_events) as producer:
            for i in range(RUNS):
                timed = i % 2 == 1
                task = {"id": "t", "name": "t", **({"timeout_ms": TIMEOUT_MS} if timed else {})}
                made = await client.create_run(group=f"/project/{unique}/branch/b{i}", name=f"r{i}", tasks=[task])  # fmt: skip
                run_id = made.run.id
                run_ids.append(run_id)
                await client.start(run_id)
                lease = 600_000 if timed else LEASE_MS  # the timed ones keep their lease
                data = TaskClaimed(task_id="t", executor_id=f"ex-{i}", lease_ms=lease)
                at = time.time_ns() // 1_000_000
                await producer.append([make_event(data, id=f"claim-{i}", run_id=run_id, at=at)])

        async def some_release() -> bool:
            return bool(await _releases(s.kafka, s.topic_events))

        await wait_until(some_release, within=60, what="the first release", interval=0.05)
        first.kill()  # SIGKILL, mid-decisions
        killed = time.monotonic()
        at_kill = sum((await _releases(s.kafka, s.topic_events)).values())

        second = Worker(replace(s, web_port=free_port()), tmp_path / "w2.log").start()
        url2 = f"http://127.0.0.1:{second.settings.web_port}"
        await wait_healthy(url2, within=120)
        async with AsyncClient(url2) as client:

            async def all_ended() -> bool:
                for run_id in run_ids:
                    if (await client.get_run(run_id)).run.phase != "finished":
                        return False
                return True

            await wait_until(all_ended, within=120, what="every run to end")
            recovery = time.monotonic() - killed
            reasons = []
            for run_id in run_ids:
                run = (await client.get_run(run_id)).run
                reasons.append(run.tasks[0].reason)
        await asyncio.sleep(RETRY_AFTER + 2)  # a decision appended again would show by now
        counts = await _releases(s.kafka, s.topic_events)
        lost = sum(1 for r in run_ids if (r, "t", 1) not in counts)
        duplicated = sum(n - 1 for n in counts.values())
        fault_report(
            FaultRow(
                fault="9 owner killed mid time decisions",
                events=RUNS,
                recovery_s=recovery,
                lost=lost,
                duplicated=duplicated,
                verdict="pass" if lost == duplicated == 0 else "FAIL",
                note=f"{at_kill} of {RUNS} releases appended before the kill",
            )
        )
        assert lost == 0, counts
        assert duplicated == 0, counts
        assert sorted(reasons) == sorted(["executor_lost", "timeout"] * (RUNS // 2))
    finally:
        first.kill()
        if second is not None:
            second.stop()
