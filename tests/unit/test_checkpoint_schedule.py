"""The partitions of a worker take turns to checkpoint (partition/owner.py): each has its own
slot in the interval, so they never all snapshot and encode at the same instant."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

from partition.owner import PartitionOwner
from tests.fakes_owner import FakeDatamanager, FakeHooks, FakeLog
from tests.unit.test_owner import CONFIG

INTERVAL = 5.0


def owner(partition: int, now: list[float]) -> PartitionOwner:
    log = FakeLog()
    return PartitionOwner(
        partition,
        config=replace(CONFIG, checkpoint_interval=INTERVAL),
        datamanager=FakeDatamanager(),
        reader=log,
        sender=log,
        hooks=FakeHooks(),
        clock=lambda: now[0],
    )


def test_partitions_checkpoint_at_different_times_in_the_interval() -> None:
    now = [1000.0]
    due = sorted(owner(p, now).next_checkpoint for p in range(8))
    assert all(1000.0 <= t < 1000.0 + INTERVAL for t in due)
    gaps = [b - a for a, b in pairwise(due)]
    assert min(gaps) > INTERVAL / 20  # spread out, not bunched


def test_each_partition_keeps_its_slot() -> None:
    now = [1000.0]
    first = owner(3, now).next_checkpoint
    now[0] = 1234.56
    later = owner(3, now).next_checkpoint
    assert 1234.56 <= later < 1234.56 + INTERVAL
    assert abs(((later - first) / INTERVAL) - round((later - first) / INTERVAL)) < 1e-9
