"""Records on a partition their key does not hash to (a producer whose partitioner is not
murmur2) or without a key become dead letters (``wrong_partition``, ``no_key``) before they are
applied, instead of being refused as ``unknown_run`` in silence: ``PartitionOwner.handle`` with
``PartitionMaterializer.route_check`` (partition.materializer), driven with the in-memory fakes; and
``runstream dlq redrive`` sends them where their runs live (agents.dlq.redrive_plan)."""

from __future__ import annotations

import pytest

from agents.dlq import DeadLetterRecord, Redrive, redrive_plan
from events import (
    Event,
    StartRequested,
    TaskStatus,
    TaskStatusChanged,
    encode,
    encode_commit,
    format_run_id,
)
from partition import metrics
from partition.materializer import PartitionMaterializer, route_refusal
from partition.owner import ApplyOutcome, OwnerConfig, PartitionOwner
from partition.placement import key_partition, partition_for
from tests.fakes_owner import FakeDatamanager, FakeHooks, FakeLog
from tests.unit.test_events_support import created, ev, task

pytestmark = pytest.mark.timeout(30)

TOPIC, PHASES, DLQ = "runs.events", "runs.phases", "runs.dlq"
PARTITIONS = 4
CONFIG = OwnerConfig(
    topic=TOPIC,
    phases_topic=PHASES,
    dlq_topic=DLQ,
    max_event_bytes=4096,
    checkpoint_interval=0.0,
    checkpoint_events=1_000_000,
)
RUN = format_run_id(42)
HOME = partition_for(RUN, PARTITIONS)
ELSEWHERE = (HOME + 1) % PARTITIONS


def dead_letters(reason: str) -> float:
    return float(metrics.DEAD_LETTERS.labels(reason)._value.get())


class Rig:
    """The fakes of a 4-partition topic and one owner per partition, fed record by record."""

    def __init__(self) -> None:
        self.log = FakeLog(partitions=PARTITIONS)
        self.dm = FakeDatamanager()
        self.hooks = FakeHooks()  # all the owners': acks name their partition
        self.owners = {
            p: PartitionOwner(
                p,
                config=CONFIG,
                datamanager=self.dm,
                reader=self.log,
                sender=self.log,
                hooks=self.hooks,
            )
            for p in range(PARTITIONS)
        }

    async def load(self) -> Rig:
        for owner in self.owners.values():
            await owner.load()
        return self

    async def send(
        self,
        partition: int,
        value: bytes,
        *,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
    ) -> int:
        """Append ``value`` to ``partition`` and hand it to that partition's owner at once; its
        offset."""
        offset = self.log.append(TOPIC, partition, value)
        await self.owners[partition].handle(
            offset, value, headers, key=key, timestamp_ms=timestamp_ms
        )
        return offset

    def dlq(self) -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
        return [(s.key, s.value, dict(s.headers)) for s in self.log.sent if s.topic == DLQ]


def run_events() -> list[Event]:
    return [
        ev(created(task("a")), run_id=RUN, id=f"{RUN}.created"),
        ev(StartRequested(), run_id=RUN, id="start"),
    ]


def status(status: TaskStatus, run_id: str = RUN) -> Event:
    return ev(TaskStatusChanged(task_id="a", status=status), run_id=run_id, id=f"a.{status}")


async def started() -> Rig:
    """The run created and started on its own partition, keyed by its id."""
    rig = await Rig().load()
    for e in run_events():
        await rig.send(HOME, encode(e), key=RUN.encode())
    state = await rig.owners[HOME].read(RUN)
    assert state is not None
    assert state.run.phase.value == "running"
    return rig


# ------------------------------------------------------------------------ the pure check
def test_key_partition_is_murmur2_as_the_producer_picks_it() -> None:
    for n in range(500):
        rid = format_run_id(1 + n * 7919)
        for parts in (1, 2, 3, 8, 12):
            assert key_partition(rid.encode(), parts) == partition_for(rid, parts)


def test_route_refusal_names_the_partition_the_key_belongs_to() -> None:
    key = RUN.encode()
    assert route_refusal(key, [RUN], HOME, PARTITIONS) is None
    assert route_refusal(key, [RUN], ELSEWHERE, PARTITIONS) == (
        "wrong_partition",
        f"key {RUN} belongs to partition {HOME}, not {ELSEWHERE}",
    )
    assert route_refusal(None, [RUN], ELSEWHERE, PARTITIONS) == (
        "no_key",
        f"no key: run {RUN} belongs to partition {HOME}, not {ELSEWHERE}",
    )
    assert route_refusal(b"", [RUN], ELSEWHERE, PARTITIONS) is not None  # empty = no key
    # A record whose runs all live where it is, is judged there, whatever its key.
    assert route_refusal(None, [RUN], HOME, PARTITIONS) is None
    other_key = next(
        k for n in range(100) if key_partition(k := f"k{n}".encode(), PARTITIONS) != HOME
    )
    assert route_refusal(other_key, [RUN], HOME, PARTITIONS) is None
    # One partition: nowhere else to be.
    assert route_refusal(None, [RUN], 0, 1) is None


# ------------------------------------------------------------------------ the owner
async def test_a_right_key_passes_and_the_run_goes_on() -> None:
    rig = await started()
    await rig.send(HOME, encode(status(TaskStatus.RUNNING)), key=RUN.encode())
    await rig.send(HOME, encode(status(TaskStatus.SUCCESS)), key=RUN.encode())
    state = await rig.owners[HOME].read(RUN)
    assert state is not None
    assert (state.run.phase.value, state.run.result.value) == ("finished", "success")
    assert rig.dlq() == []


async def test_a_key_of_another_partition_is_a_wrong_partition_dead_letter() -> None:
    rig = await started()
    before = dead_letters("wrong_partition")
    rejected = metrics.EVENTS_REJECTED.labels("unknown_run")._value.get()
    value = encode(status(TaskStatus.RUNNING))
    owner = rig.owners[ELSEWHERE]
    (waiting,) = owner.expect([f"a.{TaskStatus.RUNNING}"])
    offset = await rig.send(
        ELSEWHERE,
        value,
        key=RUN.encode(),
        headers=[("trace", b"t1")],
        timestamp_ms=1_780_000_000_000,
    )
    message = f"key {RUN} belongs to partition {HOME}, not {ELSEWHERE}"
    assert await waiting == ApplyOutcome("dead", None, f"wrong_partition: {message}")
    ((key, raw, headers),) = rig.dlq()
    assert (key, raw) == (RUN.encode(), value)  # the original key and bytes
    assert headers["trace"] == b"t1"  # the record's own headers kept
    assert headers["runstream-error"] == b"wrong_partition"
    assert headers["runstream-error-message"] == message.encode()
    assert headers["runstream-source-topic"] == TOPIC.encode()
    assert headers["runstream-source-partition"] == str(ELSEWHERE).encode()
    assert headers["runstream-source-offset"] == b"0"
    assert headers["runstream-source-timestamp"] == b"1780000000000"
    # Counted as a dead letter, not refused as an event of an unknown run.
    assert dead_letters("wrong_partition") == before + 1
    assert metrics.EVENTS_REJECTED.labels("unknown_run")._value.get() == rejected
    # The checkpoint covers it, and then the record is acknowledged.
    pm = owner.pm
    assert pm is not None
    assert pm.next_offset == 1
    assert rig.hooks.acks(offset, ELSEWHERE) == 0
    assert await owner.checkpoint() == "ok"
    assert rig.hooks.acks(offset, ELSEWHERE) == 1
    assert rig.dm.calls[-1].offsets[f"{TOPIC}/{ELSEWHERE}"] == 1
    # The run itself did not move.
    state = await rig.owners[HOME].read(RUN)
    assert state is not None
    assert state.run.phase.value == "running"


async def test_a_record_without_a_key_is_a_no_key_dead_letter() -> None:
    rig = await started()
    before = dead_letters("no_key")
    value = encode(status(TaskStatus.RUNNING))
    await rig.send(ELSEWHERE, value, key=None, headers=[("trace", b"t2")])
    empty = encode(status(TaskStatus.SUCCESS))
    await rig.send(ELSEWHERE, empty, key=b"")  # an empty key is no key
    (first, second) = rig.dlq()
    message = f"no key: run {RUN} belongs to partition {HOME}, not {ELSEWHERE}"
    assert (first[0], first[1]) == (None, value)
    assert first[2]["runstream-error"] == b"no_key"
    assert first[2]["runstream-error-message"] == message.encode()
    assert first[2]["trace"] == b"t2"
    assert "runstream-source-timestamp" not in first[2]
    assert (second[1], second[2]["runstream-error"]) == (empty, b"no_key")
    assert dead_letters("no_key") == before + 2


async def test_a_record_whose_runs_all_live_where_it_is_is_applied_whatever_its_key() -> None:
    """A producer that picks the partition itself, by run id, without a key (or with a key of
    its own): its records are where their runs live, and are applied."""
    rig = await started()
    other_key = next(
        k for n in range(100) if key_partition(k := f"k{n}".encode(), PARTITIONS) != HOME
    )
    await rig.send(HOME, encode(status(TaskStatus.RUNNING)), key=None)
    await rig.send(HOME, encode(status(TaskStatus.SUCCESS)), key=other_key)
    state = await rig.owners[HOME].read(RUN)
    assert state is not None
    assert state.run.phase.value == "finished"
    assert rig.dlq() == []


async def test_a_commit_with_one_run_elsewhere_is_a_dead_letter_all_or_nothing() -> None:
    rig = await started()
    stray = next(
        r for n in range(100) if partition_for(r := format_run_id(1000 + n), PARTITIONS) != HOME
    )
    commit = encode_commit([status(TaskStatus.RUNNING), status(TaskStatus.RUNNING, stray)])
    await rig.send(HOME, commit, key=None)
    ((_, raw, headers),) = rig.dlq()
    assert raw == commit
    assert headers["runstream-error"] == b"no_key"
    assert f"run {stray} belongs to partition" in headers["runstream-error-message"].decode()
    state = await rig.owners[HOME].read(RUN)
    assert state is not None
    assert state.run.tasks["a"].status is TaskStatus.NOTSTARTED  # nothing of it was applied


async def test_decoding_errors_and_misrouted_creations_keep_their_own_reasons() -> None:
    rig = await Rig().load()
    key = RUN.encode()
    await rig.send(ELSEWHERE, b'{"type": "run.created", oops', key=key)
    await rig.send(ELSEWHERE, encode(run_events()[0]), key=key)  # a creation, wrong partition
    await rig.send(ELSEWHERE, encode(run_events()[0]), key=None)
    reasons = [h["runstream-error"] for _, _, h in rig.dlq()]
    assert reasons == [b"invalid_json", b"misrouted", b"misrouted"]


async def test_records_below_the_checkpoint_are_skipped_not_judged() -> None:
    pm = PartitionMaterializer(
        await FakeDatamanager().open_partition("p"),
        topic=TOPIC,
        partition=ELSEWHERE,
        phases_topic=PHASES,
        partitions=PARTITIONS,
        next_offset=5,
    )
    value = encode(status(TaskStatus.RUNNING))
    assert pm.route_check(3, value, None) is None
    assert pm.apply_record(3, value).skipped
    out = pm.route_check(5, value, RUN.encode())
    assert out is not None
    assert out.dead is not None
    assert (out.dead.reason, out.dead.offset, pm.next_offset) == ("wrong_partition", 5, 6)


async def test_without_a_partition_count_nothing_is_checked() -> None:
    pm = PartitionMaterializer(
        await FakeDatamanager().open_partition("p"),
        topic=TOPIC,
        partition=ELSEWHERE,
        phases_topic=PHASES,
    )
    assert pm.route_check(0, encode(status(TaskStatus.RUNNING)), None) is None
    assert pm.next_offset == 0


# ------------------------------------------------------------------------ redrive
def dead(
    value: bytes, reason: str, *, key: bytes | None, source: int = ELSEWHERE
) -> DeadLetterRecord:
    headers = (
        ("x-trace", b"1"),
        ("runstream-error", reason.encode()),
        ("runstream-source-topic", TOPIC.encode()),
        ("runstream-source-partition", str(source).encode()),
        ("runstream-source-offset", b"9"),
    )
    return DeadLetterRecord(
        partition=0, offset=0, timestamp_ms=0, key=key, value=value, headers=headers
    )


def plan(r: DeadLetterRecord, partitions: int | None = PARTITIONS) -> Redrive:
    return redrive_plan(r, max_event_bytes=4096, partitions=partitions)


def test_redrive_sends_a_wrong_partition_record_with_its_key_where_the_key_belongs() -> None:
    value = encode(status(TaskStatus.RUNNING))
    p = plan(dead(value, "wrong_partition", key=RUN.encode()))
    assert (p.skip, p.topic, p.key, p.partition) == (None, TOPIC, RUN.encode(), HOME)
    # Without the partition count: the key alone (the producer's partitioner places it).
    p = plan(dead(value, "wrong_partition", key=RUN.encode()), partitions=None)
    assert (p.skip, p.key, p.partition) == (None, RUN.encode(), None)
    # A key that does not lead to the run's partition is replaced by the run id.
    other_key = next(
        k for n in range(100) if key_partition(k := f"k{n}".encode(), PARTITIONS) != HOME
    )
    p = plan(dead(value, "wrong_partition", key=other_key))
    assert (p.skip, p.key, p.partition) == (None, RUN.encode(), HOME)


def test_redrive_keys_a_no_key_record_by_the_run_id_of_its_first_event() -> None:
    value = encode_commit([status(TaskStatus.RUNNING), status(TaskStatus.SUCCESS)])
    for key in (None, b""):
        p = plan(dead(value, "no_key", key=key))
        assert (p.skip, p.topic, p.key, p.partition) == (None, TOPIC, RUN.encode(), HOME)


def test_redrive_refuses_a_no_key_record_it_cannot_read() -> None:
    p = plan(dead(b'{"type": "task.status_changed", oops', "no_key", key=None))
    assert p.topic is None
    assert p.skip is not None
    assert p.skip.startswith("no key, and no run id to key it by: its events cannot be read")


def test_redrive_never_sends_a_record_back_to_the_partition_that_refused_it() -> None:
    value = encode(status(TaskStatus.RUNNING))
    # Its run's partition is the one it was refused on (the partition count changed since).
    p = plan(dead(value, "wrong_partition", key=RUN.encode(), source=HOME))
    assert p.topic is None
    assert p.skip == f"its run belongs to partition {HOME}, where it was refused"
    # Runs of several partitions in one record: no key puts it where all of them live.
    stray = next(
        r for n in range(100) if partition_for(r := format_run_id(1000 + n), PARTITIONS) != HOME
    )
    mixed = encode_commit([status(TaskStatus.RUNNING), status(TaskStatus.RUNNING, stray)])
    p = plan(dead(mixed, "no_key", key=None))
    assert p.topic is None
    assert p.skip is not None
    assert p.skip.startswith("its events are for runs of partitions")
