"""The codec: golden samples, round trips, commits, every decode error reason, run state bytes."""

from __future__ import annotations

import pathlib
from typing import Any

import orjson
import pytest

from events import (
    CURRENT_VERSIONS,
    DecodeError,
    DecodeReason,
    EventType,
    StartRequested,
    TaskStatus,
    TaskStatusChanged,
    decode,
    decode_record,
    decode_state,
    encode,
    encode_commit,
    encode_state,
)
from events.upcast import upcast
from tests.unit.test_events_support import RUN, applied, created, ev, task

GOLDEN = pathlib.Path(__file__).parent.parent / "golden" / "events"
SAMPLES = sorted(GOLDEN.glob("*.json"))


def envelope(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "task.status_changed",
        "version": 1,
        "id": "e1",
        "run_id": RUN,
        "at": 5,
        "data": {"task_id": "a", "status": "running"},
    }
    base.update(over)
    return base


def reason_of(raw: bytes) -> DecodeReason:
    with pytest.raises(DecodeError) as info:
        decode_record(raw)
    return info.value.reason


def test_every_type_and_version_has_a_golden_sample() -> None:
    have = {p.name for p in SAMPLES}
    want = {f"{t}.v{v}.json" for t, v in CURRENT_VERSIONS.items()}
    assert want <= have, f"missing golden samples: {sorted(want - have)}"


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_golden_sample_decodes_and_reencodes_to_the_same_json(path: pathlib.Path) -> None:
    raw = path.read_bytes()
    event = decode(raw)
    name = path.name.removesuffix(".json")
    assert f"{event.type}.v{event.version}" == name
    assert orjson.loads(encode(event)) == orjson.loads(raw)


def test_golden_run_created_fields() -> None:
    event = decode((GOLDEN / "run.created.v1.json").read_bytes())
    data = event.data
    assert event.run_id == "0000000000000042"
    assert event.at == 1764292658123
    assert [t.name for t in data.tasks] == ["compile", "deploy"]  # type: ignore[union-attr]
    assert data.tasks[1].depends[0].conditions == ("on_success",)  # type: ignore[union-attr]
    assert data.recreated_from == "0000000000000041"  # type: ignore[union-attr]


def test_roundtrip_and_commit() -> None:
    events = [
        ev(created(task("a"))),
        ev(StartRequested()),
        ev(TaskStatusChanged(task_id="a", status=TaskStatus.RUNNING)),
    ]
    for e in events:
        assert decode(encode(e)) == e
        assert decode_record(encode(e)) == [e]
    assert decode_record(encode_commit(events)) == events
    with pytest.raises(ValueError, match="at least one"):
        encode_commit([])


def test_commit_with_one_bad_event_is_rejected_whole() -> None:
    good = envelope()
    bad = envelope(type="run.exploded")
    with pytest.raises(DecodeError) as info:
        decode_record(orjson.dumps([good, bad]))
    assert info.value.reason is DecodeReason.UNKNOWN_TYPE
    assert "commit event 1" in str(info.value)


@pytest.mark.parametrize("run_id", ["000000000000004a", "0" * 16, "١" * 16, "+000000000000042"])
def test_the_envelopes_run_id_is_checked_by_the_codec_as_its_pattern_says(run_id: str) -> None:
    """The envelope's run id is checked in the codec, not by msgspec's regular expression: the
    same verdict and the same message, alone, in a commit (naming the event) and on the
    diagnosing path."""
    message = "Expected `str` matching regex '^(?!0{16})[0-9]{16}' - at `$.run_id`"
    raw = orjson.dumps(envelope(run_id=run_id))
    for decoder in (decode, decode_record):
        with pytest.raises(DecodeError) as info:
            decoder(raw)
        assert (info.value.reason, info.value.message) == (DecodeReason.SCHEMA, message)
    with pytest.raises(DecodeError) as info:
        decode_record(orjson.dumps([envelope(), envelope(run_id=run_id)]))
    assert info.value.message == f"commit event 1: {message}"
    with pytest.raises(DecodeError) as info:  # another field is bad too: the diagnosing path
        decode_record(orjson.dumps(envelope(run_id=run_id, version=2)))
    assert info.value.reason is DecodeReason.UNSUPPORTED_VERSION


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", DecodeReason.INVALID_JSON),
        (b"", DecodeReason.INVALID_JSON),
        (orjson.dumps(envelope(type="run.exploded")), DecodeReason.UNKNOWN_TYPE),
        (orjson.dumps(envelope(type=3)), DecodeReason.UNKNOWN_TYPE),
        (orjson.dumps(envelope(version=2)), DecodeReason.UNSUPPORTED_VERSION),
        (orjson.dumps(envelope(version=0)), DecodeReason.UNSUPPORTED_VERSION),
        (orjson.dumps([]), DecodeReason.SCHEMA),
        (orjson.dumps("text"), DecodeReason.SCHEMA),
        (orjson.dumps({**envelope(), "extra": 1}), DecodeReason.SCHEMA),
        (orjson.dumps({k: v for k, v in envelope().items() if k != "at"}), DecodeReason.SCHEMA),
        (orjson.dumps(envelope(version="1")), DecodeReason.SCHEMA),
        (orjson.dumps(envelope(run_id="7")), DecodeReason.SCHEMA),
        (orjson.dumps(envelope(run_id="0" * 16)), DecodeReason.SCHEMA),
        (orjson.dumps(envelope(run_id="١" * 16)), DecodeReason.SCHEMA),
        (orjson.dumps(envelope(at=-1)), DecodeReason.SCHEMA),
        (orjson.dumps(envelope(at=1.5)), DecodeReason.SCHEMA),
        (orjson.dumps(envelope(id="")), DecodeReason.SCHEMA),
        (orjson.dumps(envelope(data=[])), DecodeReason.SCHEMA),
        (orjson.dumps(envelope(data={"task_id": "a", "status": "bogus"})), DecodeReason.SCHEMA),
        (orjson.dumps(envelope(data={"task_id": "a", "status": []})), DecodeReason.SCHEMA),
        (
            orjson.dumps(envelope(data={"task_id": "a", "status": "running", "x": 1})),
            DecodeReason.SCHEMA,
        ),
        (orjson.dumps(envelope(type="run.start_requested", data={"x": 1})), DecodeReason.SCHEMA),
        (orjson.dumps(envelope(type="run.created", data={"name": "n"})), DecodeReason.SCHEMA),
        (
            orjson.dumps(
                envelope(
                    type="run.created",
                    data={
                        "name": "n",
                        "group": "/project/p",
                        "tasks": [{"id": "a", "name": "a", "skip": "yes"}],
                    },
                )
            ),
            DecodeReason.SCHEMA,
        ),
        (
            orjson.dumps(
                envelope(
                    type="run.created",
                    data={"name": "n", "group": "/project/p", "environment": {"A": 1}},
                )
            ),
            DecodeReason.SCHEMA,
        ),
        (
            orjson.dumps(
                envelope(
                    type="run.created",
                    data={"name": "n", "group": "/project/p", "recreated_from": "x"},
                )
            ),
            DecodeReason.SCHEMA,
        ),
        (
            orjson.dumps(
                envelope(
                    type="run.phase_changed",
                    data={"group": "/g", "phase": "queued", "result": "unknown", "seq": 0},
                )
            ),
            DecodeReason.SCHEMA,
        ),
    ],
)
def test_decode_errors_carry_their_reason(raw: bytes, reason: DecodeReason) -> None:
    assert reason_of(raw) is reason


def test_oversize_record_is_refused_before_parsing() -> None:
    raw = orjson.dumps(envelope())
    assert decode_record(raw, max_size=len(raw))
    with pytest.raises(DecodeError) as info:
        decode_record(raw, max_size=len(raw) - 1)
    assert info.value.reason is DecodeReason.OVERSIZE


def test_upcasters_run_in_a_loop_to_the_current_version() -> None:
    kind = EventType.TASK_APPROVED
    steps = {
        (kind, 1): lambda d: {"task": d["t"]},
        (kind, 2): lambda d: {"task_id": d["task"]},
    }
    out = upcast(kind, 1, {"t": "a"}, upcasters=steps, current={kind: 3})
    assert out == {"task_id": "a"}
    with pytest.raises(DecodeError) as info:
        upcast(kind, 1, {}, upcasters={}, current={kind: 2})
    assert info.value.reason is DecodeReason.UNSUPPORTED_VERSION


def test_state_bytes_roundtrip_and_are_deterministic() -> None:
    state = applied(
        None, ev(created(task("a"), task("b", "a"), annotations={"x": "1", "a": "2"}))
    ).state
    state = applied(state, ev(StartRequested())).state
    raw = encode_state(state)
    back = decode_state(raw)
    assert back == state
    assert encode_state(back) == raw
    # same content built with maps in another insertion order gives the same bytes
    again = applied(
        None, ev(created(task("a"), task("b", "a"), annotations={"a": "2", "x": "1"}), id="e-other")
    ).state
    assert b'"annotations":{"a":"2","x":"1"}' in encode_state(again)


@pytest.mark.parametrize(
    "raw", [b"[", b"{}", orjson.dumps({"format": 99}), b'{"format":1,"seq":0}']
)
def test_bad_state_bytes_raise_decode_error(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_state(raw)


def test_optional_keys_take_their_defaults() -> None:
    data = {"name": "n", "group": "/project/p", "tasks": [{"id": "a", "name": "a", "depends": [{"task_id": "b"}]}]}  # fmt: skip
    event = decode(orjson.dumps(envelope(type="run.created", data=data)))
    t = event.data.tasks[0]  # type: ignore[union-attr]
    assert (t.environment, t.steps, t.skip, t.level) == ({}, (), False, 0)
    assert t.depends[0].conditions == ()
    assert event.data.counter == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "bad_task",
    [
        {"id": "a", "name": "a", "color": "red"},
        {"id": "a"},
        {"id": "a", "name": "a", "depends": [{"task_id": "b", "when": []}]},
        {"id": "a", "name": "a", "depends": [{"conditions": []}]},
        {"id": "a", "name": "a", "depends": [{"task_id": "b", "conditions": ["sometimes"]}]},
        {"id": "a", "name": "a", "steps": ["make"]},
        {"id": "a", "name": "a", "level": 3},
    ],
)
def test_malformed_tasks_are_schema_errors(bad_task: dict[str, Any]) -> None:
    data = {"name": "n", "group": "/project/p", "tasks": [bad_task]}
    assert reason_of(orjson.dumps(envelope(type="run.created", data=data))) is DecodeReason.SCHEMA
