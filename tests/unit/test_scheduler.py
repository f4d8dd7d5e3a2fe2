"""The scheduler: the pure plan, and the tick against an in-memory etcd and run index.

The property test runs two schedulers of the same groups at once (the worst case: a zombie and
the new owner), each deciding from its own lagging view of the phases, and checks that no group
ever has more than N running runs and that every queued run starts once the views catch up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from agents import keys
from agents.scheduler import GroupView, Scheduler, Slots, plan, start_event_id
from events import Phase, Result, format_run_id, parse_run_id
from events.catalogue import Event, StartRequested
from indexer import RunIndex
from tests.fakes_kv import MemoryKv

Q, R, F, C = Phase.QUEUED, Phase.RUNNING, Phase.FINISHED, Phase.CANCELLED
G1 = "/project/p/branch/feature"
G2 = "/project/p/branch/feature02"
PARTITIONS = 3


def view(phases: dict[int, Phase | None], slots: Sequence[int] = (), group: str = G1) -> GroupView:
    return GroupView(group=group, phases=phases, slots=frozenset(slots))


# ------------------------------------------------------------------------------ plan (pure)
def test_the_oldest_queued_run_starts_when_nothing_runs() -> None:
    p = plan(view({7: Q, 3: Q, 5: Q}), 1)
    assert p.new == (3,)
    assert p.starts == (3,)
    assert p.slots == {3}


def test_nothing_starts_while_a_slot_holder_runs() -> None:
    p = plan(view({3: R, 5: Q}, slots=[3]), 1)
    assert p.new == ()
    assert p.starts == ()
    assert p.slots == {3}
    assert not p.changed(view({3: R, 5: Q}, slots=[3]))


def test_a_finished_slot_holder_frees_its_slot_for_the_next_oldest() -> None:
    for final in (F, C, Phase.SETUPERROR):
        p = plan(view({3: final, 5: Q, 9: Q}, slots=[3]), 1)
        assert p.new == (5,)
        assert p.slots == {5}


def test_n_runs_start_together_and_the_cap_counts_manual_starts() -> None:
    assert plan(view({1: Q, 2: Q, 3: Q, 4: Q}), 3).new == (1, 2, 3)
    # Run 8 was started by hand (no slot): it takes one of the two places.
    p = plan(view({8: R, 1: Q, 2: Q}), 2)
    assert p.new == (1,)
    assert plan(view({8: R, 9: R, 1: Q}), 2).new == ()


def test_a_slot_holder_not_seen_running_yet_gets_its_start_again() -> None:
    # Granted by an earlier tick (perhaps of another worker); the view still says queued, or has
    # not seen the run at all: the same start again (the owner ignores the duplicate id).
    p = plan(view({3: Q, 5: Q}, slots=[3]), 1)
    assert p.new == ()
    assert p.starts == (3,)
    p = plan(view({5: Q, 3: None}, slots=[3]), 1)
    assert p.new == ()
    assert p.starts == (3,)
    assert p.slots == {3}


def test_a_lower_cap_than_the_holders_starts_nothing_and_keeps_them() -> None:
    p = plan(view({1: R, 2: R, 3: Q}, slots=[1, 2]), 1)
    assert p.new == ()
    assert p.slots == {1, 2}


def test_the_start_id_is_deterministic() -> None:
    rid = format_run_id(42)
    assert start_event_id(rid) == start_event_id(rid) == f"sched.{rid}.start"


# ------------------------------------------------------------------------------ the tick
@dataclass
class World:
    """The truth: each run's phase, and the phase changes in the order they happened."""

    phases: dict[int, tuple[str, Phase, int]] = field(
        default_factory=dict
    )  # id → group, phase, seq
    #: Per partition of ``runs.phases`` (run id % PARTITIONS), the phase changes in order.
    history: list[list[tuple[int, str, Phase, int]]] = field(
        default_factory=lambda: [[] for _ in range(PARTITIONS)]
    )
    start_ids: list[str] = field(default_factory=list)

    def change(self, run_id: int, group: str, phase: Phase) -> None:
        seq = self.phases[run_id][2] + 1 if run_id in self.phases else 1
        self.phases[run_id] = (group, phase, seq)
        self.history[run_id % PARTITIONS].append((run_id, group, phase, seq))

    async def send(self, events: Sequence[Event]) -> None:
        for e in events:
            assert isinstance(e.data, StartRequested)
            self.start_ids.append(e.id)
            rid = parse_run_id(e.run_id)
            group, phase, _ = self.phases[rid]
            if phase is Q:  # the reducer: only a queued run starts; anything else changes nothing
                self.change(rid, group, R)

    def running(self, group: str) -> int:
        return sum(1 for g, p, _ in self.phases.values() if g == group and p is R)


class Viewer:
    """A scheduler's index, fed with each partition's history up to ``seen[partition]``: the
    partitions lag independently, as the index's consumer reads them."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.index = RunIndex()
        self.seen = [0] * PARTITIONS

    def catch_up(self, partition: int | None = None, by: int | None = None) -> None:
        for p in range(PARTITIONS) if partition is None else (partition,):
            log = self.world.history[p]
            end = len(log) if by is None else min(self.seen[p] + by, len(log))
            for rid, group, phase, seq in log[self.seen[p] : end]:
                self.index.apply(rid, group, phase, Result.UNKNOWN, seq)
            self.seen[p] = max(self.seen[p], end)


def scheduler(world: World, viewer: Viewer, kv: MemoryKv, n: int, groups: set[str]) -> Scheduler:
    return Scheduler(
        index=lambda: viewer.index,
        kv=kv,
        send=world.send,
        mine=lambda g: g in groups,
        format_id=format_run_id,
        max_running=n,
    )


def test_a_tick_starts_per_full_group_path_and_stores_the_slots() -> None:
    async def go() -> None:
        world, kv = World(), MemoryKv()
        for rid, g in ((1, G1), (2, G2), (3, G1), (4, G2)):
            world.change(rid, g, Q)
        viewer = Viewer(world)
        viewer.catch_up()
        s = scheduler(world, viewer, kv, 1, {G1, G2})
        report = await s.once()
        # feature02 is not blocked by feature: each group starts its oldest run.
        assert sorted(report.started) == [format_run_id(1), format_run_id(2)]
        stored = await kv.get(keys.scheduler_slots_key(G1))
        assert stored is not None
        assert Slots.decode(stored).runs == {1}
        # Nothing more until a run ends, even with the view lagging behind the starts.
        assert (await s.once()).started == []
        world.change(1, G1, F)
        viewer.catch_up()
        assert (await s.once()).started == [format_run_id(3)]
        # A group whose last slot holder ended loses its key.
        world.change(3, G1, F)
        viewer.catch_up()
        await s.once()
        assert await kv.get(keys.scheduler_slots_key(G1)) is None

    asyncio.run(go())


def test_a_new_scheduler_sends_a_granted_start_again_with_the_same_id() -> None:
    async def go() -> None:
        world, kv = World(), MemoryKv()
        world.change(1, G1, Q)
        viewer = Viewer(world)
        viewer.catch_up()
        # The old owner swapped the slot in, then died before sending.
        await kv.compare_and_swap(
            keys.scheduler_slots_key(G1), Slots.encode(G1, [1]), mod_revision=None
        )
        report = await scheduler(world, viewer, kv, 1, {G1}).once()
        assert report.started == [format_run_id(1)]
        assert world.start_ids == [start_event_id(format_run_id(1))]

    asyncio.run(go())


def test_groups_of_other_workers_are_left_alone() -> None:
    async def go() -> None:
        world, kv = World(), MemoryKv()
        world.change(1, G1, Q)
        viewer = Viewer(world)
        viewer.catch_up()
        assert (await scheduler(world, viewer, kv, 1, {G2}).once()).started == []
        assert kv.writes == 0

    asyncio.run(go())


STEP = st.tuples(st.sampled_from(["create", "finish", "view", "tick"]), st.integers(0, 1000))


@settings(max_examples=400, deadline=None, database=None)
@given(steps=st.lists(STEP, max_size=120), n=st.integers(1, 3))
def test_two_schedulers_with_stale_views_never_exceed_n_and_start_every_run(
    steps: list[tuple[str, int]], n: int
) -> None:
    async def go() -> None:
        world, kv = World(), MemoryKv()
        viewers = [Viewer(world), Viewer(world)]
        scheds = [scheduler(world, v, kv, n, {G1, G2}) for v in viewers]
        # Ids are only roughly ordered across processes (blocks): a new run may be older.
        next_ids = [1, 1001]  # the i-th runs of the blocks: other partitions
        for action, x in steps:
            if action == "create":
                rid = next_ids[x % 2]
                next_ids[x % 2] += 1
                world.change(rid, (G1, G2)[(x // 2) % 2], Q)
            elif action == "finish":
                running = sorted(r for r, (_, p, _) in world.phases.items() if p is R)
                if running:
                    rid = running[x % len(running)]
                    world.change(rid, world.phases[rid][0], F)
            elif action == "view":
                viewers[x % 2].catch_up((x // 2) % PARTITIONS, by=1 + x % 3)
            else:
                await scheds[x % 2].once()
            for g in (G1, G2):
                assert world.running(g) <= n, f"{g}: {world.running(g)} running > {n}"
        # Liveness: once runs end and the views catch up, every queued run starts.
        for _ in range(len(world.phases) + 2):
            for rid, (g, p, _) in list(world.phases.items()):
                if p is R:
                    world.change(rid, g, F)
            for v, s in zip(viewers, scheds, strict=True):
                v.catch_up()
                await s.once()
                for g in (G1, G2):
                    assert world.running(g) <= n
        assert all(p is F for _, p, _ in world.phases.values())
        # Every start the schedulers sent was for a run they held a slot for: the same id
        # twice at most per sender, never a different id for a run.
        assert {i.split(".")[1] for i in world.start_ids} <= {
            format_run_id(r) for r in world.phases
        }

    asyncio.run(go())


def test_a_stale_view_cannot_start_a_second_run_of_the_group() -> None:
    # A sees run 5 only and starts it; B has seen 5 queued (not yet running) and the older run 3:
    # from its view alone it would start 3 as well. The slot in etcd says no.
    async def go() -> None:
        world, kv = World(), MemoryKv()
        a, b = Viewer(world), Viewer(world)
        world.change(5, G1, Q)
        a.catch_up()
        b.catch_up()
        await scheduler(world, a, kv, 1, {G1}).once()
        assert world.phases[5][1] is R
        world.change(3, G1, Q)  # an older id, from another process's block of ids
        b.catch_up(3 % PARTITIONS)
        assert b.index.get(5) is not None
        assert b.index.get(5).phase is Q
        report = await scheduler(world, b, kv, 1, {G1}).once()
        assert world.running(G1) == 1
        assert report.started == [format_run_id(5)]  # the granted one again: a duplicate

    asyncio.run(go())


# ------------------------------------------------------------------------------ creation order
def test_the_oldest_is_the_first_created_not_the_lowest_id() -> None:
    # Run ids come in blocks per process: run 9 (process A) was created before run 3 (process B).
    made = {9: (1, 100), 3: (2, 100), 5: (3, 99)}
    p = GroupView(group=G1, phases={3: Q, 5: Q, 9: Q}, created=made)
    assert plan(p, 1).new == (9,)
    assert plan(p, 2).new == (9, 3)
    assert plan(p, 3).new == (9, 3, 5)


def test_runs_without_a_number_come_first_by_enqueue_time_then_id() -> None:
    # Indexed from phase changes older than run numbers: created before every numbered run.
    made = {1: (5, 10), 2: (0, 30), 3: (0, 20), 4: (0, 20)}
    p = GroupView(group=G1, phases={1: Q, 2: Q, 3: Q, 4: Q}, created=made)
    assert plan(p, 4).new == (3, 4, 2, 1)
    # Not in the index's facts at all: by id, as before numbers existed.
    assert plan(view({7: Q, 3: Q, 5: Q}), 2).new == (3, 5)


def test_a_tick_starts_by_the_counter_the_index_holds() -> None:
    async def go() -> None:
        world, kv = World(), MemoryKv()
        viewer = Viewer(world)
        at = 1_780_000_000_000
        # Created in the order 20, 11, 12 (run numbers 1, 2, 3) by two processes.
        for counter, rid in enumerate((20, 11, 12), start=1):
            world.change(rid, G1, Q)
            viewer.index.apply(rid, G1, Q, Result.UNKNOWN, 1, at=at + counter, counter=counter)
        viewer.seen = [len(h) for h in world.history]
        s = scheduler(world, viewer, kv, 1, {G1})
        order = []
        for _ in range(3):
            report = await s.once()
            assert len(report.started) == 1
            order += report.started
            rid = parse_run_id(report.started[0])
            world.change(rid, G1, F)
            viewer.catch_up()
        assert order == [format_run_id(r) for r in (20, 11, 12)]

    asyncio.run(go())
