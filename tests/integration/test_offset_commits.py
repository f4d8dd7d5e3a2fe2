"""A real worker commits its consumer group's offsets of ``runs.events`` through Faust once its
checkpoints cover the records (``MaterializerService.ack``: the owners hold offsets, not Faust's
events), and the committed offset never passes a partition's checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.kafka import end_offsets
from agents.readback import checkpointed_offsets
from agents.resources import Resources
from agents.workload import generate
from tests.harness import (
    Worker,
    committed_offsets,
    make_settings,
    prepare_topics,
    produce_one_per_record,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(300)]


async def test_offsets_are_committed_up_to_the_checkpoints_and_never_past_them(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects")
    await prepare_topics(s)
    events = generate(seed=5, runs=300)
    await produce_one_per_record(s, events)
    ends = await end_offsets(s.kafka, s.topic_events)
    assert sum(ends.values()) == len(events)

    resources = Resources(s)
    worker = Worker(s, tmp_path / "worker.log").start()
    polls: list[tuple[dict[int, int], dict[int, int]]] = []
    try:

        async def committed_to_the_end() -> bool:
            # The committed offsets first, the checkpoints after: a checkpoint only moves on, so
            # a committed offset past the checkpoint read after it passed the manifest.
            committed = await committed_offsets(s.kafka, s.app_id, s.topic_events)
            dm = await resources.datamanager()
            covered = await checkpointed_offsets(dm, s.topic_events, ends)
            polls.append((committed, covered))
            return all(committed.get(p, -1) == end for p, end in ends.items())

        await wait_until(committed_to_the_end, within=180, what="offsets committed to the end")
    finally:
        worker.stop()
        await resources.close()
    for committed, covered in polls:
        assert all(offset <= covered[p] for p, offset in committed.items()), (committed, covered)
    assert len(polls) > 1  # the invariant was looked at before the end too
