"""The index's size, read in steps: ``memory_parts`` sums to ``memory_bytes`` whatever the step,
each part walks at most a step's worth, and the worker's follower lets its event loop run
between two parts (``agents.indexing.IndexFollower._size``)."""

from __future__ import annotations

import pytest

from agents import indexing, metrics
from agents.config import Settings
from agents.indexing import IndexFollower
from events import Phase, Result
from indexer import RunIndex
from indexer.dump import decode, encode, snapshot
from partition.slices import Slices
from tests.loop_turns import turns_during


def _index(runs: int = 300, groups: int = 40) -> RunIndex:
    ix = RunIndex()
    for i in range(1, runs + 1):
        group = f"/project/p{i % groups}/branch/b{i % 7}"
        ix.apply(i, group, Phase.QUEUED, Result.UNKNOWN, 1, name=f"build-{i % 11}", counter=i)
        if i % 3:
            ix.apply(i, group, Phase.RUNNING, Result.UNKNOWN, 2)
    return ix


@pytest.mark.parametrize("chunk", [1, 7, 64, 100_000])
def test_the_parts_sum_to_the_whole_whatever_the_step(chunk: int) -> None:
    ix = _index()
    assert sum(ix.memory_parts(chunk)) == ix.memory_bytes() > 0
    assert sum(ix.groups.memory_parts(chunk)) == ix.groups.memory_bytes() > 0
    assert sum(ix.names.memory_parts(chunk)) == ix.names.memory_bytes() > 0


def test_a_loaded_index_counts_its_shared_buffers_once_in_parts_too() -> None:
    ix = _index()
    loaded, _ = decode(encode(snapshot(ix)))  # its posting lists are views of one array
    assert any(p.buf.base is not None for p in loaded.postings[1:])
    assert sum(loaded.memory_parts(3)) == loaded.memory_bytes()


def test_each_part_walks_at_most_a_step() -> None:
    ix = _index(runs=300, groups=40)
    names = len(ix.names) + 1  # with the placeholder of nid 0
    # one fixed part, then a part per `chunk` names
    assert len(list(ix.names.memory_parts(10))) == 1 + -(-names // 10)
    groups = len(ix.groups) + 1
    keys = len(ix.groups)
    assert len(list(ix.groups.memory_parts(10))) == 1 + -(-groups // 10) + -(-keys // 10)
    postings = len(ix.postings)
    # fixed, postings in steps, shared buffers, then the groups' and the names' parts
    expected = 1 + -(-postings // 10) + 1 + 1 + -(-groups // 10) + -(-keys // 10) + 1 + -(-names // 10)  # fmt: skip
    assert len(list(ix.memory_parts(10))) == expected


async def test_the_follower_sizes_the_index_in_turns_of_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    ix = _index()
    follower = IndexFollower(Settings(topic_phases="x.phases"), ix)
    monkeypatch.setattr(indexing, "INDEX_BYTES_CHUNK", 5)
    monkeypatch.setattr(indexing, "Slices", lambda: Slices(0.0))  # hand back at every part
    parts = len(list(ix.memory_parts(5)))
    _, turns = await turns_during(follower._size())
    assert metrics.INDEX_BYTES._value.get() == ix.memory_bytes()
    assert turns >= parts - 1  # other work ran between the parts, not after the whole walk
