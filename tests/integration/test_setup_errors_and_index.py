"""Setup-error reports become setuperror runs exactly once; the run index follows runs.phases and
its dumps (newest dump + tail) equal a rebuild from the log."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from agents import keys
from agents.cli.index import _dump, _verify
from agents.indexing import build_index
from agents.readback import materialized_states, read_topic
from agents.resources import Resources
from agents.workload import generate
from events import parse_run_id
from events.codec import decode_state
from events.model import Phase
from indexer import DumpStore, Order
from tests.harness import Worker, caught_up, make_settings, prepare_topics, wait_until
from tests.integration.test_pipeline import produce
from tests.oracle import Oracle

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(300)]


async def test_setup_error_reports_and_the_index(
    kafka_bootstrap: str,
    etcd_endpoint: str,
    unique: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = make_settings(unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects")
    await prepare_topics(s)
    events = generate(seed=3, runs=300, first_run_id=1_000_000)  # clear of the allocator's ids
    await produce(s.kafka, s.topic_events, events)
    report = {
        "id": f"hook-{unique}-1",
        "group": "/project/broken/branch/main",
        "static_environment": {"COMMIT": "abc"},
        "annotations": {"run_type": "project"},
        "errors": [
            {"message": "config.yml:3: mapping values are not allowed here", "task_ids": []}
        ],
        "at": 1_780_000_000_000,
    }
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka, acks="all")
    await producer.start()
    try:
        for doc in (report, report, {**report, "id": f"hook-{unique}-2"}):  # a retried report
            await producer.send_and_wait(s.topic_setup_errors, orjson.dumps(doc))
        await producer.send_and_wait(s.topic_setup_errors, b'{"group": 7}')  # malformed
    finally:
        await producer.stop()

    resources = Resources(s)
    worker = Worker(s, tmp_path / "w.log").start()
    try:

        async def materialized() -> bool:
            dm = await resources.datamanager()
            got = await materialized_states(dm, s.topic_events, range(s.partitions))
            return len(got) >= 302 and await caught_up(s, resources)

        await wait_until(materialized, within=120, what="the setup-error runs")
        dm = await resources.datamanager()
        states = {
            rid: decode_state(raw)
            for rid, raw in (
                await materialized_states(dm, s.topic_events, range(s.partitions))
            ).items()
        }
        oracle = Oracle().feed(events)
        extra = sorted(set(states) - set(oracle.states))
        assert len(extra) == 2  # the retried report made one run, not two
        for rid in extra:
            st = states[rid]
            assert (st.run.phase, st.run.group, st.run.name) == (
                Phase.SETUPERROR,
                report["group"],
                "Setup Error",
            )
            assert st.config.setup_errors[0].message == report["errors"][0]["message"]
        dead = [r for recs in (await read_topic(s.kafka, s.topic_dlq)).values() for r in recs]
        assert [v for _, _, v, _ in dead] == [b'{"group": 7}']

        # The index, started as a worker starts it, holds every run with its final phase/result.
        store = DumpStore(await resources.store(), prefix=keys.index_prefix(s.etcd_prefix))
        index, loaded = await build_index(s, store)
        assert loaded is None  # no dump yet: built from the log alone
        for rid, st in states.items():
            entry = index.get(parse_run_id(rid))
            assert entry is not None, rid
            assert (entry.group, entry.phase, entry.result) == (
                st.run.group,
                st.run.phase,
                st.run.result,
            )
        page = index.list_runs(groups=[report["group"]], order=Order.ASC)
        assert [e.run_id for e in page.runs] == [parse_run_id(r) for r in extra]

        # Force a dump, then: newest dump + tail == a rebuild from the whole log.
        assert await _dump(s) == 0
        assert await _verify(s) == 0
        assert "identical" in capsys.readouterr().out
        index2, loaded2 = await build_index(s, store)
        assert loaded2 is not None
        assert index2.stats().runs == len(states)
    finally:
        worker.stop()
        await resources.close()
