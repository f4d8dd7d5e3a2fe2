"""A checkpoint encodes the final ids away from the event loop (partition/finals.py): what it
writes is the set as it was when the snapshot was taken, and ids added meanwhile are kept."""

from __future__ import annotations

import asyncio

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from partition.finals import FinalIds
from partition.slices import Slices


def test_frozen_ids_encode_as_the_set_did_when_frozen() -> None:
    live = FinalIds(np.array([3, 10, 42], dtype=np.int64))
    live.add(7)
    live.add(99)
    frozen = live.freeze()
    live.add(5)  # finished while the checkpoint is written
    raw, merged = frozen.encode()
    same = FinalIds(np.array([3, 10, 42], dtype=np.int64))
    same.add(7)
    same.add(99)
    assert raw == same.to_bytes()
    assert merged.tolist() == [3, 7, 10, 42, 99]
    assert FinalIds.from_bytes(raw).bounds() == (3, 99)
    live.merged(frozen, merged)
    assert len(live) == 6
    assert all(i in live for i in (3, 5, 7, 10, 42, 99))
    assert live.to_bytes() == FinalIds(np.array([3, 5, 7, 10, 42, 99], dtype=np.int64)).to_bytes()


def test_a_stale_merge_is_ignored() -> None:
    live = FinalIds()
    live.add(1)
    first = live.freeze()
    live.to_bytes()  # compacted meanwhile by someone else: the frozen array is no longer live
    live.add(2)
    live.merged(first, first.encode()[1])
    assert sorted(i for i in (1, 2) if i in live) == [1, 2]
    assert len(live) == 2


async def test_slices_hand_the_loop_back_once_their_time_is_used() -> None:
    ran: list[int] = []

    async def other() -> None:
        ran.append(len(done))

    done: list[int] = []
    slices = Slices(budget=0.0)  # every step is a slice's end
    task = asyncio.ensure_future(other())
    for i in range(3):
        done.append(i)
        await slices.step()
    await task
    assert ran == [1]  # it ran after the first unit of work, not after all three


@given(
    st.lists(
        st.tuples(st.sampled_from(["add", "compact", "freeze", "merge"]), st.integers(1, 60)),
        max_size=60,
    ),
    st.lists(st.integers(1, 60), max_size=20),
)
def test_membership_is_a_sets_whatever_the_order_of_adds_merges_and_compactions(
    ops: list[tuple[str, int]], initial: list[int]
) -> None:
    # Ids both below and above the highest stored one are asked after every step (the highest
    # is what answers most asks without a binary search).
    ids = FinalIds(np.array(sorted(set(initial)), dtype=np.int64))
    model = set(initial)
    frozen = None
    for op, run_id in ops:
        if op == "add":
            ids.add(run_id)
            model.add(run_id)
        elif op == "compact":
            ids.compact()
        elif op == "freeze":
            frozen = ids.freeze()
        elif frozen is not None:  # merge what was frozen, as a checkpoint does
            ids.merged(frozen, frozen.encode()[1])
            frozen = None
        assert [i for i in range(0, 62) if i in ids] == sorted(model)
