"""Refusals are visible and bounded; creations the index cannot hold are refused; dead letters keep
the source record's key and timestamp; creation requests are read and checked before an id is
spent (partition.admission, partition.outbox, agents.creation)."""

from __future__ import annotations

import logging

import orjson
import pytest

from agents.creation import BAD_REQUEST, Refused, read_report, read_request
from events import (
    CancelRequested,
    Event,
    Phase,
    PhaseChanged,
    Result,
    StartRequested,
    StopRequested,
    TaskAnnotationsSet,
    TaskApproved,
    TaskStatus,
    TaskStatusChanged,
    apply,
    encode,
    format_run_id,
    reducer,
)
from events.catalogue import EventType
from partition import metrics
from partition.admission import Admission, RefusalCode, refusal_code
from partition.finals import FinalIds
from partition.materializer import PartitionMaterializer
from partition.outbox import Outbox
from tests.fakes_owner import FakeLog
from tests.unit.test_events_support import created, ev, fold, task
from tests.unit.test_owner import Rig

RUN = format_run_id(7)


def _status(tid: str, status: TaskStatus) -> TaskStatusChanged:
    return TaskStatusChanged(task_id=tid, status=status)


def _every_refusal() -> list[tuple[RefusalCode, Event, object]]:
    """One event per way the reducer refuses, with the state it is refused in."""
    new = ev(created(task("a"), task("b", "a", needs_approval=True)))
    queued = fold([new])
    running = fold([ev(StartRequested())], queued)
    finished = fold(
        [ev(_status("a", TaskStatus.RUNNING)), ev(_status("a", TaskStatus.FAILED))],
        fold([ev(StartRequested())], fold([ev(created(task("a")))])),
    )
    done_a = fold(
        [ev(_status("a", TaskStatus.RUNNING)), ev(_status("a", TaskStatus.SUCCESS))], running
    )
    derived = PhaseChanged(group="/g", phase=Phase.QUEUED, result=Result.UNKNOWN, seq=1)
    C = RefusalCode
    return [
        (C.UNKNOWN_RUN, ev(_status("a", TaskStatus.RUNNING)), None),
        (C.BAD_CREATION, ev(created()), None),
        (C.BAD_CREATION, ev(created(task("a"), group="no-slash")), None),
        (C.RUN_ID_USED, ev(created(task("a"))), queued),
        (C.RUN_FINAL, ev(CancelRequested()), finished),
        (C.RUN_FINAL, ev(_status("a", TaskStatus.RUNNING)), finished),
        (C.WRONG_PHASE, ev(_status("a", TaskStatus.RUNNING)), queued),
        (C.WRONG_PHASE, ev(StartRequested()), running),
        (C.WRONG_PHASE, ev(CancelRequested()), running),
        (C.WRONG_PHASE, ev(StopRequested()), queued),
        (C.UNKNOWN_TASK, ev(_status("zz", TaskStatus.RUNNING)), running),
        (C.UNKNOWN_TASK, ev(TaskApproved(task_id="zz")), running),
        (C.UNKNOWN_TASK, ev(TaskAnnotationsSet(task_id="zz", annotations={})), running),
        (C.TASK_TRANSITION, ev(_status("a", TaskStatus.NOTSTARTED)), running),
        (C.TASK_TRANSITION, ev(_status("a", TaskStatus.RUNNING)), done_a),
        (C.APPROVAL, ev(_status("b", TaskStatus.RUNNING)), done_a),
        (C.APPROVAL, ev(TaskApproved(task_id="a")), running),
        (C.APPROVAL, ev(TaskApproved(task_id="b")), fold([ev(TaskApproved(task_id="b"))], done_a)),
        (C.NOT_ALLOWED, ev(derived), queued),
        (C.NOT_ALLOWED, ev(_status("a", TaskStatus.RUNNING), run_id=format_run_id(8)), running),
    ]


@pytest.mark.parametrize("case", _every_refusal(), ids=lambda c: c[0].value)
def test_every_reducer_refusal_has_its_code(case: tuple[RefusalCode, Event, object]) -> None:
    code, event, state = case
    out = apply(state, event)  # type: ignore[arg-type]
    assert isinstance(out, reducer.Refused), out
    assert refusal_code(event.type, out.reason) is code, out.reason


def test_a_materializer_refusal_has_its_code() -> None:
    assert (
        refusal_code(EventType.TASK_APPROVED, "run 0000000000000007 is final")
        is RefusalCode.RUN_FINAL
    )
    assert (
        refusal_code(EventType.RUN_CREATED, "run 0000000000000007 is final")
        is RefusalCode.RUN_ID_USED
    )
    assert refusal_code(EventType.TASK_APPROVED, "something new") is RefusalCode.OTHER


def test_the_window_admits_ids_near_the_partitions_runs() -> None:
    adm = Admission(0, ids=[1000, 1200], max_gap=100)
    far = ev(created(task("a")), run_id=format_run_id(1300))
    near = ev(created(task("a")), run_id=format_run_id(1299))
    below = ev(created(task("a")), run_id=format_run_id(900))
    assert adm.far(near) is None
    assert adm.far(ev(_status("a", TaskStatus.RUNNING), run_id=format_run_id(10**9))) is None
    reason = adm.far(far)
    assert reason is not None
    assert "index cannot hold" in reason
    assert refusal_code(EventType.RUN_CREATED, reason) is RefusalCode.RUN_ID_OUT_OF_RANGE
    assert adm.far(below) is not None
    adm.created(1299)
    assert adm.far(far) is None  # the window grows with the runs created
    assert Admission(0).far(far) is None  # no run yet: nothing to measure against


def test_the_window_starts_from_active_and_final_runs() -> None:
    finals = FinalIds()
    finals.add(5000)
    adm = Admission.of(0, [format_run_id(10)], finals)
    assert (adm.low, adm.high) == (10, 5000)
    assert Admission.of(0, [], FinalIds()).high == 0


def test_a_far_creation_is_refused_not_stored_and_counted() -> None:
    pm = PartitionMaterializer(_NoStore(), topic="t", partition=0, phases_topic="p")
    before = metrics.EVENTS_REJECTED.labels("run_id_out_of_range")._value.get()
    near = ev(created(task("a")), run_id=format_run_id(1000))
    far = ev(created(task("a")), run_id="0000000900000000")
    out = pm.apply_record(0, encode(near))
    assert out.applied == 1
    out = pm.apply_record(1, encode(far))
    assert (out.applied, out.refused) == (0, 1)
    assert "0000000900000000" not in pm.active
    assert metrics.EVENTS_REJECTED.labels("run_id_out_of_range")._value.get() == before + 1


class _NoStore:
    """A PartitionStore never reached by these tests."""


def test_refusal_lines_are_rate_limited_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    adm = Admission(3, lines_per_second=2, clock=lambda: now[0])
    event = ev(_status("a", TaskStatus.RUNNING))
    with caplog.at_level(logging.WARNING, logger="runstream.refusals"):
        for _ in range(5):
            adm.refused(event, f"unknown run {event.run_id}: x before its creation")
        assert len(caplog.records) == 2
        now[0] = 101.5
        adm.refused(event, f"unknown run {event.run_id}: x before its creation")
    last = caplog.records[-1]
    assert len(caplog.records) == 3
    assert (last.run_id, last.event_id, last.code, last.suppressed) == (  # type: ignore[attr-defined]
        event.run_id,
        event.id,
        "unknown_run",
        3,
    )
    assert last.partition == 3  # type: ignore[attr-defined]


# ------------------------------------------------------------------- dead letters
async def test_a_dead_letter_keeps_the_key_and_timestamp() -> None:
    rig = Rig()
    offset = rig.append_raw(b'{"type": "nope"}')
    value = rig.log.values("runs.events")[offset]
    await rig.owner.load()
    await rig.owner.handle(
        offset, value, [("trace", b"1")], key=RUN.encode(), timestamp_ms=1764292658123
    )
    await rig.owner.checkpoint()
    (sent,) = [s for s in rig.log.sent if s.topic == "runs.dlq"]
    headers = dict(sent.headers)
    assert sent.key == RUN.encode()
    assert headers["runstream-source-timestamp"] == b"1764292658123"
    assert headers["trace"] == b"1"
    assert headers["runstream-error"] == b"unknown_type"


async def test_a_truncated_dead_letter_keeps_the_key_too() -> None:
    log = FakeLog()
    box = Outbox(log, source_topic="e", phases_topic="p", dlq_topic="d", partition=0)
    from partition.materializer import DeadLetter

    dl = DeadLetter(reason="oversize", message="big", offset=4, raw=b"x" * (100 << 10))
    log.max_value = 70 << 10  # too large for the dead-letter topic: its first 64 KiB are sent
    await box.dead_letter(dl, None, key=b"k", timestamp_ms=None)
    (sent,) = log.sent
    assert sent.key == b"k"
    assert len(sent.value) == 64 << 10
    assert "runstream-source-timestamp" not in dict(sent.headers)


# ------------------------------------------------------------------- creation requests
REQUEST = {
    "request_id": "ci-1",
    "name": "build",
    "group": "/project/p1/branch/main",
    "tasks": [{"id": "a", "name": "a"}],
}


def test_a_request_becomes_a_run_created_with_its_run_id() -> None:
    creation = read_request(orjson.dumps({**REQUEST, "at": 5}))
    event = creation.event(RUN, 99)
    assert (event.type, event.id, event.run_id, event.at) == (
        EventType.RUN_CREATED,
        f"{RUN}.created",
        RUN,
        5,
    )
    assert creation.etcd_key.endswith("/ci-1")
    assert read_request(orjson.dumps(REQUEST)).event(RUN, 99).at == 99


@pytest.mark.parametrize(
    ("doc", "reason", "request_id"),
    [
        ({**REQUEST, "tasks": []}, BAD_REQUEST, "ci-1"),
        ({**REQUEST, "group": "/project/../x"}, BAD_REQUEST, "ci-1"),
        ({**REQUEST, "tasks": [{"id": "a"}]}, "schema", "ci-1"),
        ({**REQUEST, "surprise": 1}, "schema", "ci-1"),
        ({**REQUEST, "request_id": "has space"}, "schema", None),
        ({k: v for k, v in REQUEST.items() if k != "request_id"}, "schema", None),
    ],
)
def test_a_bad_request_is_refused_naming_its_request_id(
    doc: dict[str, object], reason: str, request_id: str | None
) -> None:
    with pytest.raises(Refused) as info:
        read_request(orjson.dumps(doc))
    assert (info.value.reason, info.value.request_id) == (reason, request_id)


def test_an_unreadable_request_has_no_request_id() -> None:
    with pytest.raises(Refused) as info:
        read_request(b"{not json")
    assert (info.value.reason, info.value.request_id) == ("invalid_json", None)


def test_a_report_uses_its_id_else_the_fallback() -> None:
    report = {"group": "/project/p/branch/b", "errors": [{"message": "bad yaml"}]}
    assert read_report(orjson.dumps({**report, "id": "h1"}), fallback_id="t/0/1").request_id == "h1"
    c = read_report(orjson.dumps(report), fallback_id="t/0/1")
    assert c.request_id == "t/0/1"
    assert c.event(RUN, 1).id == f"{RUN}.reported"
    with pytest.raises(Refused) as info:
        read_report(orjson.dumps({**report, "errors": []}), fallback_id="t/0/2")
    assert (info.value.reason, info.value.request_id) == (BAD_REQUEST, "t/0/2")
