"""A run's history on real services: after the worker is SIGKILLed and restarted, and after
``runstream replay`` rebuilt it from the log, it equals the oracle's."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import msgspec
import pytest

from agents.cli.replay import _datamanager, replay
from agents.resources import Resources
from events import (
    Event,
    StartRequested,
    StopRequested,
    TaskStatus,
    TaskStatusChanged,
    format_run_id,
)
from partition.history import HISTORY, HistoryEntry, stored_history
from partition.materializer import PartitionMaterializer
from tests import oracle
from tests.harness import Worker, caught_up, make_settings, prepare_topics, wait_until
from tests.integration.test_pipeline import produce
from tests.unit.test_events_support import created, ev, task

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(600)]

RUNS = 20


def workload() -> list[Event]:
    """Runs that finish, with a redelivered event, a refused task report, and a late stop."""
    out: list[Event] = []
    for n in range(1, RUNS + 1):
        r = format_run_id(n)
        start = ev(StartRequested(), run_id=r)
        out += [ev(created(task("a")), run_id=r), start, start]  # a duplicate
        out.append(ev(TaskStatusChanged(task_id="nope", status=TaskStatus.RUNNING), run_id=r))
        out.append(ev(TaskStatusChanged(task_id="a", status=TaskStatus.RUNNING), run_id=r))
        if n % 2:
            out.append(ev(TaskStatusChanged(task_id="a", status=TaskStatus.SUCCESS), run_id=r))
            out.append(ev(StopRequested(), run_id=r))  # refused: run is final
    return out


def plain(entries: list[HistoryEntry]) -> list[tuple[str, str, str, str, int | None]]:
    return [(e.event_id, e.type, str(e.outcome), e.reason, e.seq) for e in entries]


async def api_histories(port: int) -> dict[str, list[tuple[str, str, str, str, int | None]]]:
    out = {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        for n in range(1, RUNS + 1):
            r = await c.get(f"/api/v1/runs/{format_run_id(n)}/history")
            assert r.status_code == 200, r.text
            body = r.json()
            positions = [(e["offset"], e["index"]) for e in body["events"]]
            assert positions == sorted(set(positions))
            out[body["run_id"]] = plain(msgspec.convert(body["events"], list[HistoryEntry]))
    return out


async def test_history_after_a_restart_and_a_replay_equals_the_oracles(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects")
    await prepare_topics(s)
    events = workload()
    want = oracle.history(events)
    assert len(want) == RUNS
    half = len(events) // 2
    await produce(s.kafka, s.topic_events, events[:half])
    resources = Resources(s)
    worker = Worker(s, tmp_path / "worker.log").start()
    try:
        await wait_until(lambda: caught_up(s, resources), within=180, what="the checkpoints")
        await produce(s.kafka, s.topic_events, events[half:])
        worker.kill(signal.SIGKILL)  # the tail may be applied but not checkpointed: lost
        worker = Worker(s, tmp_path / "worker.log").start()
        await wait_until(lambda: caught_up(s, resources), within=180, what="the checkpoints")

        async def ready() -> bool:
            try:
                async with httpx.AsyncClient() as c:
                    r = await c.get(f"http://127.0.0.1:{s.web_port}/healthz")
                return r.status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(ready, within=120, what="/healthz")
        assert await api_histories(s.web_port) == want
    finally:
        worker.stop()

    # The log rebuilds the histories: replay into a fresh prefix and read them from there.
    await replay(s, target="h1", progress=False, jobs=1)
    dm, kv = _datamanager(s, target="h1")
    try:
        rebuilt = {}
        for p in range(s.partitions):
            pm = await PartitionMaterializer.open(
                dm, topic=s.topic_events, partition=p, phases_topic=s.topic_phases,
                max_event_bytes=s.max_event_bytes, claim=False,
            )  # fmt: skip
            stored = [key for key, _ in await pm.writer.load(HISTORY)]
            for run_id in sorted({key.split("/")[0] for key in stored}):
                rebuilt[run_id] = plain(await stored_history(pm.writer, run_id))
    finally:
        await kv.close()
    assert rebuilt == want
