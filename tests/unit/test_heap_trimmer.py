"""``agents.runtime``: the worker gives freed heap pages back after runs went cold (at most every
``every`` seconds) and whenever its resident set grew by ``growth`` since the last time; one heap
for every thread."""

from __future__ import annotations

import sys

import pytest

from agents.runtime import (
    TRIM_GROWTH_GAP,
    HeapTrimmer,
    _malloc_trim,
    resident_bytes,
    tune_malloc,
)

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc, /proc")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Resident:
    def __init__(self) -> None:
        self.bytes = 100 << 20

    def __call__(self) -> int:
        return self.bytes


def trimmer(every: float = 5.0, growth: int = 32 << 20) -> tuple[HeapTrimmer, Clock, Resident, list[int]]:  # fmt: skip
    clock, resident, calls = Clock(), Resident(), []
    heap = HeapTrimmer(every=every, growth=growth, clock=clock, resident=resident)
    heap._trim = lambda pad: calls.append(pad) or 1  # type: ignore[assignment,func-returns-value]
    return heap, clock, resident, calls


@linux
def test_glibc_has_malloc_trim_and_proc_gives_the_resident_set() -> None:
    trim = _malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)
    assert resident_bytes() > 1 << 20
    assert tune_malloc()  # glibc took both settings


async def test_trims_after_runs_went_cold_at_most_every_period() -> None:
    heap, clock, _, calls = trimmer()
    clock.now += 10
    await heap.tick(0)
    assert calls == []  # nothing went cold, nothing grew: nothing to give back
    await heap.tick(3)
    assert calls == [0]
    clock.now += 1
    await heap.tick(5)
    assert calls == [0]  # too soon; remembered
    clock.now += 4
    await heap.tick(0)
    assert calls == [0, 0]  # the runs that went cold meanwhile are given back now
    clock.now += 10
    await heap.tick(0)
    assert calls == [0, 0]
    assert heap.trims == 2


async def test_trims_when_the_resident_set_grew_whatever_went_cold() -> None:
    heap, clock, resident, calls = trimmer(growth=32 << 20)

    def trim(pad: int) -> int:
        calls.append(pad)
        resident.bytes -= 20 << 20  # what the trim gives back
        return 1

    heap._trim = trim
    clock.now += 2
    resident.bytes += 31 << 20
    await heap.tick(0)
    assert calls == []
    resident.bytes += 1 << 20  # 32 MiB more than at the start
    await heap.tick(0)
    assert calls == [0]
    clock.now += 2
    resident.bytes += 31 << 20  # measured from what was left after the trim
    await heap.tick(0)
    assert calls == [0]
    resident.bytes += 1 << 20
    await heap.tick(0)
    assert calls == [0, 0]


async def test_growth_trims_are_a_gap_apart() -> None:
    heap, clock, resident, calls = trimmer(growth=8 << 20)
    clock.now += 2
    resident.bytes += 8 << 20
    await heap.tick(0)
    assert calls == [0]  # the trim gave nothing back: the set is as large as before
    resident.bytes += 8 << 20
    clock.now += TRIM_GROWTH_GAP / 2
    await heap.tick(0)
    assert calls == [0]  # grown again, but too soon after the last trim
    clock.now += TRIM_GROWTH_GAP / 2
    await heap.tick(0)
    assert calls == [0, 0]


async def test_does_nothing_without_malloc_trim() -> None:
    heap, _, resident, _ = trimmer(every=0.0)
    heap._trim = None
    resident.bytes += 1 << 30
    await heap.tick(10)
    assert heap.trims == 0
