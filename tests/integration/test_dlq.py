"""Dead letters you can act on: poison of every kind reaches runs.dlq, `runstream dlq list` and
`show` describe it, `redrive` sends the fixable records back after the fix, and a second redrive
changes nothing (event ids make a redriven event apply once)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from agents import dlq
from agents.config import Settings
from agents.readback import end_offsets, materialized_states, read_topic
from agents.resources import Resources
from events.catalogue import RunCreated, make_event
from events.codec import encode
from events.ids import format_run_id
from events.model import RunConfigTask
from partition.placement import partition_for
from tests.harness import (
    ROOT,
    Worker,
    caught_up,
    make_settings,
    prepare_topics,
    settings_env,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(300)]

SMALL = 4000  # the worker's first --max-event-bytes: the big run below is refused as oversize


def _created(n: int, *, note: str = "") -> bytes:
    rid = format_run_id(n)
    payload = RunCreated(
        name=f"dlq-{n}",
        group="/project/dlq",
        tasks=(RunConfigTask(id="t0", name="build"),),
        annotations={"note": note},
    )
    return encode(make_event(payload, id=f"{rid}.0", run_id=rid, at=1_780_000_000_000))


def _other_partition(run_id: str, partitions: int) -> int:
    return (partition_for(run_id, partitions) + 1) % partitions


async def _send_poison(s: Settings) -> dict[str, tuple[bytes, int | None]]:
    """One record of every kind the materializer refuses; returns reason → (key, partition)."""
    misrouted_id = format_run_id(902)
    envelope = orjson.loads(_created(1))
    poison: dict[str, tuple[bytes | None, bytes, int | None]] = {
        "invalid_json": (None, b'{"type": "run.created", oops', None),
        "unknown_type": (None, orjson.dumps({**envelope, "type": "run.exploded"}), None),
        "unsupported_version": (None, orjson.dumps({**envelope, "version": 99}), None),
        "schema": (None, orjson.dumps({**envelope, "data": {"name": 7}}), None),
        # Valid, but above the worker's first limit: fixed by raising --max-event-bytes.
        "oversize": (format_run_id(901).encode(), _created(901, note="x" * (2 * SMALL)), None),
        # Valid, but appended to a partition its run does not hash to: fixed by the redrive itself.
        "misrouted": (
            misrouted_id.encode(),
            _created(902),
            _other_partition(misrouted_id, s.partitions),
        ),
    }
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka, acks="all")
    await producer.start()
    try:
        for key, value, partition in poison.values():
            await producer.send_and_wait(
                s.topic_events,
                value,
                key=key,
                partition=partition,
                headers=[("x-producer", b"test"), ("runstream-error", b"forged")],
            )
    finally:
        await producer.stop()
    return {reason: (key or b"", p) for reason, (key, _, p) in poison.items()}


def _cli(s: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(s), "RUNSTREAM_PROGRESS": "0"}
    env.pop("CI", None)
    proc = subprocess.run(
        [sys.executable, "-m", "agents.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert '"logger":"aiokafka' not in proc.stderr
    return proc


async def _dead_letters(s: Settings) -> list[dlq.DeadLetterRecord]:
    return [r async for r in dlq.read(s)]


async def test_poison_is_listed_shown_and_redriven_once(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(
        unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects",
        partitions=2, max_event_bytes=SMALL,
    )  # fmt: skip
    await prepare_topics(s)
    await _send_poison(s)
    resources = Resources(s)
    worker = Worker(s, tmp_path / "worker-1.log").start()
    try:
        await wait_until(lambda: caught_up(s, resources), within=120, what="the first worker")

        async def all_dead() -> bool:
            return len(await _dead_letters(s)) == 6

        await wait_until(all_dead, within=60, what="six dead letters")
    finally:
        worker.stop()
    log = worker.log_text()
    assert "\x1b[" not in log, "terminal control bytes in the worker's output"
    assert "\b" not in log

    # list: one line per dead letter, every reason, and the filters.
    listed = [orjson.loads(line) for line in _cli(s, "dlq", "list", "--json").stdout.splitlines()]
    assert sorted(d["reason"] for d in listed) == sorted(
        ["invalid_json", "unknown_type", "unsupported_version", "schema", "oversize", "misrouted"]
    )
    assert {d["source_topic"] for d in listed} == {s.topic_events}
    by_reason = {d["reason"]: d for d in listed}
    text = _cli(s, "dlq", "list").stdout.splitlines()
    assert len(text) == 6
    assert any(by_reason["oversize"]["id"] in line and "oversize" in line for line in text)
    only = _cli(s, "dlq", "list", "--reason", "oversize", "--reason", "schema").stdout
    assert len(only.splitlines()) == 2
    p = by_reason["misrouted"]["source_partition"]
    from_p = _cli(s, "dlq", "list", "--json", "--source-partition", str(p)).stdout.splitlines()
    assert {orjson.loads(x)["source_partition"] for x in from_p} == {p}
    assert len(_cli(s, "dlq", "list", "--since", "1h").stdout.splitlines()) == 6
    assert _cli(s, "dlq", "list", "--until", "1h").stdout == ""

    # show: headers, key, decoded where it can be.
    bad = _cli(s, "dlq", "show", by_reason["invalid_json"]["id"]).stdout
    assert "runstream-error: invalid_json" in bad
    assert "x-producer: test" in bad
    assert "decoded:          no: invalid_json" in bad
    assert "raw start:" in bad
    assert "oops" in bad
    big = orjson.loads(_cli(s, "dlq", "show", "--json", by_reason["oversize"]["id"]).stdout)
    assert big["decoded"][0]["run_id"] == format_run_id(901)
    assert big["headers"]["runstream-source-offset"] == str(big["source_offset"])
    missing = _cli(s, "dlq", "show", "0:999999")
    assert missing.returncode == 1
    assert "no dead letter" in missing.stderr

    # Before the fix only the misrouted record is redriven; a dry run sends nothing.
    dry = _cli(s, "dlq", "redrive", "--dry-run")
    assert dry.stdout.strip().endswith("would redrive 1 (1 to " + s.topic_events + "), skipped 5")
    assert "skipped " + by_reason["oversize"]["id"] + ": still refused: oversize" in dry.stderr
    ends_before = await end_offsets(s.kafka, s.topic_events)

    # The fix: a worker (and the command) with a larger limit. Redrive, then once more.
    fixed = replace(s, max_event_bytes=1 << 20)
    assert await end_offsets(s.kafka, s.topic_events) == ends_before
    worker = Worker(fixed, tmp_path / "worker-2.log").start()
    try:
        first = _cli(fixed, "dlq", "redrive")
        assert first.returncode == 0
        assert first.stdout.strip().endswith("redriven 2 (2 to " + s.topic_events + "), skipped 4")
        await wait_until(lambda: caught_up(fixed, resources), within=120, what="the redrive")
        dm = await resources.datamanager()
        after_first = await materialized_states(dm, s.topic_events, range(s.partitions))
        assert {format_run_id(901), format_run_id(902)} <= after_first.keys()

        second = _cli(fixed, "dlq", "redrive", "--reason", "oversize", "--reason", "misrouted")
        assert second.stdout.strip().endswith("redriven 2 (2 to " + s.topic_events + "), skipped 0")
        await wait_until(lambda: caught_up(fixed, resources), within=120, what="the second redrive")
        after_second = await materialized_states(dm, s.topic_events, range(s.partitions))
    finally:
        worker.stop()
        await resources.close()
    assert after_second == after_first
    assert len(await _dead_letters(s)) == 6  # nothing new was refused

    # The redriven copies: keyed by run id on the run's partition, original headers only.
    records = await read_topic(s.kafka, s.topic_events)
    redriven = [
        (part, key, headers)
        for part, rows in records.items()
        for offset, key, _, headers in rows
        if offset >= ends_before[part]
    ]
    assert len(redriven) == 4
    for part, key, headers in redriven:
        assert key is not None
        assert part == partition_for(key.decode(), s.partitions)
        assert headers == [("x-producer", b"test")]
