"""The liveness table the partition owners query (``agents.liveness.Liveness``), with explicit
clocks; the follower's record handling (no Kafka); the heartbeat shape and its documentation."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest
from prometheus_client import REGISTRY

from agents.liveness import FORGET_AFTER, HeartbeatFollower, Liveness
from events import DecodeError, Heartbeat
from events.executors import (
    DEFAULT_HEARTBEAT_INTERVAL_MS,
    DEFAULT_LEASE_MS,
    MAX_LEASE_MS,
    decode_heartbeat,
    encode_heartbeat,
    heartbeat_interval_ms,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"


def listening(at: float = 0.0) -> Liveness:
    liveness = Liveness()
    liveness.listening(at)
    return liveness


# ------------------------------------------------------------------------------ lease lapse
def test_a_heartbeat_keeps_the_lease_for_its_lease_ms_exactly_the_lease_is_not_lapsed() -> None:
    lv = listening()
    lv.seen("e1", 10_000, now=100.0)
    assert not lv.lapsed("e1", 30_000, since=0.0, now=105.0)
    assert not lv.lapsed("e1", 30_000, since=0.0, now=110.0)  # exactly the lease
    assert lv.lapsed("e1", 30_000, since=0.0, now=110.001)


def test_each_heartbeat_renews_the_lease_from_its_receipt() -> None:
    lv = listening()
    lv.seen("e1", 10_000, now=100.0)
    lv.seen("e1", 10_000, now=108.0)
    assert not lv.lapsed("e1", 10_000, since=0.0, now=117.0)
    assert lv.lapsed("e1", 10_000, since=0.0, now=118.5)
    assert lv.last_seen("e1") == 108.0


def test_without_a_heartbeat_the_claims_lease_counts_from_since() -> None:
    lv = listening()
    assert lv.last_seen("ghost") is None
    assert not lv.lapsed("ghost", 5_000, since=50.0, now=55.0)
    assert lv.lapsed("ghost", 5_000, since=50.0, now=55.5)
    assert lv.lapsed("ghost", 30_000, since=0.0, now=31.0)


def test_the_heartbeats_lease_wins_over_the_claims() -> None:
    lv = listening()
    lv.seen("e1", 2_000, now=10.0)  # a short lease: the claim's longer one does not count
    assert lv.lapsed("e1", 60_000, since=0.0, now=12.5)
    lv.seen("e2", 60_000, now=10.0)  # a long lease: the claim's shorter one does not count
    assert not lv.lapsed("e2", 2_000, since=0.0, now=60.0)
    lv.seen("e1", 60_000, now=13.0)  # the last heartbeat's lease replaces the one before
    assert not lv.lapsed("e1", 2_000, since=0.0, now=70.0)


def test_since_gives_a_whole_lease_to_a_holder_heard_of_before_the_watch_began() -> None:
    lv = listening()
    lv.seen("e1", 10_000, now=100.0)
    # An owner that took the partition at 200 heard no heartbeat before: a whole lease from 200.
    assert not lv.lapsed("e1", 10_000, since=200.0, now=209.0)
    assert lv.lapsed("e1", 10_000, since=200.0, now=210.5)
    # An owner watching since before the heartbeat counts from the heartbeat.
    assert lv.lapsed("e1", 10_000, since=50.0, now=110.5)


def test_a_worker_that_does_not_hear_the_topic_never_says_lapsed() -> None:
    lv = Liveness()
    assert not lv.lapsed("e1", 1_000, since=0.0, now=1e9)
    lv.listening(1000.0)  # started listening at 1000: everyone gets a whole lease from then
    assert not lv.lapsed("e1", 1_000, since=0.0, now=1000.9)
    assert lv.lapsed("e1", 1_000, since=0.0, now=1001.5)
    lv.deaf()  # the follower failed: no judgement until it listens again
    assert not lv.lapsed("e1", 1_000, since=0.0, now=5000.0)
    lv.listening(5000.0)
    assert not lv.lapsed("e1", 1_000, since=0.0, now=5000.5)


def test_a_late_receipt_time_does_not_move_the_last_heartbeat_back() -> None:
    lv = listening()
    lv.seen("e1", 10_000, now=100.0)
    lv.seen("e1", 20_000, now=90.0)
    assert lv.last_seen("e1") == 100.0
    seen = lv.get("e1")
    assert seen is not None
    assert seen.lease_ms == 20_000


# ---------------------------------------------------------------------------- bounded memory
def test_executors_not_heard_of_for_an_hour_are_forgotten() -> None:
    assert FORGET_AFTER == MAX_LEASE_MS / 1000 == 3600.0
    lv = listening()
    lv.seen("old", 10_000, now=0.0)
    lv.seen("mid", 10_000, now=1800.0)
    assert len(lv) == 2
    lv.seen("new", 10_000, now=3600.0)  # "old" is exactly an hour old: kept
    assert "old" in lv
    lv.seen("new", 10_000, now=3600.5)
    assert "old" not in lv
    assert len(lv) == 2
    assert lv.forget(now=5400.5) == 1  # "mid"
    assert list(lv._seen) == ["new"]
    # A forgotten executor is judged as one never heard of: by its claim, from since.
    assert lv.lapsed("old", 30_000, since=0.0, now=5400.5)


def test_memory_is_bounded_by_the_executors_heard_of_in_the_last_hour() -> None:
    lv = listening()
    for second in range(20_000):  # a new executor every second, each heard of once
        lv.seen(f"e{second}", DEFAULT_LEASE_MS, now=float(second))
    assert len(lv) == int(FORGET_AFTER) + 1
    for second in range(20_000, 20_100):  # 100 executors heartbeating every 10 s for a while
        lv.seen(f"steady{second % 100}", DEFAULT_LEASE_MS, now=float(second))
    assert len(lv) <= int(FORGET_AFTER) + 1 + 100


# ------------------------------------------------------------------- the follower's records
def _value(executor_id: str = "e1", lease_ms: int = 5_000, at: int = 1) -> bytes:
    return encode_heartbeat(Heartbeat(executor_id=executor_id, lease_ms=lease_ms, at=at))


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_the_follower_records_a_heartbeat_at_its_receipt_time() -> None:
    lv = listening()
    follower = HeartbeatFollower("unused:9092", "t", lv)
    before = _metric("runstream_heartbeats_received_total")
    assert follower.handle(b"e1", _value(at=1764292659000), now=42.0)
    seen = lv.get("e1")
    assert seen is not None
    assert (seen.received, seen.lease_ms, seen.at) == (42.0, 5_000, 1764292659000)
    assert follower.handle(None, _value("e2"), now=43.0)  # no key: the value says who
    assert _metric("runstream_heartbeats_received_total") == before + 2
    assert follower.received == 2


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"e1", b"not json"),
        (b"e1", b'{"executor_id": "e1", "lease_ms": 5000}'),  # no "at"
        (b"e1", b'{"executor_id": "e1", "lease_ms": 500, "at": 1}'),  # lease below 1 s
        (b"e1", b'{"executor_id": "e1", "lease_ms": 5000, "at": 1, "x": 0}'),  # unknown field
        (b"e 1", b'{"executor_id": "e 1", "lease_ms": 5000, "at": 1}'),  # a space in the id
        (b"someone-else", _value("e1")),  # the key is not its executor id
        (b"e1", None),  # a tombstone
        (b"e1", b"[]"),
    ],
)
def test_a_malformed_record_is_counted_and_skipped(key: bytes, value: bytes | None) -> None:
    lv = listening()
    follower = HeartbeatFollower("unused:9092", "t", lv)
    before = _metric("runstream_heartbeats_malformed_total")
    assert not follower.handle(key, value, now=1.0)
    assert len(lv) == 0
    assert follower.malformed == 1
    assert _metric("runstream_heartbeats_malformed_total") == before + 1


def test_malformed_records_are_logged_at_most_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    follower = HeartbeatFollower("unused:9092", "t", listening())
    with caplog.at_level("WARNING", logger="runstream.liveness"):
        for i in range(50):
            follower.handle(b"k", b"{", now=1.0 + i * 0.01)
        follower.handle(b"k", b"{", now=20.0)
    lines = [r for r in caplog.records if "malformed heartbeat" in r.getMessage()]
    assert len(lines) == 2
    assert lines[1].left_out == 49  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ the shape
def test_the_default_interval_is_a_third_of_the_default_lease() -> None:
    assert DEFAULT_LEASE_MS == 30_000
    assert DEFAULT_HEARTBEAT_INTERVAL_MS == heartbeat_interval_ms(30_000) == 10_000


def test_decode_refuses_what_the_schema_refuses_naming_the_field() -> None:
    assert decode_heartbeat(_value()) == Heartbeat(executor_id="e1", lease_ms=5_000, at=1)
    with pytest.raises(DecodeError, match=r"\$\.lease_ms"):
        decode_heartbeat(b'{"executor_id": "e1", "lease_ms": 3600001, "at": 1}')
    with pytest.raises(DecodeError, match=r"got `float` - at `\$\.lease_ms`"):
        decode_heartbeat(b'{"executor_id": "e1", "lease_ms": 5000.0, "at": 1}')
    with pytest.raises(DecodeError, match=r"\$\.executor_id"):
        decode_heartbeat(b'{"executor_id": "' + b"x" * 201 + b'", "lease_ms": 5000, "at": 1}')
    with pytest.raises(DecodeError, match="invalid_json"):
        decode_heartbeat(b"{")


def test_the_guides_kcat_example_is_a_heartbeat_keyed_by_its_executor_id() -> None:
    guide = (DOCS / "events.md").read_text()
    section = guide[guide.index("## Heartbeats (`runs.heartbeats`)") :]
    key, value = re.search(r"printf '%s\\t%s\\n' (\S+) '(\{.*?\})'", section).groups()  # type: ignore[union-attr]
    follower = HeartbeatFollower("unused:9092", "runs.heartbeats", listening())
    assert follower.handle(key.encode(), value.encode(), now=1.0)
    assert decode_heartbeat(value.encode()).executor_id == key
    assert "kcat -P -b $B -t runs.heartbeats -K '\\t'" in section
    schema = msgspec.json.decode((DOCS / "schemas" / "heartbeat.json").read_bytes())
    assert set(schema["$defs"]["Heartbeat"]["required"]) == {"executor_id", "lease_ms", "at"}


# ------------------------------------------------------------------------------ the sender
async def test_the_sender_answers_503_when_kafka_does_not_take_the_heartbeat() -> None:
    from agents.liveness import HeartbeatSender
    from api import Unavailable
    from tests.harness import free_port

    sender = HeartbeatSender(f"127.0.0.1:{free_port()}", "t", timeout=30)  # nothing listens
    hb = Heartbeat(executor_id="e1", lease_ms=5_000, at=1)
    with pytest.raises(Unavailable, match="Kafka refused the heartbeat"):
        await sender.send(hb)
    await sender.stop()
    with pytest.raises(Unavailable, match="stopping"):
        await sender.send(hb)
