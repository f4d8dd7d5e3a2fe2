"""The stuck gauges' scan (``agents.materializer_service.MaterializerService._count_stuck``):
every owned, serving partition's parts summed, the event loop handed back between parts, a
partition revoked meanwhile skipped."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from agents import materializer_service, metrics
from agents.config import Settings
from agents.materializer_service import MaterializerService
from partition.owner import NotServing
from partition.slices import Slices
from tests.loop_turns import turns_during


class _Owner:
    def __init__(self, parts: list[tuple[int, int]], *, serving: bool = True, revoked: bool = False) -> None:  # fmt: skip
        self.parts = parts
        self.serving = serving
        self.revoked = revoked
        self.asked: list[tuple[int, int]] = []

    def stuck_count_parts(self, older_than_ms: int, chunk: int) -> Iterator[tuple[int, int]]:
        self.asked.append((older_than_ms, chunk))
        if self.revoked:
            raise NotServing("revoked")
        yield from self.parts


async def test_the_scan_sums_the_serving_partitions_and_hands_the_loop_back(monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(
        materializer_service, "Slices", lambda: Slices(0.0)
    )  # hand back at every part
    owners = {
        0: _Owner([(1, 2), (3, 1), (0, 0)]),
        1: _Owner([(5, 5)], serving=False),  # loading: not counted
        2: _Owner([(7, 7)], revoked=True),  # revoked between the check and the scan
        3: _Owner([(2, 4)]),
    }
    service = SimpleNamespace(owned=owners, settings=Settings(stuck_after=90))
    _, turns = await turns_during(MaterializerService._count_stuck(service))  # type: ignore[arg-type]
    assert metrics.STUCK_RUNS._value.get() == 6
    assert metrics.STUCK_TASKS._value.get() == 7
    assert owners[0].asked == [(90_000, materializer_service.STUCK_PART)]
    assert owners[1].asked == []
    assert turns >= 3  # the loop ran between the parts (4 parts: 3 of partition 0, 1 of 3)
