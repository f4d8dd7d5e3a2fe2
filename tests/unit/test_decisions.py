"""The owner's decisions from time (``partition.decisions``), driven with in-memory fakes and clocks
that tests move by hand: a lapsed lease releases every task its executor holds, a passed timeout
fails the task, a run past its own timeout is asked to stop; each decision is appended to
``runs.events`` with its deterministic id, not again while it waits to be applied, and a new owner
that caught up with a decision its predecessor appended does not append it again."""

from __future__ import annotations

import asyncio

import pytest

from events import (
    DependCondition,
    Event,
    EventType,
    Phase,
    ReleaseReason,
    StartRequested,
    TaskClaimed,
    TaskDepend,
    TaskStatus,
    TaskStatusChanged,
    decision_id,
    decode,
    format_run_id,
)
from events.model import RunConfigTask
from partition.decisions import RETRY_AFTER, Timekeeper, last_progress, stuck
from partition.owner import PartitionOwner
from tests.unit.test_events_support import applied, created, ev, task
from tests.unit.test_owner import CONFIG, TASKS, TOPIC, Rig

pytestmark = pytest.mark.timeout(30)

RUN = format_run_id(1)
T0 = 1_000_000  # the wall clock (ms) when the tests start


class Clocks:
    """A monotonic clock (seconds) and a wall clock (ms) moved together by :meth:`advance`."""

    def __init__(self) -> None:
        self.mono = 100.0
        self.wall = T0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += round(seconds * 1000)


class FakeLiveness:
    """Executors heard from at given monotonic times; a lease lapses as ``agents.liveness``
    says: more than the lease since the last heartbeat (or ``since``, if later)."""

    def __init__(self, clocks: Clocks) -> None:
        self.clocks = clocks
        self.heard: dict[str, float] = {}

    def beat(self, executor: str) -> None:
        self.heard[executor] = self.clocks.mono

    def lapsed(self, executor_id: str, lease_ms: int, since: float, now: float) -> bool:
        last = max(self.heard.get(executor_id, since), since)
        return now - last > lease_ms / 1000


class TimeRig(Rig):
    def __init__(self) -> None:
        self.clocks = Clocks()
        self.live = FakeLiveness(self.clocks)
        super().__init__()

    def new_owner(self) -> PartitionOwner:
        return PartitionOwner(
            0,
            config=CONFIG,
            datamanager=self.dm,
            reader=self.log,
            sender=self.log,
            hooks=self.hooks,
            clock=lambda: self.clocks.mono,
            wall_ms=lambda: self.clocks.wall,
            liveness=self.live,
        )

    async def decide(self, owner: PartitionOwner | None = None) -> list[Event]:
        """Let the owner decide; returns what it appended to runs.events."""
        owner = owner or self.owner
        before = len(self.log.values(TOPIC))
        owner.decide()
        await asyncio.sleep(0)  # the appends run in the background
        await asyncio.sleep(0)
        return [decode(v) for v in self.log.values(TOPIC)[before:]]

    def at(self, data: object, **kw: object) -> Event:
        return ev(data, run_id=RUN, at=self.clocks.wall, **kw)  # type: ignore[arg-type]

    def state(self, owner: PartitionOwner | None = None):  # type: ignore[no-untyped-def]
        owner = owner or self.owner
        assert owner.pm is not None
        return owner.pm.active.get(RUN)


async def running(*tasks: RunConfigTask, **kw: object) -> TimeRig:
    rig = TimeRig()
    await rig.owner.load()
    rig.append(rig.at(created(*tasks, **kw)))
    rig.append(rig.at(StartRequested()))
    await rig.feed()
    return rig


async def test_a_lapsed_lease_releases_the_task_once_and_the_run_ends() -> None:
    rig = await running(task("a"), task("b"))
    rig.append(rig.at(TaskClaimed(task_id="a", executor_id="ex-1", lease_ms=2_000)))
    rig.append(rig.at(TaskClaimed(task_id="b", executor_id="ex-1", lease_ms=2_000)))
    await rig.feed()
    rig.live.beat("ex-1")
    assert await rig.decide() == []
    rig.clocks.advance(1.5)
    rig.live.beat("ex-1")  # a heartbeat keeps it
    rig.clocks.advance(1.5)
    assert await rig.decide() == []
    rig.clocks.advance(0.6)  # 2.1 s since the last heartbeat
    released = await rig.decide()
    assert sorted(e.id for e in released) == [
        decision_id(RUN, "release", "a", 1),
        decision_id(RUN, "release", "b", 1),
    ]
    assert {e.data.reason for e in released} == {ReleaseReason.EXECUTOR_LOST}  # type: ignore[union-attr]
    assert all(e.at == rig.clocks.wall for e in released)  # the time is recorded in the event
    assert await rig.decide() == []  # appended, not applied yet: not again
    await rig.feed()
    state = rig.owner.pm.active.get(RUN) if rig.owner.pm else None  # final: left the active set
    assert state is None
    final = await rig.owner.read(RUN)
    assert final is not None
    assert final.run.phase is Phase.FINISHED
    assert {t.reason for t in final.run.tasks.values()} == {"executor_lost"}
    rig.clocks.advance(RETRY_AFTER + 1)
    assert await rig.decide() == []  # applied: nothing is due any more


async def test_a_release_not_applied_is_appended_again_with_the_same_id() -> None:
    rig = await running(task("a"), task("b"))  # b keeps the run active after a fails
    rig.append(rig.at(TaskClaimed(task_id="a", executor_id="ex-1", lease_ms=1_000)))
    await rig.feed()
    assert await rig.decide() == []  # the owner's timer looks at every change (it runs often)
    rig.clocks.advance(1.5)
    first = await rig.decide()
    assert len(first) == 1
    rig.clocks.advance(RETRY_AFTER + 0.1)  # say the append was lost: decided again
    again = await rig.decide()
    assert [e.id for e in again] == [e.id for e in first]
    await rig.feed()  # both copies: applied once, the second a duplicate
    final = await rig.owner.read(RUN)
    assert final is not None
    assert final.run.tasks["a"].status is TaskStatus.FAILED
    history = await rig.owner.history(RUN)
    assert history is not None
    judged = [h.outcome for h in history if h.event_id == first[0].id]
    assert [str(o) for o in judged] == ["applied", "duplicate"]


async def test_with_retries_the_task_comes_back_ready_and_the_lost_executor_is_refused() -> None:
    rig = await running(task("a", retries=1))
    rig.append(rig.at(TaskClaimed(task_id="a", executor_id="ex-1", lease_ms=1_000)))
    rig.append(rig.at(TaskStatusChanged(task_id="a", status=TaskStatus.RUNNING, executor_id="ex-1")))  # fmt: skip
    await rig.feed()
    assert await rig.decide() == []
    rig.clocks.advance(1.1)
    assert len(await rig.decide()) == 1
    await rig.feed()
    t = rig.state().run.tasks["a"]
    assert (t.status, t.attempt, t.released) == (TaskStatus.NOTSTARTED, 2, ("ex-1",))
    ready = [decode(v) for v in rig.log.values(TASKS)]
    assert [e.data.task_id for e in ready if e.type is EventType.TASK_READY] == ["a", "a"]  # type: ignore[union-attr]
    # The lost executor comes back: refused. Another executor claims and finishes it.
    rig.append(rig.at(TaskStatusChanged(task_id="a", status=TaskStatus.SUCCESS, executor_id="ex-1")))  # fmt: skip
    rig.append(rig.at(TaskClaimed(task_id="a", executor_id="ex-2", lease_ms=1_000)))
    rig.append(rig.at(TaskStatusChanged(task_id="a", status=TaskStatus.SUCCESS, executor_id="ex-2")))  # fmt: skip
    await rig.feed()
    final = await rig.owner.read(RUN)
    assert final is not None
    assert (final.run.phase, str(final.run.result)) == (Phase.FINISHED, "success")


async def test_a_task_past_its_timeout_fails_and_its_on_failure_child_becomes_ready() -> None:
    fix = RunConfigTask(
        id="fix",
        name="fix",
        depends=(TaskDepend(task_id="a", conditions=(DependCondition.ON_FAILURE,)),),
    )
    rig = await running(task("a", timeout_ms=2_000), fix)
    rig.append(rig.at(TaskClaimed(task_id="a", executor_id="ex-1", lease_ms=60_000)))
    await rig.feed()
    rig.live.beat("ex-1")
    rig.clocks.advance(1.999)
    assert await rig.decide() == []
    rig.clocks.advance(0.001)
    (timeout,) = await rig.decide()
    assert timeout.id == decision_id(RUN, "release", "a", 1)
    assert timeout.data.reason is ReleaseReason.TIMEOUT  # type: ignore[union-attr]
    await rig.feed()
    state = rig.state()
    assert (state.run.tasks["a"].status, state.run.tasks["a"].reason) == (TaskStatus.FAILED, "timeout")  # fmt: skip
    ready = [decode(v) for v in rig.log.values(TASKS)]
    assert [e.data.task_id for e in ready if e.type is EventType.TASK_READY][-1] == "fix"  # type: ignore[union-attr]


async def test_a_run_past_its_own_timeout_is_asked_to_stop() -> None:
    rig = await running(task("a"), timeout_ms=5_000)
    rig.clocks.advance(5.0)
    (stop,) = await rig.decide()
    assert stop.type is EventType.STOP_REQUESTED
    assert stop.id == decision_id(RUN, "timeout")
    assert stop.data.reason == "timeout"  # type: ignore[union-attr]
    await rig.feed()
    final = await rig.owner.read(RUN)  # its only task had not started: skipped, so it ended
    assert final is not None
    assert final.run.stop
    assert (final.run.phase, str(final.run.result)) == (Phase.FINISHED, "stopped")
    rig.clocks.advance(RETRY_AFTER + 1)
    assert await rig.decide() == []


async def test_a_new_owner_that_read_its_predecessors_decision_does_not_append_it_again() -> None:
    rig = await running(task("a"))
    rig.append(rig.at(TaskClaimed(task_id="a", executor_id="ex-1", lease_ms=1_000)))
    await rig.feed()
    assert await rig.owner.checkpoint() == "ok"
    assert await rig.decide() == []
    rig.clocks.advance(1.5)
    assert len(await rig.decide()) == 1  # appended; then the owner dies before applying it
    # The next owner loads the checkpoint (without the release), catches up (with it), decides.
    owner = rig.new_owner()
    await owner.load()
    for offset, value in enumerate(rig.log.values(TOPIC)):
        await owner.handle(offset, value, None)
    assert owner.serving
    rig.clocks.advance(RETRY_AFTER + 1)
    assert await rig.decide(owner) == []
    releases = [decode(v) for v in rig.log.values(TOPIC)]
    assert sum(e.type is EventType.TASK_RELEASED for e in releases) == 1


async def test_a_new_owner_gives_a_silent_holder_a_full_lease_from_its_own_start() -> None:
    rig = await running(task("a"))
    rig.append(rig.at(TaskClaimed(task_id="a", executor_id="ex-1", lease_ms=3_000)))
    await rig.feed()
    assert await rig.owner.checkpoint() == "ok"
    rig.clocks.advance(10)  # long silent, but the new owner has not been watching
    owner = rig.new_owner()
    await owner.load()
    assert await rig.decide(owner) == []
    rig.clocks.advance(3.1)
    assert len(await rig.decide(owner)) == 1


async def test_nothing_is_decided_while_not_serving() -> None:
    rig = TimeRig()
    assert rig.owner.decide() == 0  # not loaded


def test_the_timekeeper_drops_runs_that_ended_or_left() -> None:
    keeper = Timekeeper(None)
    assert keeper.due({}, T0, 0.0) == []
    assert keeper.watched_executors == 0


class Looked(dict):  # type: ignore[type-arg]
    """Run states that count how often a sweep looked one up (a cold run would be decoded)."""

    looks = 0

    def get(self, key, default=None):  # type: ignore[no-untyped-def]
        self.looks += 1
        return super().get(key, default)


def held_run(run_id: str, *claims: tuple[str, str, int]):  # type: ignore[no-untyped-def]
    """A running run of tasks a, b, c with ``claims`` (task, executor, lease ms) applied."""
    state = None
    events = [created(task("a"), task("b"), task("c")), StartRequested()]
    events += [TaskClaimed(task_id=t, executor_id=x, lease_ms=lease) for t, x, lease in claims]
    for data in events:
        state = applied(state, ev(data, run_id=run_id, at=T0)).state
    return state


def test_a_sweep_looks_at_no_run_of_an_executor_still_within_its_shortest_lease() -> None:
    clocks = Clocks()
    live = FakeLiveness(clocks)
    keeper = Timekeeper(live)
    one, two = format_run_id(1), format_run_id(2)
    runs = Looked(
        {
            one: held_run(one, ("a", "ex-1", 5_000), ("b", "ex-1", 2_000)),
            two: held_run(two, ("a", "ex-1", 9_000), ("b", "ex-2", 9_000)),
        }
    )
    for run_id, state in runs.items():
        keeper.watch(run_id, state, clocks.mono)
    assert keeper.watched_executors == 2
    for _ in range(8):  # 1.6 s: within ex-1's shortest lease (2 s) and ex-2's (9 s)
        clocks.advance(0.2)
        assert keeper.due(runs, clocks.wall, clocks.mono) == []
    assert runs.looks == 0
    clocks.advance(0.5)  # 2.1 s: ex-1's 2 s lease lapsed, its 5 s and 9 s ones did not
    (release,) = keeper.due(runs, clocks.wall, clocks.mono)
    assert (release.run_id, release.data.task_id) == (one, "b")  # type: ignore[union-attr]
    assert runs.looks == 2  # ex-1's two runs, not ex-2's


def test_a_run_no_longer_held_leaves_its_executors_watch() -> None:
    clocks = Clocks()
    keeper = Timekeeper(FakeLiveness(clocks))
    one, two = format_run_id(1), format_run_id(2)
    keeper.watch(one, held_run(one, ("a", "ex-1", 2_000), ("b", "ex-2", 2_000)), clocks.mono)
    keeper.watch(two, held_run(two, ("a", "ex-1", 2_000)), clocks.mono)
    assert keeper.watched_executors == 2
    keeper.watch(one, held_run(one, ("a", "ex-1", 2_000)), clocks.mono)  # ex-2 let go of b
    assert keeper.watched_executors == 1
    keeper.watch(one, None, clocks.mono)  # the run ended
    keeper.watch(two, held_run(two), clocks.mono)  # released (no holder)
    assert keeper.watched_executors == 0
    clocks.advance(60)
    assert keeper.due({}, clocks.wall, clocks.mono) == []


async def test_stuck_lists_runs_without_progress_oldest_first() -> None:
    rig = await running(task("a"), task("b"))
    rig.append(rig.at(TaskStatusChanged(task_id="a", status=TaskStatus.RUNNING)))
    await rig.feed()
    state = rig.state()
    assert last_progress(state) == rig.clocks.wall
    assert stuck([state], rig.clocks.wall + 599_999, 600_000) == []
    (s,) = stuck([state], rig.clocks.wall + 600_000, 600_000)
    assert (s.run_id, s.phase, s.tasks) == (RUN, Phase.RUNNING, ("a",))
    rig.clocks.advance(600)
    assert [x.run_id for x in rig.owner.stuck(600_000)] == [RUN]
    assert rig.owner.stuck_count(600_000) == (1, 1)  # the gauges' count: the same run and task
    assert rig.owner.stuck_count(600_001) == (0, 0)
