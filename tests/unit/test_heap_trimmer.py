"""``agents.runtime.HeapTrimmer``: the worker gives freed heap pages back after runs went cold,
at most every ``every`` seconds, and only when some did."""

from __future__ import annotations

import sys

import pytest

from agents.runtime import HeapTrimmer, _malloc_trim


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_glibc_has_malloc_trim() -> None:
    trim = _malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)


async def test_trims_only_after_runs_went_cold_and_at_most_every_period() -> None:
    clock = Clock()
    heap = HeapTrimmer(every=5.0, clock=clock)
    calls: list[int] = []
    heap._trim = lambda pad: calls.append(pad) or 1  # type: ignore[assignment,func-returns-value]
    clock.now += 10
    await heap.after_cooling(0)
    assert calls == []  # nothing went cold: nothing to give back
    await heap.after_cooling(3)
    assert calls == [0]
    clock.now += 1
    await heap.after_cooling(5)
    assert calls == [0]  # too soon; remembered
    clock.now += 4
    await heap.after_cooling(0)
    assert calls == [0, 0]  # the runs that went cold meanwhile are given back now
    clock.now += 10
    await heap.after_cooling(0)
    assert calls == [0, 0]
    assert heap.trims == 2


async def test_does_nothing_without_malloc_trim() -> None:
    clock = Clock()
    heap = HeapTrimmer(every=0.0, clock=clock)
    heap._trim = None
    await heap.after_cooling(10)
    assert heap.trims == 0
