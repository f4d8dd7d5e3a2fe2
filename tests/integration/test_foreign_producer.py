"""A producer in another language, configured only as docs/events.md says: Debian's kcat
(librdkafka) creates a run through the creation topic, reads the run id it was given, reports
every task's status (key = run id, ``-X partitioner=murmur2_random``) and reads the phase
changes back, and the ready tasks from their own topic. The run finishes; nothing lands in the
dead-letter topic.

kcat is installed by the project's set-up (``deploy/local up``, ``.ci/run``); without it this
test fails — a missing tool never passes as a skip.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from agents.config import Settings
from tests.harness import Worker, make_settings, prepare_topics, wait_healthy, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(240)]

KCAT = shutil.which("kcat") or shutil.which("kafkacat")


def kcat(*args: str, stdin: str | None = None) -> str:
    assert KCAT is not None, "kcat is missing: apt-get install -y kafkacat (deploy/local up does)"
    done = subprocess.run(
        [KCAT, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def produce(bootstrap: str, topic: str, lines: list[tuple[str, dict[str, object]]]) -> None:
    """``key<TAB>json`` lines, as the guide's kcat example sends them."""
    text = "".join(f"{key}\t{json.dumps(doc, separators=(',', ':'))}\n" for key, doc in lines)
    kcat("-P", "-b", bootstrap, "-t", topic, "-K", "\\t", "-X", "partitioner=murmur2_random", stdin=text)  # fmt: skip


def consume(bootstrap: str, topic: str) -> list[tuple[str, dict[str, object]]]:
    """Every record of ``topic`` so far, as (key, JSON value)."""
    out = kcat("-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%k\t%s\n")
    records = []
    for line in out.splitlines():
        key, _, value = line.partition("\t")
        records.append((key, json.loads(value)))
    return records


async def test_a_kcat_producer_runs_a_run_from_the_guide_alone(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    assert KCAT is not None, "kcat is missing: apt-get install -y kafkacat (deploy/local up does)"
    s = make_settings(
        unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects", partitions=8
    )
    await prepare_topics(s)
    # The scheduler off: the producer starts the run itself (docs/events.md, step 3).
    worker = Worker(s, tmp_path / "w.log", {"RUNSTREAM_MAX_RUNNING_PER_GROUP": "0"}).start()
    b = s.kafka
    try:
        await wait_healthy(f"http://127.0.0.1:{s.web_port}")
        # Two runs on 8 partitions: a wrong partitioner (librdkafka's default) puts both runs'
        # events where their runs live only once in 64 tries, so this test catches it.
        runs = [await run_one(b, s, f"kcat-{unique}-{n}", f"/project/{unique}/branch/b{n}") for n in (1, 2)]  # fmt: skip
        assert len(set(runs)) == 2
        assert consume(b, s.topic_dlq) == []
    finally:
        worker.stop()


async def run_one(b: str, s: Settings, request_id: str, group: str) -> str:
    """One run, as docs/events.md's kcat walk-through does it; returns its run id."""
    request = {
        "request_id": request_id,
        "name": "build",
        "group": group,
        "tasks": [
            {"id": "compile", "name": "compile"},
            {"id": "test", "name": "test", "depends": [{"task_id": "compile"}]},
        ],
    }
    # 1. Ask for a run, twice (a producer's retry): one run id.
    await asyncio.to_thread(produce, b, s.topic_requests, [(request_id, request)] * 2)

    # 2. Read the run id it was given.
    def replies() -> list[dict[str, object]]:
        return [v for k, v in consume(b, s.topic_replies) if k == request_id]

    async def replied() -> bool:
        return len(await asyncio.to_thread(replies)) == 2

    await wait_until(replied, within=60, what="two replies to the request")
    assert {r["outcome"] for r in replies()} == {"created"}
    (run_id,) = {r["run_id"] for r in replies()}
    assert isinstance(run_id, str)

    # 3. Start it and report every task's status: key = run id, murmur2.
    def event(eid: str, kind: str, at: int, data: dict[str, object]) -> tuple[str, dict[str, object]]:  # fmt: skip
        doc = {"type": kind, "version": 1, "id": eid, "run_id": run_id, "at": at, "data": data}
        return run_id, doc

    t0 = 1_780_000_000_000
    statuses = [("compile", "running"), ("compile", "success"), ("test", "running"), ("test", "success")]  # fmt: skip
    events = [event("start", "run.start_requested", t0, {})] + [
        event(f"{tid}.{st}", "task.status_changed", t0 + i + 1, {"task_id": tid, "status": st})
        for i, (tid, st) in enumerate(statuses)
    ]
    await asyncio.to_thread(produce, b, s.topic_events, events)

    # 4. Read the phase changes back until the run is in a final phase.
    def changes() -> list[dict[str, object]]:
        return [
            v["data"]  # type: ignore[misc]
            for k, v in consume(b, s.topic_phases)
            if k == run_id and v["type"] == "run.phase_changed"
        ]

    async def final() -> bool:
        got = await asyncio.to_thread(changes)
        return bool(got) and got[-1]["phase"] in ("finished", "cancelled", "setuperror")

    await wait_until(final, within=60, what=f"run {run_id} to reach a final phase")
    assert [(c["seq"], c["phase"], c["result"]) for c in changes()] == [
        (1, "queued", "unknown"),
        (2, "running", "unknown"),
        (3, "finished", "success"),
    ]
    # 5. What an executor follows: the ready tasks on runs.tasks, and only there.
    ready = [v for k, v in consume(b, s.topic_tasks) if k == run_id]
    assert [(v["type"], v["data"]["task_id"], v["data"]["seq"]) for v in ready] == [  # type: ignore[index]
        ("task.ready", "compile", 1),
        ("task.ready", "test", 2),
    ]
    assert {v["type"] for k, v in consume(b, s.topic_phases) if k == run_id} == {
        "run.phase_changed"
    }
    return run_id
