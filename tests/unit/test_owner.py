"""``PartitionOwner`` driven with in-memory fakes of its ports: loading, applying, the checkpoint
rules (ok, fenced, failed, failed with a lost send), revocation, and the writes waiting for their
apply (applied, duplicate, rejected, dead, moved)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import REGISTRY

from events import (
    DecodeError,
    Event,
    EventType,
    Refused,
    StartRequested,
    StopRequested,
    TaskStatus,
    TaskStatusChanged,
    apply,
    decode,
    decode_record,
    encode,
    encode_commit,
    format_run_id,
)
from partition.materializer import ACTIVE, FINAL, offsets_key, partition_name, phase_seq
from partition.owner import (
    CATCH_UP_STALL,
    ApplyOutcome,
    NotServing,
    OwnerConfig,
    PartitionMoved,
    PartitionOwner,
)
from tests.fakes_owner import FakeDatamanager, FakeHooks, FakeLog, storage_down
from tests.oracle import Oracle
from tests.unit.test_events_support import created, ev, task

pytestmark = pytest.mark.timeout(30)  # a waiter that is never resolved fails, not hangs

TOPIC, PHASES, TASKS, DLQ = "runs.events", "runs.phases", "runs.tasks", "runs.dlq"
NAME = partition_name(TOPIC, 0)
CONFIG = OwnerConfig(
    topic=TOPIC,
    phases_topic=PHASES,
    tasks_topic=TASKS,
    dlq_topic=DLQ,
    max_event_bytes=4096,
    checkpoint_interval=0.0,  # always due: the tests decide when to checkpoint
    checkpoint_events=1_000_000,
)


def rid(n: int) -> str:
    return format_run_id(n)


def creation(n: int) -> Event:
    return ev(created(task("a")), run_id=rid(n))


def script(n: int) -> list[Event]:
    """A run from creation to finished/success: 3 phase changes."""
    r = rid(n)
    return [
        creation(n),
        ev(StartRequested(), run_id=r),
        ev(TaskStatusChanged(task_id="a", status=TaskStatus.RUNNING), run_id=r),
        ev(TaskStatusChanged(task_id="a", status=TaskStatus.SUCCESS), run_id=r),
    ]


class Rig:
    """One partition's fakes, an owner over them, and the records fed to it."""

    def __init__(self) -> None:
        self.log = FakeLog()
        self.dm = FakeDatamanager()
        self.hooks = FakeHooks()
        self.records: list[int] = []  # the offsets fed
        self.fed = 0
        self.owner = self.new_owner()

    def new_owner(self) -> PartitionOwner:
        return PartitionOwner(
            0,
            config=CONFIG,
            datamanager=self.dm,
            reader=self.log,
            sender=self.log,
            hooks=self.hooks,
        )

    def append(self, *events: Event) -> int:
        value = encode(events[0]) if len(events) == 1 else encode_commit(events)
        return self.log.append(TOPIC, 0, value)

    def append_raw(self, value: bytes) -> int:
        return self.log.append(TOPIC, 0, value)

    async def feed(self, owner: PartitionOwner | None = None) -> None:
        """Hand the records appended since the last call to the owner, in order."""
        owner = owner or self.owner
        values = self.log.values(TOPIC)
        for offset in range(self.fed, len(values)):
            self.records.append(offset)
            await owner.handle(offset, values[offset], None)
        self.fed = len(values)

    def stored(self) -> dict[str, bytes]:
        return {**self.dm.entries(NAME, ACTIVE), **self.dm.entries(NAME, FINAL)}

    def phase_keys(self) -> list[tuple[str, int]]:
        """(run id, seq) of the phase changes sent (the phases topic holds nothing else)."""
        evs = [decode(v) for v in self.log.values(PHASES)]
        assert all(phase_seq(e) >= 0 for e in evs), "a ready task on the phases topic"
        return [(e.run_id, phase_seq(e)) for e in evs]

    def ready_ids(self) -> list[str]:
        """Ids of the ready tasks sent (the tasks topic holds nothing else), in order."""
        evs = [decode(v) for v in self.log.values(TASKS)]
        assert all(e.type is EventType.TASK_READY for e in evs), "not a ready task"
        return [e.id for e in evs]

    def sent_ids(self) -> list[str]:
        """Ids of every derived event sent: the phase changes in order, then the ready tasks."""
        return [e.id for e in map(decode, self.log.values(PHASES))] + self.ready_ids()


async def loaded() -> Rig:
    rig = Rig()
    await rig.owner.load()
    return rig


async def checkpointed(runs: int, applied: int) -> tuple[Rig, list[bytes]]:
    """A log of ``runs`` creations, the first ``applied`` records applied and checkpointed by a
    first owner; the log's values."""
    rig = Rig()
    for n in range(1, runs + 1):
        rig.append(creation(n))
    values = rig.log.values(TOPIC)
    first = rig.new_owner()
    await first.load()
    for offset in range(applied):
        await first.handle(offset, values[offset], None)
    assert await first.checkpoint() == "ok"
    return rig, values


def acks(rig: Rig) -> list[int]:
    """How many times each record fed was acknowledged, in the order fed."""
    return [rig.hooks.acks(offset) for offset in rig.records]


# ---------------------------------------------------------------------------------- loading
async def test_serving_only_once_caught_up_with_the_log_as_it_was_at_assignment() -> None:
    rig = Rig()
    rig.append(creation(1))
    rig.append(creation(2))
    assert not rig.owner.serving
    with pytest.raises(NotServing):
        await rig.owner.read(rid(1))
    with pytest.raises(NotServing):
        rig.owner.expect(["x"])
    await rig.owner.load()
    assert rig.dm.claims == 1  # loading claims the partition (fences any previous owner)
    assert (rig.owner.catch_up_to, rig.owner.serving) == (2, False)
    await rig.feed()
    assert rig.owner.serving
    state = await rig.owner.read(rid(2))
    assert state is not None
    assert state.run.id == rid(2)
    assert await rig.owner.read(rid(9)) is None


async def test_phase_changes_already_on_the_phases_topic_are_not_sent_again() -> None:
    rig = await loaded()
    rig.append(*script(1)[:2])  # created, started: phase changes 1 and 2
    await rig.feed()
    assert rig.phase_keys() == [(rid(1), 1), (rid(1), 2)]
    # A crash before any checkpoint: a new owner replays the record from offset 0.
    rig.fed = 0
    again = rig.new_owner()
    await again.load()
    await rig.feed(again)
    assert rig.phase_keys() == [(rid(1), 1), (rid(1), 2)]
    # The ready tasks of the start are not sent again either (their own ids, not phase seqs).
    assert rig.sent_ids() == [f"{rid(1)}.phase.1", f"{rid(1)}.phase.2", f"{rid(1)}.ready.1"]
    assert await again.checkpoint() == "ok"


def chain(n: int) -> list[Event]:
    """A run of two tasks, b after a: created, started (a ready), a ran (b ready)."""
    r = rid(n)
    return [
        ev(created(task("a"), task("b", "a")), run_id=r),
        ev(StartRequested(), run_id=r),
        ev(TaskStatusChanged(task_id="a", status=TaskStatus.RUNNING), run_id=r),
        ev(TaskStatusChanged(task_id="a", status=TaskStatus.SUCCESS), run_id=r),
    ]


async def test_ready_tasks_go_to_the_tasks_topic_and_phase_changes_to_the_phases_topic() -> None:
    rig = await loaded()
    for e in chain(1):
        rig.append(e)
    await rig.feed()
    assert rig.phase_keys() == [(rid(1), 1), (rid(1), 2)]
    assert rig.ready_ids() == [f"{rid(1)}.ready.1", f"{rid(1)}.ready.2"]
    # Key = run id, on the partition of the same number as the run's runs.events partition.
    derived = [s for s in rig.log.sent if s.topic in (PHASES, TASKS)]
    assert {(s.key, s.partition) for s in derived} == {(rid(1).encode(), 0)}
    assert await rig.owner.checkpoint() == "ok"
    assert rig.dm.calls[-1].offsets[offsets_key(TASKS, 0)] == 2


async def test_a_commit_sends_its_phase_changes_and_ready_tasks_each_in_order() -> None:
    rig = await loaded()
    r = rid(1)
    # 20 tasks without parents: the start makes them all ready (a batch), with 2 phase changes.
    events = [ev(created(*(task(f"t{i:02}") for i in range(20))), run_id=r), script(1)[1]]
    rig.append(*events)
    await rig.feed()
    want = Oracle().feed(events).derived[r]
    assert len(want) == 22
    assert rig.log.values(PHASES) == [encode(e) for e in want if e.type is not EventType.TASK_READY]
    assert rig.log.values(TASKS) == [encode(e) for e in want if e.type is EventType.TASK_READY]
    assert await rig.owner.checkpoint() == "ok"
    offsets = rig.dm.calls[-1].offsets
    assert (offsets[offsets_key(PHASES, 0)], offsets[offsets_key(TASKS, 0)]) == (2, 20)


async def test_ready_tasks_already_on_the_tasks_topic_are_not_sent_again() -> None:
    rig = await loaded()
    first = chain(1)
    for e in first[:2]:  # created, started: a ready
        rig.append(e)
    await rig.feed()
    assert await rig.owner.checkpoint() == "ok"  # covers ready.1 (tasks offset 1)
    for e in first[2:]:  # a ran: b ready
        rig.append(e)
    await rig.feed()
    assert rig.ready_ids() == [f"{rid(1)}.ready.1", f"{rid(1)}.ready.2"]
    # A crash after the checkpoint: a new owner applies the last two records again; the tail of
    # the tasks topic beyond the manifest's offset says b's ready task was sent already.
    rig.fed = 2
    again = rig.new_owner()
    await again.load()
    await rig.feed(again)
    assert rig.ready_ids() == [f"{rid(1)}.ready.1", f"{rid(1)}.ready.2"]
    assert rig.phase_keys() == [(rid(1), 1), (rid(1), 2)]
    assert await again.checkpoint() == "ok"
    # The offset is where this owner's own sends begin (it sent none): b's ready task, below no
    # manifest offset, is read again by the next recovery, and again not sent.
    assert rig.dm.calls[-1].offsets[offsets_key(TASKS, 0)] == 1
    third = rig.new_owner()
    await third.load()
    rig.append(ev(TaskStatusChanged(task_id="b", status=TaskStatus.RUNNING), run_id=rid(1)))
    await rig.feed(third)
    assert rig.ready_ids() == [f"{rid(1)}.ready.1", f"{rid(1)}.ready.2"]


async def test_ready_tasks_sent_to_the_phases_topic_before_an_upgrade_are_not_sent_again() -> None:
    rig = Rig()
    # A worker of the version before runs.tasks: ready tasks with the phase changes.
    old = PartitionOwner(
        0,
        config=OwnerConfig(topic=TOPIC, phases_topic=PHASES, dlq_topic=DLQ),
        datamanager=rig.dm,
        reader=rig.log,
        sender=rig.log,
        hooks=rig.hooks,
    )
    await old.load()
    first = chain(1)
    rig.append(first[0])
    await rig.feed(old)
    assert await old.checkpoint() == "ok"  # a manifest without a runs.tasks offset
    assert offsets_key(TASKS, 0) not in rig.dm.calls[-1].offsets
    rig.append(first[1])
    await rig.feed(old)
    assert [decode(v).id for v in rig.log.values(PHASES)] == [
        f"{rid(1)}.phase.1",
        f"{rid(1)}.phase.2",
        f"{rid(1)}.ready.1",
    ]
    # It dies; an upgraded worker applies the start again: ready.1 is in the phases tail.
    rig.fed = 1
    new = rig.new_owner()
    await new.load()
    await rig.feed(new)
    assert rig.log.values(TASKS) == []
    assert len(rig.log.values(PHASES)) == 3
    for e in first[2:]:  # from now on, ready tasks go to runs.tasks
        rig.append(e)
    await rig.feed(new)
    assert rig.ready_ids() == [f"{rid(1)}.ready.2"]
    assert await new.checkpoint() == "ok"
    assert rig.dm.calls[-1].offsets[offsets_key(TASKS, 0)] == 1


async def test_loading_seeks_to_the_checkpoint_and_drops_what_it_holds_already() -> None:
    rig, values = await checkpointed(4, 2)  # offsets 0 and 1 in a first owner's checkpoint
    rig.hooks.seeks.clear()
    owner = rig.new_owner()
    await owner.load()
    # The consumer is told to read from the checkpoint, whatever Kafka committed.
    assert rig.hooks.seeks == [(0, 2)]
    assert owner.pm is not None
    acked = rig.hooks.acks
    # Below the checkpoint (Kafka's committed offset lagged it): acknowledged, not applied.
    before = acked(0)  # the first owner's checkpoint acknowledged it once
    await owner.handle(0, values[0], None)
    assert (owner.pm.next_offset, acked(0) - before, owner.held) == (2, 1, 0)
    # The record at the checkpoint's offset is applied once; a copy of it read again is not
    # (and is not acknowledged: the first copy's checkpoint does that).
    await owner.handle(2, values[2], None)
    await owner.handle(2, values[2], None)
    assert (owner.pm.next_offset, acked(2), owner.held) == (3, 0, 1)
    await owner.handle(3, values[3], None)
    assert owner.serving
    assert owner.held == 2
    assert await owner.read(rid(4)) is not None
    assert await owner.checkpoint() == "ok"
    assert [acked(offset) for offset in (2, 3)] == [1, 1]  # each once, the copy included


async def test_offsets_holding_no_record_are_read_past_where_it_loads_and_where_the_log_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A transactional producer's markers take offsets no record comes at: a checkpoint that ends
    at one must not leave the next owner waiting for it, nor a log that ends with one."""
    rig, values = await checkpointed(2, 1)  # covers offset 0: the next owner reads from 1
    # Say offset 1 is a transaction's marker and the log ends with another: record 2 (the log
    # here holds it at offset 1) is at offset 2, and the log ends at 4.
    owner = rig.new_owner()
    await owner.load()
    assert rig.hooks.seeks[-1] == (0, 1)
    assert owner.pm is not None
    owner.catch_up_to = 4
    with caplog.at_level(logging.INFO, logger="runstream.owner"):
        await owner.handle(2, values[1], None)  # the first record read after the seek
    assert "no record at the offset read from" in caplog.text
    assert (owner.pm.next_offset, owner.held) == (3, 2)  # offsets 1 and 2
    assert rid(2) in owner.pm.active
    assert not owner.serving  # the log ends at 4
    owner.skip_to(2)  # behind: nothing
    assert (owner.pm.next_offset, owner.held) == (3, 2)
    owner.skip_to(4)  # the reader read up to the end: offset 3 holds no record
    assert (owner.pm.next_offset, owner.held) == (4, 3)
    assert owner.serving
    assert await owner.checkpoint() == "ok"
    assert [rig.hooks.acks(offset) for offset in (1, 2, 3)] == [1, 1, 1]
    # The next owner reads on from the end.
    rig.hooks.seeks.clear()
    last = rig.new_owner()
    await last.load()
    assert rig.hooks.seeks == [(0, 4)]


async def test_a_checkpoint_the_log_no_longer_holds_is_said_loudly_and_read_on_from(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Retention passed the checkpoint: the owner says which offsets are lost, counts them, and
    reads on from the first record retained rather than wait for one that never comes."""
    rig, values = await checkpointed(4, 1)  # covers offset 0
    rig.log.starts[(TOPIC, 0)] = 3  # offsets 1 and 2 expired
    before = REGISTRY.get_sample_value("runstream_expired_offsets_total") or 0.0
    owner = rig.new_owner()
    with caplog.at_level(logging.ERROR, logger="runstream.owner"):
        await owner.load()
    assert "the log no longer holds records this partition's checkpoint needs" in caplog.text
    assert REGISTRY.get_sample_value("runstream_expired_offsets_total") == before + 2
    assert owner.lost_offsets == (1, 3)  # /healthz shows it (tests/unit/test_health.py)
    assert rig.hooks.seeks[-1] == (0, 1)
    await owner.handle(3, values[3], None)  # where the reader starts: the first one retained
    assert owner.pm is not None
    assert (owner.pm.next_offset, owner.held) == (4, 3)
    assert owner.serving
    assert await owner.read(rid(4)) is not None
    assert await owner.read(rid(2)) is None  # lost with its record


async def test_a_catch_up_without_records_reads_again_from_the_next_offset() -> None:
    now = [100.0]
    rig = Rig()
    for n in (1, 2, 3):
        rig.append(creation(n))
    owner = PartitionOwner(
        0,
        config=CONFIG,
        datamanager=rig.dm,
        reader=rig.log,
        sender=rig.log,
        hooks=rig.hooks,
        clock=lambda: now[0],
    )
    await owner.load()
    assert rig.hooks.seeks == [(0, 0)]
    assert owner.catch_up_to == 3
    await owner.handle(0, rig.log.values(TOPIC)[0], None)
    now[0] += CATCH_UP_STALL - 0.1
    await owner.keep_catching_up(agent_waiting=60)
    assert rig.hooks.seeks == [(0, 0)]  # a record came recently: nothing to do
    now[0] += 0.2
    await owner.keep_catching_up(agent_waiting=0)
    assert rig.hooks.seeks == [(0, 0)]  # the agent is busy (say, waiting for a checkpoint)
    await owner.keep_catching_up(agent_waiting=CATCH_UP_STALL)
    # Behind, no record, and the agent left waiting: read again from offset 1.
    assert rig.hooks.seeks == [(0, 0), (0, 1)]
    # Read again from offset 1: record 0 (read again) is dropped, 1 and 2 applied.
    await owner.handle(0, rig.log.values(TOPIC)[0], None)
    assert owner.pm is not None
    assert owner.pm.next_offset == 1
    for offset in (1, 2):
        await owner.handle(offset, rig.log.values(TOPIC)[offset], None)
    assert owner.serving
    now[0] += 60
    await owner.keep_catching_up(agent_waiting=60)  # serving: silence is just no writes
    assert rig.hooks.seeks == [(0, 0), (0, 1)]


# ------------------------------------------------------------------------------ checkpoints
async def test_checkpoint_ok_acks_the_records_it_covers() -> None:
    rig = await loaded()
    events = [*script(1), creation(2)]
    for e in events:
        rig.append(e)
    await rig.feed()
    assert acks(rig) == [0] * 5
    assert await rig.owner.checkpoint() == "ok"
    assert acks(rig) == [1] * 5
    assert rig.stored() == Oracle().feed(events).encoded()
    phases, tasks = len(rig.log.values(PHASES)), len(rig.log.values(TASKS))
    assert phases + tasks == sum(map(len, Oracle().feed(events).derived.values()))
    assert rig.dm.calls[-1].offsets == {
        offsets_key(TOPIC, 0): 5,
        offsets_key(PHASES, 0): phases,
        offsets_key(TASKS, 0): tasks,
    }
    assert await rig.owner.checkpoint() == "nothing"
    assert acks(rig) == [1] * 5


async def test_records_below_the_checkpoint_are_acked_at_once_and_not_applied_again() -> None:
    rig = await loaded()
    rig.append(creation(1))
    await rig.feed()
    assert await rig.owner.checkpoint() == "ok"
    again = rig.new_owner()
    await again.load()
    assert rig.hooks.acks(0) == 1  # by the first owner's checkpoint
    await again.handle(0, rig.log.values(TOPIC)[0], None)
    assert rig.hooks.acks(0) == 2  # and again at once by the new owner
    assert again.pm is not None
    assert again.pm.next_offset == 1
    assert not again.pm.has_changes


async def test_offsets_without_a_record_are_acked_with_the_next_record() -> None:
    # A transaction's marker or a compacted record leaves offsets no record comes for: acked
    # with the record after them (once its checkpoint is in), never before it.
    rig = await loaded()
    rig.append(creation(1))
    await rig.feed()  # offset 0
    late = encode(creation(2))
    await rig.owner.handle(4, late, None)  # offsets 1-3 hold no record
    assert rig.owner.pm is not None
    assert rig.owner.pm.next_offset == 5
    assert rig.owner.held == 5
    assert rig.hooks.acked == []
    assert await rig.owner.checkpoint() == "ok"
    assert rig.hooks.acked == [(0, offset) for offset in range(5)]


async def test_fenced_checkpoint_kills_the_owner_and_fails_its_waiters() -> None:
    rig = await loaded()
    rig.append(creation(1))
    await rig.feed()
    waiting = rig.owner.expect(["later"])
    await rig.dm.open_partition(NAME, claim=True)  # another owner claimed the partition
    assert await rig.owner.checkpoint() == "fenced"
    assert rig.owner.dead
    assert not rig.owner.serving
    assert rig.hooks.fenced_owners == [rig.owner]
    assert acks(rig) == [0]  # the new owner reads it again
    with pytest.raises(PartitionMoved):
        await waiting[0]
    rig.append(creation(2))
    await rig.feed()  # a dead owner drops records, unacknowledged
    assert acks(rig) == [0, 0]
    with pytest.raises(NotServing):
        await rig.owner.read(rid(1))


async def test_failed_checkpoint_restores_keeps_the_records_and_retries_the_same_content() -> None:
    rig = await loaded()
    for e in [*script(1), creation(2)]:
        rig.append(e)
    await rig.feed()
    rig.dm.fail_next = storage_down()
    assert await rig.owner.checkpoint() == "failed"
    assert acks(rig) == [0] * 5
    assert rig.owner.held == 5
    assert rig.hooks.crashes == []
    assert await rig.owner.checkpoint() == "ok"
    first, second = rig.dm.calls
    assert second == first
    assert acks(rig) == [1] * 5


async def test_failed_checkpoint_then_more_records_writes_both_in_the_next_one() -> None:
    rig = await loaded()
    events = script(1) + script(2)
    for e in events[:4]:
        rig.append(e)
    await rig.feed()
    rig.dm.fail_next = storage_down()
    assert await rig.owner.checkpoint() == "failed"
    for e in events[4:]:
        rig.append(e)
    await rig.feed()
    assert await rig.owner.checkpoint() == "ok"
    assert rig.stored() == Oracle().feed(events).encoded()
    assert acks(rig) == [1] * 8
    assert rig.dm.calls[-1].offsets[offsets_key(PHASES, 0)] == len(rig.log.values(PHASES))


async def test_a_lost_send_means_no_checkpoint_and_a_crash() -> None:
    rig = await loaded()
    rig.log.fail_sends = True
    rig.append(creation(1))  # derives a phase change: its send fails
    await rig.feed()
    assert await rig.owner.checkpoint() == "crashed"
    assert len(rig.hooks.crashes) == 1
    assert rig.dm.calls == []  # the checkpoint was not even attempted
    assert acks(rig) == [0]
    assert rig.owner.dead
    assert not rig.owner.serving


async def test_a_lost_dead_letter_also_crashes() -> None:
    rig = await loaded()
    rig.log.fail_sends = True
    rig.append_raw(b"not json")
    await rig.feed()
    assert await rig.owner.checkpoint() == "crashed"
    assert len(rig.hooks.crashes) == 1


async def test_a_dead_letter_too_large_for_the_dlq_keeps_its_head() -> None:
    rig = await loaded()
    rig.log.max_value = 64 << 10
    big = b"[" + b" " * (100 << 10) + b"x"
    rig.append_raw(big)
    await rig.feed()
    (sent,) = rig.log.sent
    assert sent.topic == DLQ
    assert sent.value == big[: 64 << 10]
    headers = dict(sent.headers)
    assert headers["runstream-truncated-from"] == str(len(big)).encode()
    assert headers["runstream-source-offset"] == b"0"
    assert await rig.owner.checkpoint() == "ok"


# ---------------------------------------------------------------------- checkpoint in flight
async def test_applying_goes_on_while_a_checkpoint_is_written() -> None:
    rig = await loaded()
    events = script(1) + script(2) + script(3)
    for e in events[:4]:
        rig.append(e)
    await rig.feed()
    rig.dm.gate = asyncio.Event()
    task = rig.owner.maybe_checkpoint()
    assert task is not None
    await rig.dm.entered.wait()  # the checkpoint is being written, held at the gate
    assert rig.owner.maybe_checkpoint() is None  # one in flight at a time
    waiting = rig.owner.expect([e.id for e in events[4:]])
    for e in events[4:]:
        rig.append(e)
    await rig.feed()
    # Applied (and answered) while the checkpoint is still held at the gate.
    assert not task.done()
    assert [f.result().kind for f in waiting] == ["applied"] * 8
    rig.dm.gate.set()
    assert await task == "ok"
    assert acks(rig) == [1] * 4 + [0] * 8
    assert rig.dm.calls[0].offsets[offsets_key(TOPIC, 0)] == 4
    assert await rig.owner.checkpoint() == "ok"
    assert rig.dm.calls[1].offsets[offsets_key(TOPIC, 0)] == 12
    # Nothing lost, nothing twice: every run's state and every phase change once.
    oracle = Oracle().feed(events)
    assert rig.stored() == oracle.encoded()
    assert acks(rig) == [1] * 12
    expected = [(r, phase_seq(d)) for r, ds in oracle.derived.items() for d in ds if phase_seq(d) >= 0]  # fmt: skip
    assert sorted(rig.phase_keys()) == sorted(expected)
    assert len(rig.phase_keys()) == len(set(rig.phase_keys()))
    assert sorted(rig.sent_ids()) == sorted(d.id for ds in oracle.derived.values() for d in ds)
    # The first checkpoint wrote run 1 only; the second, runs 2 and 3 only.
    assert set(rig.dm.calls[0].appends[FINAL]) == {rid(1)}
    assert set(rig.dm.calls[1].appends[FINAL]) == {rid(2), rid(3)}


async def test_a_run_finished_during_a_checkpoint_is_read_back_meanwhile() -> None:
    rig = await loaded()
    for e in script(1):
        rig.append(e)
    await rig.feed()
    rig.dm.gate = asyncio.Event()
    task = rig.owner.maybe_checkpoint()
    await rig.dm.entered.wait()
    state = await rig.owner.read(rid(1))  # in the snapshot being written, not in memory
    assert state is not None
    assert state.run.phase.is_final()
    rig.dm.gate.set()
    assert task is not None
    assert await task == "ok"
    assert await rig.owner.read(rid(1)) == state  # now from the data files


async def test_revocation_mid_checkpoint_waits_for_it_then_writes_a_last_one() -> None:
    rig = await loaded()
    rig.append(*script(1)[:2])
    await rig.feed()
    rig.dm.gate = asyncio.Event()
    task = rig.owner.maybe_checkpoint()
    await rig.dm.entered.wait()
    rig.append(creation(2))
    await rig.feed()  # applied while the first checkpoint is in flight
    waiting = rig.owner.expect(["never-appended"])
    closing = asyncio.ensure_future(rig.owner.close(grace=30))
    with pytest.raises(PartitionMoved):
        await waiting[0]  # failed at once, not after the checkpoints
    assert not closing.done()
    rig.dm.gate.set()
    await closing
    assert task is not None
    assert await task == "ok"
    assert [c.offsets[offsets_key(TOPIC, 0)] for c in rig.dm.calls] == [1, 2]
    assert acks(rig) == [1, 1]
    rig.append(creation(3))
    await rig.feed()  # revoked: dropped, unacknowledged, for the next owner
    assert acks(rig) == [1, 1, 0]
    assert not rig.owner.serving


async def test_revocation_whose_last_checkpoint_hangs_gives_up_after_the_grace() -> None:
    rig = await loaded()
    rig.append(creation(1))
    await rig.feed()
    rig.dm.gate = asyncio.Event()  # never opened
    await rig.owner.close(grace=0.01)
    assert len(rig.dm.calls) == 1
    assert acks(rig) == [0]
    assert not rig.owner.checkpointing


async def test_no_snapshot_while_a_record_waits_for_room_to_queue_its_sends() -> None:
    rig = await loaded()
    rig.log.room = asyncio.Event()
    rig.append(creation(1))
    feeding = asyncio.ensure_future(rig.feed())
    await rig.log.blocked.wait()  # applied, now waiting to queue its phase change
    assert rig.owner.held == 1
    # A snapshot now would cover the record without waiting for its phase change.
    assert rig.owner.maybe_checkpoint() is None
    rig.log.room.set()
    await feeding
    task = rig.owner.maybe_checkpoint()
    assert task is not None
    assert await task == "ok"
    assert rig.dm.calls[0].offsets[offsets_key(PHASES, 0)] == 1


# ---------------------------------------------------------------------------- waiting writes
async def test_a_write_waiting_for_an_event_that_is_refused_gets_the_reducers_reason() -> None:
    rig = await loaded()
    rig.append(creation(1))
    await rig.feed()
    queued = await rig.owner.read(rid(1))
    stop = ev(StopRequested(), run_id=rid(1))
    expected = apply(queued, stop)
    (waiting,) = rig.owner.expect([stop.id])
    rig.append(stop)
    await rig.feed()
    outcome = await waiting
    assert isinstance(expected, Refused)
    assert outcome == ApplyOutcome("refused", queued, expected.reason)
    assert "only a running run stops" in outcome.reason


async def test_applied_and_duplicate_outcomes_carry_the_state() -> None:
    rig = await loaded()
    create = creation(1)
    first, again = rig.owner.expect([create.id, create.id])
    rig.append(create)
    await rig.feed()
    state = await rig.owner.read(rid(1))
    assert (await first, await again) == (ApplyOutcome("applied", state), ApplyOutcome("applied", state))  # fmt: skip
    (dup,) = rig.owner.expect([create.id])
    rig.append(create)
    await rig.feed()
    assert await dup == ApplyOutcome("duplicate", state)


async def test_an_event_for_a_final_run_is_rejected_as_final() -> None:
    rig = await loaded()
    for e in script(1):
        rig.append(e)
    await rig.feed()
    late = ev(StopRequested(), run_id=rid(1))
    (waiting,) = rig.owner.expect([late.id])
    rig.append(late)
    await rig.feed()
    assert await waiting == ApplyOutcome("refused", None, f"run {rid(1)} is final")


async def test_events_of_a_commit_get_their_own_outcomes() -> None:
    rig = await loaded()
    create, stop = creation(1), ev(StopRequested(), run_id=rid(1))
    a, b = rig.owner.expect([create.id, stop.id])
    rig.append(create, stop)
    await rig.feed()
    assert ((await a).kind, (await b).kind) == ("applied", "refused")


@pytest.mark.parametrize("commit", [False, True])
async def test_a_write_whose_record_became_a_dead_letter_is_told_so(commit: bool) -> None:
    rig = await loaded()
    good, bad = encode(creation(1)), b'{"id": "e-bad", "type": "run.nonsense", "version": 1}'
    raw = b"[" + good + b"," + bad + b"]" if commit else bad
    waiting = rig.owner.expect(["e-bad"] + ([decode(good).id] if commit else []))
    rig.append_raw(raw)
    await rig.feed()
    with pytest.raises(DecodeError) as refused:
        decode_record(raw)
    reason = f"{refused.value.reason}: {refused.value.message}"
    outcomes = [await w for w in waiting]
    assert outcomes == [ApplyOutcome("dead", None, reason)] * len(waiting)
    assert [s.topic for s in rig.log.sent] == [DLQ]
    assert await rig.owner.read(rid(1)) is None  # all or nothing: the good event was not applied


async def test_a_write_waiting_while_the_partition_is_revoked_is_told_it_moved() -> None:
    rig = await loaded()
    (waiting,) = rig.owner.expect(["e-appended-too-late"])
    await rig.owner.close()
    with pytest.raises(PartitionMoved):
        await waiting
    with pytest.raises(NotServing):
        rig.owner.expect(["another"])


async def test_forget_drops_the_waiters_and_cancels_them() -> None:
    rig = await loaded()
    create = creation(1)
    (waiting,) = rig.owner.expect([create.id])
    rig.owner.forget([create.id])
    assert waiting.cancelled()
    rig.append(create)
    await rig.feed()  # resolving nobody is fine
    assert await rig.owner.read(rid(1)) is not None
    rig.owner.forget([create.id])  # idempotent
