"""A run's history (``partition.history``): every event judged for the run, in log order, with its
outcome — stored with the checkpoints, so a restart keeps it and a read sees what is not
checkpointed yet; equal to the oracle's."""

from __future__ import annotations

import asyncio

import pytest

from events import (
    Event,
    StartRequested,
    StopRequested,
    TaskStatus,
    TaskStatusChanged,
    encode,
)
from partition.history import HISTORY, HistoryEntry, decode_history, stored_history
from tests import oracle
from tests.unit.test_events_support import ev
from tests.unit.test_owner import NAME, Rig, rid, script

pytestmark = pytest.mark.timeout(30)


def plain(entries: list[HistoryEntry] | None) -> list[tuple[str, str, str, str, int | None]]:
    assert entries is not None
    return [(e.event_id, e.type, str(e.outcome), e.reason, e.seq) for e in entries]


async def stored_of(rig: Rig, run_id: str) -> list[HistoryEntry]:
    """What the checkpoints stored of the run's history, read as a fresh owner would."""
    return await stored_history(await rig.dm.open_partition(NAME), run_id)


def workload() -> list[Event]:
    """Two runs: one finished, then a late event refused; one active with a duplicate and a
    refusal; and an event for a run that never existed."""
    one, two = script(1), script(2)
    return [
        *one[:2],
        two[0],
        one[2],
        two[1],
        two[1],  # a redelivery: duplicate
        ev(TaskStatusChanged(task_id="zz", status=TaskStatus.RUNNING), run_id=rid(2)),  # refused
        one[3],  # run 1 finishes
        ev(StopRequested(), run_id=rid(1)),  # refused: run is final
        ev(StartRequested(), run_id=rid(9)),  # no such run: nobody's history
        two[2],
    ]


async def test_history_after_a_checkpoint_and_a_restart_equals_the_oracles() -> None:
    events = workload()
    want = oracle.history(events)
    assert {r: [o for _, _, o, _, _ in h] for r, h in want.items()} == {
        rid(1): ["applied"] * 4 + ["refused"],
        rid(2): ["applied", "applied", "duplicate", "refused", "applied"],
    }
    rig = Rig()
    await rig.owner.load()
    half = 6
    rig.append(*events[:3])  # a commit of three events, then single events
    for e in events[3:half]:
        rig.append(e)
    await rig.feed()
    assert await rig.owner.checkpoint() == "ok"
    for e in events[half:]:
        rig.append(e)
    await rig.feed()
    for run in (rid(1), rid(2)):  # the tail is only in memory
        assert plain(await rig.owner.history(run)) == want[run]
    assert await rig.owner.history(rid(9)) is None

    # A restart from the checkpoint: the tail is applied again, recorded once.
    again = rig.new_owner()
    await again.load()
    rig.fed = 0
    await rig.feed(again)
    for run in (rid(1), rid(2)):
        got = await again.history(run)
        assert plain(got) == want[run]
        assert got is not None
        positions = [(e.offset, e.index) for e in got]
        assert positions == sorted(set(positions))
    assert await again.checkpoint() == "ok"
    stored = await stored_of(rig, rid(1))
    assert plain(stored) == want[rid(1)]
    # The first three events were one record: offsets 0, indexes 0..2.
    first = await again.history(rid(1))
    assert first is not None
    assert [(e.offset, e.index) for e in first[:2]] == [(0, 0), (0, 1)]


async def test_a_read_during_a_checkpoint_sees_every_event_once() -> None:
    rig = Rig()
    await rig.owner.load()
    events = script(3)
    for e in events[:2]:
        rig.append(e)
    await rig.feed()
    assert await rig.owner.checkpoint() == "ok"
    rig.append(events[2])
    await rig.feed()
    rig.dm.gate = asyncio.Event()
    task = rig.owner.maybe_checkpoint()
    assert task is not None
    await rig.dm.entered.wait()
    rig.append(events[3])
    await rig.feed()
    want = oracle.history(events)[rid(3)]
    assert plain(await rig.owner.history(rid(3))) == want  # snapshot in flight + pending
    rig.dm.gate.set()
    assert await task == "ok"
    assert plain(await rig.owner.history(rid(3))) == want


async def test_a_failed_checkpoint_keeps_the_entries_for_the_next() -> None:
    from tests.fakes_owner import storage_down

    rig = Rig()
    await rig.owner.load()
    events = script(4)
    for e in events[:2]:
        rig.append(e)
    await rig.feed()
    rig.dm.fail_next = storage_down()
    assert await rig.owner.checkpoint() == "failed"
    for e in events[2:]:
        rig.append(e)
    await rig.feed()
    assert await rig.owner.checkpoint() == "ok"
    stored = await stored_of(rig, rid(4))
    assert plain(stored) == oracle.history(events)[rid(4)]


async def test_a_late_event_for_a_finished_run_appends_to_its_stored_history() -> None:
    rig = Rig()
    await rig.owner.load()
    events = script(5)
    for e in events:
        rig.append(e)
    await rig.feed()
    assert await rig.owner.checkpoint() == "ok"
    # A fresh owner knows nothing of run 5 but its final id: the late refusal is appended to
    # the stored history as a chunk of its own, without reading it back.
    again = rig.new_owner()
    await again.load()
    late = ev(StopRequested(), run_id=rid(5))
    rig.log.append("runs.events", 0, encode(late))
    await rig.feed(again)
    assert await again.checkpoint() == "ok"
    stored = await stored_of(rig, rid(5))
    assert plain(stored) == oracle.history([*events, late])[rid(5)]
    assert plain(await again.history(rid(5)))[-1][2:4] == ("refused", "run is final")


async def test_a_checkpoint_appends_only_the_new_entries_of_a_run() -> None:
    rig = Rig()
    await rig.owner.load()
    events = script(6)
    for e in events[:2]:
        rig.append(e)
    await rig.feed()
    assert await rig.owner.checkpoint() == "ok"
    for e in events[2:]:
        rig.append(e)
    await rig.feed()
    assert await rig.owner.checkpoint() == "ok"
    first, second = (call.appends.get(HISTORY, {}) for call in rig.dm.calls)
    assert HISTORY not in rig.dm.calls[1].puts  # the history is never rewritten...
    # ...each checkpoint appends one chunk of the run: the entries it did not store before.
    assert [len(decode_history(v)) for v in first.values()] == [2]
    assert [len(decode_history(v)) for v in second.values()] == [len(events) - 2]
    assert set(first).isdisjoint(second)
    want = oracle.history(events)[rid(6)]
    assert plain(await stored_of(rig, rid(6))) == want
    assert plain(await rig.owner.history(rid(6))) == want
