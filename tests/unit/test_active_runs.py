"""The active runs of a partition (partition/active.py): runs that went still are held as
compressed bytes and come back unchanged; what changed recently stays an object."""

from __future__ import annotations

from typing import Any

import pytest
import zstandard

from events.advance import GRAPHS, graph_of
from events.catalogue import StartRequested, TaskClaimed, TaskStatusChanged
from events.codec import encode_state
from events.ids import format_run_id
from events.model import TaskStatus
from events.reducer import Applied, apply
from events.state import RunState
from partition.active import ActiveRuns, _dictionary_of
from partition.decisions import last_progress, stuck
from tests.unit.test_events_support import created, ev, task


def running(n: int) -> RunState:
    """Run ``n`` with its task ``a`` running, its last progress at ``1000 * n`` ms."""
    return _run(n, TaskStatusChanged(task_id="a", status=TaskStatus.RUNNING))


def claimed(n: int) -> RunState:
    """Run ``n`` with its task ``a`` held by an executor (not running yet)."""
    return _run(n, TaskClaimed(task_id="a", executor_id="e1", lease_ms=60_000))


def _run(n: int, last: Any) -> RunState:
    rid = format_run_id(n)
    state = None
    for i, data in enumerate([created(task("a"), task("b", "a")), StartRequested(), last]):
        result = apply(state, ev(data, run_id=rid, id=f"{rid}.{i}", at=1000 * n))
        assert isinstance(result, Applied), result
        state = result.state
    assert state is not None
    return state


async def test_still_runs_go_cold_and_come_back_equal() -> None:
    states = {s.run.id: s for s in (running(n) for n in range(1, 6))}
    active = ActiveRuns(states, cold_after=2.0, tick=1.0)
    assert await active.cool() == 0  # one tick: not still long enough
    assert await active.cool() == 5
    assert active.hot == 0
    assert len(active) == 5
    assert set(active) == set(states)
    for rid, state in states.items():
        back = active[rid]
        assert back == state
        assert encode_state(back) == encode_state(state)
    assert active.hot == 5


async def test_a_change_keeps_a_run_hot_and_the_rest_go() -> None:
    a, b = running(1), running(2)
    active = ActiveRuns({a.run.id: a, b.run.id: b}, cold_after=2.0, tick=1.0)
    await active.cool()
    active[a.run.id] = a  # changed in the second tick
    assert await active.cool() == 1  # b went, a changed one tick ago
    assert active.hot == 1
    assert a.run.id in active
    assert b.run.id in active
    assert await active.cool() == 1  # then a, once still for two ticks
    assert active.hot == 0


async def test_at_most_hot_max_objects() -> None:
    states = {s.run.id: s for s in (running(n) for n in range(1, 11))}
    active = ActiveRuns(states, cold_after=100.0, hot_max=3)
    assert await active.cool() == 7
    assert active.hot == 3
    assert list(active)[:3] == list(states)[-3:]  # the least recently changed went first


async def test_pop_and_delete_reach_cold_runs() -> None:
    a, b = running(1), running(2)
    active = ActiveRuns({a.run.id: a, b.run.id: b}, cold_after=1.0)
    await active.cool()
    assert active.pop(a.run.id) == a
    del active[b.run.id]
    assert len(active) == 0
    assert active.get(a.run.id) is None
    with pytest.raises(KeyError):
        active[b.run.id]


async def test_quiet_since_finds_cold_runs_by_their_progress_without_waking_the_rest() -> None:
    states = {s.run.id: s for s in (running(n) for n in range(1, 5))}
    active = ActiveRuns(states, cold_after=1.0)
    await active.cool()
    cut = last_progress(states[running(2).run.id])
    quiet = active.quiet_since(cut)
    assert sorted(s.run.id for s in quiet) == sorted(s.run.id for s in (running(1), running(2)))
    assert active.hot == 0  # reading them for the count does not make them hot


async def test_the_stuck_count_reads_no_cold_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the stuck gauges read every few seconds: the same runs and tasks ``stuck`` lists,
    from the bytes' head alone, hot runs and cold ones alike."""
    states = {s.run.id: s for s in (running(n) for n in range(1, 9))}
    states[format_run_id(9)] = claimed(9)
    active = ActiveRuns(states, cold_after=1.0)
    await active.cool()
    active[running(8).run.id] = running(8)  # one hot run among the cold ones
    assert active.hot == 1
    monkeypatch.setattr(ActiveRuns, "_unpack", _no_decoding)
    for cut in (0, 3000, 8000, 9000, 10**13):
        found = stuck(list(states.values()), cut, 0)
        assert active.quiet_count(cut) == (len(found), sum(len(s.tasks) for s in found))
    assert active.quiet_count(9000) == (9, 9)  # a running task each, and run 9's held one
    assert active.hot == 1


@pytest.mark.parametrize("chunk", [1, 2, 3, 100])
async def test_the_stuck_count_in_parts_sums_to_the_whole(chunk: int) -> None:
    """The gauges' scan in parts (``quiet_count_parts``): each part looks at ``chunk`` runs at
    most, hot and cold ones apart, and the parts add up to ``quiet_count``."""
    states = {s.run.id: s for s in (running(n) for n in range(1, 9))}
    states[format_run_id(9)] = claimed(9)
    active = ActiveRuns(states, cold_after=1.0)
    await active.cool()
    active[running(8).run.id] = running(8)
    active[running(7).run.id] = running(7)
    assert active.hot == 2
    for cut in (0, 3000, 7000, 10**13):
        parts = list(active.quiet_count_parts(cut, chunk))
        assert len(parts) == -(-2 // chunk) + -(-7 // chunk)
        assert (sum(r for r, _ in parts), sum(t for _, t in parts)) == active.quiet_count(cut)
    assert active.quiet_count(10**13) == (9, 9)


async def test_the_stuck_count_in_parts_counts_the_runs_of_when_it_began() -> None:
    """A run that comes or goes between two parts changes nothing in a scan begun before: the
    records apply between the parts, and the dictionaries change under it."""
    states = {s.run.id: s for s in (running(n) for n in range(1, 5))}
    active = ActiveRuns(states, cold_after=1.0)
    await active.cool()
    parts = active.quiet_count_parts(10**13, 1)
    first = next(parts)
    del active[running(1).run.id]
    active[running(5).run.id] = running(5)
    assert (first[0] + sum(r for r, _ in parts)) == 4


def _no_decoding(self: ActiveRuns, raw: bytes) -> RunState:
    raise AssertionError("a cold run was decoded")


async def test_a_cold_run_lets_go_of_its_graph() -> None:
    a = running(1)
    graph_of(a.config)
    assert a.run.id in GRAPHS
    active = ActiveRuns({a.run.id: a}, cold_after=1.0)
    await active.cool()
    assert a.run.id not in GRAPHS


def _framed_with_dictionary(active: ActiveRuns) -> list[bool]:
    return [bool(_dictionary_of(raw)) for raw in active._cold.values()]


async def test_runs_that_went_cold_train_a_dictionary_and_every_run_comes_back_equal() -> None:
    states = {s.run.id: s for s in (running(n) for n in range(1, 41))}
    first = dict(list(states.items())[:30])
    active = ActiveRuns(first, cold_after=1.0, train_after=30)
    alone = {rid: len(zstandard.ZstdCompressor(level=1).compress(encode_state(s))) for rid, s in first.items()}  # fmt: skip
    assert active.dictionary == 0
    assert await active.cool() == 30  # the 30th sample trains the dictionary
    assert active.dictionary != 0
    # The runs compressed before it were compressed again with it, and are smaller.
    assert _framed_with_dictionary(active) == [True] * 30
    sizes = {rid: len(raw) - 8 for rid, raw in active._cold.items()}
    assert sum(sizes.values()) < sum(alone.values()) / 2, (sizes, alone)
    # Runs going cold now use it; every run decodes to what it was.
    for rid, state in list(states.items())[30:]:
        active[rid] = state
    await active.cool()
    await active.cool()
    assert active.hot == 0
    assert _framed_with_dictionary(active) == [True] * 40
    for rid, state in states.items():
        assert encode_state(active[rid]) == encode_state(state)
    assert sorted(s.run.id for s in active.quiet_since(10**12)) == sorted(states)


async def test_a_run_decoded_before_the_dictionary_is_compressed_with_it_when_it_cools_again() -> (
    None
):
    states = {s.run.id: s for s in (running(n) for n in range(1, 31))}
    active = ActiveRuns(states, cold_after=1.0, train_after=29)
    one = next(iter(states))
    # 29 go cold first (samples), one stays hot: it went cold, was read (hot, unchanged) ...
    active._samples = None  # no training yet: every run is compressed alone
    await active.cool()
    assert _framed_with_dictionary(active) == [False] * 30
    assert active[one] == states[one]  # decoded: hot, its plain bytes kept for reuse
    active._samples = [encode_state(s) for s in states.values()]
    await active._train()
    assert active.dictionary != 0
    await active.cool()
    await active.cool()  # ... and goes cold again: compressed with the dictionary, not reused
    assert active.hot == 0
    assert _framed_with_dictionary(active) == [True] * 30
    assert encode_state(active[one]) == encode_state(states[one])


async def test_a_dictionary_that_cannot_be_trained_leaves_runs_compressed_alone() -> None:
    states = {s.run.id: s for s in (running(n) for n in range(1, 3))}
    active = ActiveRuns(states, cold_after=1.0, train_after=2)  # two samples: zstd refuses
    assert await active.cool() == 2
    assert active.dictionary == 0
    assert _framed_with_dictionary(active) == [False, False]
    for rid, state in states.items():
        assert active[rid] == state
