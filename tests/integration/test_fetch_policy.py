"""A real worker's consumer batches its fetches while records come often and returns to
fetches that come back at once when they stop (agents.fetchpolicy): a backlog of one-event
records, as a foreign producer writes them, is read in batches, then the worker goes light."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from agents.resources import Resources
from agents.workload import generate
from tests.harness import (
    Worker,
    caught_up,
    make_settings,
    prepare_topics,
    produce_one_per_record,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(300)]


def _switches(log: str) -> list[str]:
    out = []
    for line in log.splitlines():
        if line.startswith("{") and "fetches" in line:
            msg = orjson.loads(line).get("msg", "")
            if msg.startswith("fetches"):
                out.append(msg)
    return out


async def test_fetches_batch_under_load_and_return_at_once_after(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects")
    await prepare_topics(s)
    events = generate(seed=11, runs=1500)  # ~20,000 events, one record each
    await produce_one_per_record(s, events)

    resources = Resources(s)
    worker = Worker(s, tmp_path / "worker.log").start()
    try:
        await wait_until(lambda: caught_up(s, resources), within=180, what="the checkpoints")

        async def light_again() -> bool:
            return _switches(worker.log_text())[-1:] == ["fetches return at once now"]

        await wait_until(light_again, within=30, what="the worker to go light again")
    finally:
        worker.stop()
        await resources.close()
    switches = _switches(worker.log_text())
    assert switches[0] == "fetches batch now", switches
    assert "fetches return at once now" in switches
