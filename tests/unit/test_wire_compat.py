"""Wire compatibility: a log written by the version before issue 12 replays to the same bytes.

``tests/golden/log-v1`` (recorded by ``tests/golden/log-v1/record.py`` with the orjson codec, before
the msgspec rewrite) holds Kafka records as the producer wrote them, commits and single events of
every type, with redeliveries, refusals and dead letters, and what replaying them through the
materializer gave: per record the counts, the dead-letter reason, the derived phase-change bytes
and (since issue 13) the derived ``task.ready`` bytes, and at the end the stored state bytes of
every run. Issue 13 regenerated the expectations where its rule changes alter them (the runs are
listed in ``tests/golden/log-v1/record.py``); every other run replays as recorded before. The code
of the day must give exactly the same, decode the same records to events that encode back to the recorded bytes, and read every
recorded state back to identical bytes.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import zstandard

from events import EventType, decode_record, decode_state, encode, encode_commit, encode_state
from partition.materializer import PartitionMaterializer

LOG = pathlib.Path(__file__).parent.parent / "golden" / "log-v1"
PARTITIONS = 4
_READY = EventType.TASK_READY


def _lines(name: str) -> Iterator[dict[str, Any]]:
    for line in zstandard.decompress((LOG / name).read_bytes()).splitlines():
        yield orjson.loads(line)


def _raw(line: dict[str, Any]) -> bytes:
    return line["raw"].encode() if "raw" in line else bytes.fromhex(line["raw_hex"])


RECORDS = list(_lines("records.jsonl.zst"))
STATES = {x["run_id"]: x["state"].encode() for x in _lines("states.jsonl.zst")}


def _replay(replays: bool = False) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """The recorded log through one materializer per partition (``replays``: as
    ``runstream replay`` makes them: no derived events, final runs encoded when they end)."""
    mats = {
        p: PartitionMaterializer(
            None,
            topic="runs.events",
            partition=p,
            phases_topic="runs.phases",
            partitions=PARTITIONS,
            derive=not replays,
            encode_final=replays,
        )
        for p in range(PARTITIONS)
    }
    got: list[dict[str, Any]] = []
    for line in RECORDS:
        out = mats[line["partition"]].apply_record(line["offset"], _raw(line))
        got.append(
            {
                "applied": out.applied,
                "duplicates": out.duplicates,
                "rejected": out.refused,
                "dead": None if out.dead is None else out.dead.reason,
                "derived": [encode(d) for d in out.derived if d.type is not _READY],
                "ready": [encode(d) for d in out.derived if d.type is _READY],
            }
        )
    states: dict[str, bytes] = {}
    for m in mats.values():
        snap = m.prepare()
        for rid, s in (*snap.dirty.items(), *snap.finished.items()):
            states[rid] = s if isinstance(s, bytes) else encode_state(s)
    return got, states


def test_a_replays_materializer_reads_a_final_run_from_its_bytes() -> None:
    m = PartitionMaterializer(
        None, topic="runs.events", partition=0, phases_topic="runs.phases",
        partitions=PARTITIONS, derive=False, encode_final=True,
    )  # fmt: skip
    for line in RECORDS:
        if line["partition"] == 0:
            m.apply_record(line["offset"], _raw(line))
    ended = [rid for rid, s in m._finished.items() if isinstance(s, bytes)]
    assert ended
    for rid in ended:
        assert asyncio.run(m.read_run(rid)) == decode_state(STATES[rid])


def test_the_recorded_log_covers_what_it_claims() -> None:
    # A guard on the test data itself: the log exercises every path the replay compares.
    types = {
        e["type"]
        for line in RECORDS
        if line["dead"] is None
        for e in (lambda o: o if isinstance(o, list) else [o])(orjson.loads(_raw(line)))
    }
    assert len(types) == 8, types  # every type a producer sends
    assert sum(x["duplicates"] for x in RECORDS) > 0
    assert sum(x["rejected"] for x in RECORDS) > 0
    assert {x["dead"] for x in RECORDS} >= {
        "invalid_json", "unknown_type", "unsupported_version", "schema", "misrouted"
    }  # fmt: skip
    assert any(x["raw"].startswith("{") for x in RECORDS if x["dead"] is None and "raw" in x)
    assert len(STATES) > 300


def test_replay_gives_the_recorded_outcomes_phase_changes_and_state_bytes() -> None:
    got, states = _replay()
    for i, (line, out) in enumerate(zip(RECORDS, got, strict=True)):
        want = {k: line[k] for k in ("applied", "duplicates", "rejected", "dead")}
        assert {k: out[k] for k in want} == want, f"record {i}"
        assert out["derived"] == [d.encode() for d in line["derived"]], f"record {i}"
        assert out["ready"] == [d.encode() for d in line["ready"]], f"record {i}"
    assert states.keys() == STATES.keys()
    for rid, raw in STATES.items():
        assert states[rid] == raw, rid


def test_a_replays_materializer_gives_the_recorded_outcomes_and_state_bytes() -> None:
    got, states = _replay(replays=True)
    for i, (line, out) in enumerate(zip(RECORDS, got, strict=True)):
        want = {k: line[k] for k in ("applied", "duplicates", "rejected", "dead")}
        assert {k: out[k] for k in want} == want, f"record {i}"
        assert out["derived"] == out["ready"] == [], f"record {i}"
    assert states.keys() == STATES.keys()
    for rid, raw in STATES.items():
        assert states[rid] == raw, rid


@pytest.mark.parametrize("line", [x for x in RECORDS if x["dead"] in (None, "misrouted")])
def test_recorded_records_decode_and_encode_back_to_the_same_bytes(line: dict[str, Any]) -> None:
    raw = _raw(line)
    events = decode_record(raw)
    again = encode(events[0]) if raw.startswith(b"{") else encode_commit(events)
    # One difference, in number formatting only: msgspec writes a float's positive exponent
    # without "+" (1e16; orjson wrote 1e+16), which only a float in an opaque task step can have.
    assert again == raw or (
        b"e+" in raw
        and again == raw.replace(b"e+", b"e")
        and orjson.loads(again) == orjson.loads(raw)
    )


def test_recorded_states_read_back_to_the_same_bytes() -> None:
    for rid, raw in STATES.items():
        assert encode_state(decode_state(raw)) == raw, rid
