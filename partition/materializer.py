"""The materializer of one partition of ``runs.events``: records in, run state and phase changes out.

No Faust here (the wiring only wires): ``partition.owner.PartitionOwner`` feeds records to
:meth:`PartitionMaterializer.apply_record` and writes checkpoints with :meth:`prepare` /
:meth:`commit` / :meth:`restore`; tests call them directly.

State of a partition (in the datamanager, one checkpoint per partition):

* ``active``: run id → encoded ``RunState`` for runs not in a final phase (held in memory);
* ``final``: run id → encoded ``RunState`` of runs in a final phase (only on storage; written
  once, appended: ``PartitionWriter.checkpoint``'s ``appends``);
* ``meta/final-ids``: the compact set of final run ids (``partition.finals``);
* the manifest's offsets: the next ``runs.events`` offset to apply, and the ``runs.phases`` and
  ``runs.tasks`` offsets below which every derived event of the records it covers is
  acknowledged (recovery scans both topics from there so that phase changes and ready tasks
  already emitted are not emitted twice; a manifest without a ``runs.tasks`` offset, written
  before that topic existed, scans it from 0).

Exactly-once: a record below ``next_offset`` is skipped (it is in the checkpoint); the reducer
drops an event id it has already applied; derived events are deterministic, and those found in
the ``runs.phases`` and ``runs.tasks`` tails at recovery are suppressed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from datamanager.errors import NotExist
from events import Phase, parse_run_id
from events.catalogue import Event, EventType, PhaseChanged
from events.codec import decode_record, decode_state, encode_state
from events.errors import DecodeError
from events.reducer import Applied, Refused, apply
from events.state import RunState
from partition.active import ActiveRuns
from partition.admission import Admission
from partition.finals import FinalIds, FrozenFinalIds
from partition.history import HISTORY, HistoryEntry, HistoryLog, Pending, merged, stored_history
from partition.history import HistoryOutcome as Judged
from partition.placement import key_partition, partition_for
from partition.ports import PartitionOpener, PartitionStore
from partition.slices import Slices
from partition.waiters import ApplyOutcome, Waiters

__all__ = [
    "DeadLetter",
    "PartitionMaterializer",
    "RecordEffects",
    "Snapshot",
    "offsets_key",
    "partition_name",
    "route_refusal",
]

log = logging.getLogger("runstream.materializer")

ACTIVE, FINAL, META = "active", "final", "meta"
_CREATED = EventType.RUN_CREATED
_APPLIED = Judged.APPLIED
_FINAL_PHASES = frozenset(p for p in Phase if p.is_final())
FINAL_IDS = "final-ids"
KEY_HOMES = 4096  # keys whose partition route_check remembers (cleared when full)


def _answer(out: RecordEffects, event: Event, code: str, reason: str) -> None:
    """Note a refusal in the record's outcome: the owner answers it on ``runs.refusals``."""
    if out.answers is None:
        out.answers = [(event, code, reason)]
    else:
        out.answers.append((event, code, reason))


def _ignore(_: str) -> None:
    """``touched.add`` when nobody watches."""


def phase_seq(event: Event) -> int:
    """The per-run sequence number of a ``run.phase_changed`` event (-1 for any other event)."""
    data = event.data
    return data.seq if isinstance(data, PhaseChanged) else -1


def route_refusal(
    key: bytes | None, run_ids: Sequence[str], partition: int, partitions: int
) -> tuple[str, str] | None:
    """(reason, message) of a dead letter for a record read from ``partition`` whose events are
    for ``run_ids``, or ``None`` when it is judged here: its key hashes to ``partition``, or its
    runs all live here (a producer choosing the partition by run id itself).

    ``wrong_partition``: the key hashes to another partition (a producer whose partitioner is
    not murmur2, e.g. kafkajs's LegacyPartitioner or librdkafka's default CRC32); ``no_key``:
    the record has no key (it went to any partition). Their runs' other events are elsewhere,
    so here they would only be refused as ``unknown_run``."""
    if partitions <= 1:
        return None
    home = key_partition(key, partitions) if key else None
    if home == partition:
        return None
    stray = next((r for r in run_ids if partition_for(r, partitions) != partition), None)
    if stray is None:
        return None
    if home is None:
        p = partition_for(stray, partitions)
        return "no_key", f"no key: run {stray} belongs to partition {p}, not {partition}"
    shown = key.decode("utf-8", "replace")[:100] if key else ""
    return "wrong_partition", f"key {shown} belongs to partition {home}, not {partition}"


def partition_name(topic: str, partition: int) -> str:
    """The datamanager partition holding the state of one ``runs.events`` partition."""
    return f"{topic}-{partition}"


def offsets_key(topic: str, partition: int) -> str:
    """Key of a topic partition in a manifest's offsets map."""
    return f"{topic}/{partition}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """A record the materializer could not decode: its bytes go to the dead-letter topic."""

    reason: str
    message: str
    offset: int
    raw: bytes


@dataclass(slots=True, kw_only=True)
class RecordEffects:
    """What applying one record did."""

    derived: list[Event] = field(default_factory=list)
    dead: DeadLetter | None = None
    # (event, refusal code, reason) of each event refused (answered on runs.refusals); None: none
    answers: list[tuple[Event, str, str]] | None = None
    applied: int = 0
    duplicates: int = 0
    refused: int = 0
    skipped: bool = False


@dataclass(slots=True, kw_only=True)
class Snapshot:
    """The changes of one checkpoint, taken out of the live state by ``prepare``."""

    dirty: dict[str, RunState]
    finished: dict[str, RunState | bytes]  # bytes: encoded when it ended (``encode_final``)
    covered: int
    events: int
    final_ids: FrozenFinalIds | None  # encoded by commit, in a thread
    history: Pending = field(default_factory=dict)


class PartitionMaterializer:
    """Owns the state of one partition between its assignment and its revocation."""

    def __init__(
        self,
        writer: PartitionStore,
        *,
        topic: str,
        partition: int,
        phases_topic: str,
        max_event_bytes: int = 1 << 20,
        partitions: int = 0,
        active: MutableMapping[str, RunState] | None = None,
        finals: FinalIds | None = None,
        next_offset: int = 0,
        phases_offset: int = 0,
        tasks_topic: str = "",
        tasks_offset: int = 0,
        derive: bool = True,
        encode_final: bool = False,
    ) -> None:
        self.writer = writer
        self.topic = topic
        self.partition = partition
        self.phases_topic = phases_topic
        # runs.tasks ("": ready tasks are on the phases topic, no offset of their own is kept)
        self.tasks_topic = tasks_topic
        self.tasks_offset = tasks_offset
        self.max_event_bytes = max_event_bytes
        self.partitions = partitions  # 0: do not check where runs are created
        self.active: MutableMapping[str, RunState] = {} if active is None else active
        self.finals = finals or FinalIds()
        self.next_offset = next_offset
        self.phases_offset = phases_offset
        self.checkpointed_offset = next_offset
        self._dirty: dict[str, RunState] = {}
        self._finished: dict[str, RunState | bytes] = {}
        self._suppress: set[str] = set()  # ids of derived events already on runs.phases/tasks
        self.pending_events = 0
        self._writing: Snapshot | None = None
        # Writes waiting for their apply (partition.owner shares its own here).
        self.waiters = Waiters()
        # The run ids it admits and the refusals it reports (partition.admission).
        self.admission = Admission.of(partition, self.active, self.finals)
        self.history = HistoryLog()  # every judged event per run (partition.history)
        # Runs whose state changed since the owner last looked (partition.decisions watches them);
        # None (replay, tools): not kept.
        self.touched: set[str] | None = None
        self._position = (0, 0)  # (record offset, index in the record) of the event applied
        self._key_homes: dict[bytes, int] = {}  # record key → its partition (route_check)
        # False (a replay, which rebuilds state and sends nothing): no derived events, the
        # reducer does not even build them (events.reducer.apply).
        self.derive = derive
        # True (a replay, which holds every run of the log until its one checkpoint): a run's
        # state is encoded when the run ends and its objects are freed at once. Held as objects
        # until the checkpoint, the finished runs of 272,752 events took 470 MB; the first
        # replay of a process spent 0.35 s of system time faulting that memory in. A worker
        # encodes at the checkpoint instead, in slices, off the path of the event that ended it.
        self.encode_final = encode_final

    # ------------------------------------------------------------------------- loading
    @classmethod
    async def open(
        cls,
        dm: PartitionOpener,
        *,
        topic: str,
        partition: int,
        phases_topic: str,
        max_event_bytes: int,
        partitions: int = 0,
        claim: bool = True,
        tasks_topic: str = "",
        cool: bool = False,
        derive: bool = True,
        encode_final: bool = False,
    ) -> PartitionMaterializer:
        """Open the partition in the datamanager and load the active runs and final ids of its
        latest checkpoint. ``claim`` (default) fences any previous owner of the partition.
        ``cool``: keep the active runs in an ``ActiveRuns`` (the runs that went still held as
        compressed bytes: a partition's owner, which lives for hours), else in a dict (replay,
        which is done in minutes and wants every microsecond). ``derive``, ``encode_final``: see
        ``__init__``."""
        writer = await dm.open_partition(partition_name(topic, partition), claim=claim)
        manifest = writer.manifest
        offsets: Mapping[str, int] = manifest.offsets
        active: dict[str, RunState] = {}
        finals = FinalIds()
        if manifest.seq > 0:
            for run_id, raw in await writer.load(ACTIVE):
                active[run_id] = decode_state(raw)
            for _, raw in await writer.load(META):
                finals = FinalIds.from_bytes(raw)
        return cls(
            writer,
            topic=topic,
            partition=partition,
            phases_topic=phases_topic,
            max_event_bytes=max_event_bytes,
            partitions=partitions,
            active=ActiveRuns(active) if cool else active,
            finals=finals,
            next_offset=offsets.get(offsets_key(topic, partition), 0),
            phases_offset=offsets.get(offsets_key(phases_topic, partition), 0),
            tasks_topic=tasks_topic,
            tasks_offset=offsets.get(offsets_key(tasks_topic, partition), 0) if tasks_topic else 0,
            derive=derive,
            encode_final=encode_final,
        )

    def suppress_emitted(self, emitted: Iterable[str]) -> None:
        """Ids of derived events (phase changes, ready tasks) already on ``runs.phases`` or
        ``runs.tasks``: do not emit them again (derived ids are deterministic:
        ``<run>.phase.<seq>``, ``<run>.ready.<seq>``)."""
        self._suppress.update(emitted)

    # ------------------------------------------------------------------------- applying
    def skip_to(self, offset: int) -> None:
        """The offsets from ``next_offset`` up to ``offset`` hold no record (a transaction's
        marker, an aborted or expired record): read on from ``offset`` (the next checkpoint
        covers them)."""
        self.next_offset = max(self.next_offset, offset)

    def apply_record(self, offset: int, raw: bytes) -> RecordEffects:
        """Apply one record of this partition. Never raises on bad input (it becomes a dead letter)."""
        out = RecordEffects()
        if offset < self.next_offset:
            out.skipped = True  # already part of the checkpoint we started from
            return out
        self.next_offset = offset + 1
        try:
            events = decode_record(raw, max_size=self.max_event_bytes)
        except DecodeError as exc:
            out.dead = DeadLetter(
                reason=str(exc.reason), message=exc.message, offset=offset, raw=raw
            )
            return out
        misrouted = self._misrouted(events)
        if misrouted is not None:
            out.dead = DeadLetter(reason="misrouted", message=misrouted, offset=offset, raw=raw)
            return out
        # The usual event (of an active run, applied, the run not final after it) is handled in
        # this loop with local names; every other case goes through _apply_event / _judged.
        active, dirty, note, waiters = self.active, self._dirty, self.history.note, self.waiters
        derive = self.derive
        touched = _ignore if self.touched is None else self.touched.add
        applied = 0
        for index, event in enumerate(events):
            run_id = event.run_id
            state = active.get(run_id)
            if state is not None:
                result = apply(state, event, derive)
                if isinstance(result, Applied) and not result.duplicate:
                    new = result.state
                    if new.run.phase not in _FINAL_PHASES:
                        applied += 1
                        note(event, offset, index, _APPLIED, seq=new.seq)
                        active[run_id] = new
                        dirty[run_id] = new
                        touched(run_id)
                        if waiters and event.id in waiters:
                            waiters.resolve(event.id, ApplyOutcome("applied", new))
                        if result.derived:
                            self._emit(result.derived, out)
                        continue
                self._position = (offset, index)
                self._judged(event, state, result, out)
            else:
                self._position = (offset, index)
                self._apply_event(event, out)
        out.applied += applied
        self.pending_events += len(events)
        return out

    def _misrouted(self, events: list[Event]) -> str | None:
        """A run lives in the partition its id hashes to; a creation elsewhere is a producer bug
        (events for runs not created here are refused by the reducer anyway)."""
        if self.partitions <= 0:
            return None
        for ev in events:
            if ev.type is _CREATED and partition_for(ev.run_id, self.partitions) != self.partition:
                p = partition_for(ev.run_id, self.partitions)
                return f"run {ev.run_id} belongs to partition {p}, not {self.partition}"
        return None

    def route_check(self, offset: int, raw: bytes, key: bytes | None) -> RecordEffects | None:
        """Before :meth:`apply_record`: a dead letter ``no_key`` / ``wrong_partition`` when the
        record's Kafka ``key`` is missing or hashes (murmur2) to another partition and its events
        are not all for runs of this partition (see :func:`route_refusal`); ``None``: apply it.
        Like ``apply_record`` it moves ``next_offset`` past a dead letter. A record this could not
        decode, or a misrouted creation, is left to ``apply_record`` (its reason wins)."""
        parts = self.partitions
        if parts <= 1 or offset < self.next_offset:
            return None  # one partition: nowhere else to belong; below: apply_record skips it
        if key:
            homes = self._key_homes
            home = homes.get(key)
            if home is None:
                if len(homes) >= KEY_HOMES:
                    homes.clear()
                home = homes[key] = key_partition(key, parts)
            if home == self.partition:
                return None  # the usual record: nothing more to look at
        try:
            events = decode_record(raw, max_size=self.max_event_bytes)
        except DecodeError:
            return None
        if self._misrouted(events) is not None:
            return None
        refusal = route_refusal(key, [e.run_id for e in events], self.partition, parts)
        if refusal is None:
            return None
        self.next_offset = offset + 1
        reason, message = refusal
        return RecordEffects(
            dead=DeadLetter(reason=reason, message=message, offset=offset, raw=raw)
        )

    def _apply_event(self, event: Event, out: RecordEffects) -> None:
        """Apply ``event`` of a run that is not active here (a creation, a final or unknown run)."""
        # ``in _FINAL_PHASES`` replaces the ``Phase.is_final()`` call (same set), the suppression
        # keys are only built while there is something to suppress, and the waiters are only
        # looked at while a write waits (``if waiters:`` is a dict's length).
        run_id = event.run_id
        waiters = self.waiters
        state = self.active.get(run_id)
        if state is None and parse_run_id(run_id) in self.finals:
            out.refused += 1  # a final run never changes again
            self.history.note(event, *self._position, Judged.REFUSED, reason="run is final")
            code = self.admission.refused(event, "run is final")
            _answer(out, event, code, f"run {run_id} is final")
            if waiters and event.id in waiters:
                waiters.resolve(event.id, ApplyOutcome("refused", None, f"run {run_id} is final"))
            return
        far = None if state is not None else self.admission.far(event)
        result = (
            apply(state, event, self.derive) if far is None else Refused(reason=far, state=None)
        )
        self._judged(event, state, result, out)

    def _judged(self, event: Event, state: RunState | None, result: Applied | Refused, out: RecordEffects) -> None:  # fmt: skip
        """Account for ``result``, what applying ``event`` to ``state`` gave (``apply_record``
        handles the usual applied event itself, with the same effects)."""
        run_id = event.run_id
        waiters = self.waiters
        if not isinstance(result, Applied):
            out.refused += 1
            if state is not None:  # an unknown run has no history
                self.history.note(event, *self._position, Judged.REFUSED, reason=result.reason)
            code = self.admission.refused(event, result.reason)
            _answer(out, event, code, result.reason)
            if waiters and event.id in waiters:
                waiters.resolve(event.id, ApplyOutcome("refused", result.state, result.reason))
            return
        if result.duplicate:
            out.duplicates += 1
            self.history.note(event, *self._position, Judged.DUPLICATE, seq=result.state.seq)
            if waiters and event.id in waiters:
                waiters.resolve(event.id, ApplyOutcome("duplicate", result.state))
            return
        out.applied += 1
        new = result.state
        if state is None:
            self.admission.created(parse_run_id(run_id))
        self.history.note(event, *self._position, Judged.APPLIED, seq=new.seq)
        if self.touched is not None:
            self.touched.add(run_id)
        if new.run.phase in _FINAL_PHASES:
            self.active.pop(run_id, None)
            self._dirty.pop(run_id, None)
            self._finished[run_id] = encode_state(new) if self.encode_final else new
            self.finals.add(parse_run_id(run_id))
        else:
            self.active[run_id] = new
            self._dirty[run_id] = new
        if waiters and event.id in waiters:
            waiters.resolve(event.id, ApplyOutcome("applied", new))
        if result.derived:
            self._emit(result.derived, out)

    def _emit(self, derived: tuple[Event, ...], out: RecordEffects) -> None:
        """Add ``derived`` to the record's output, but those already on their topic."""
        suppress = self._suppress
        if not suppress:  # the usual case: nothing was emitted before a recovery
            out.derived.extend(derived)
            return
        for d in derived:
            key = d.id
            if key in suppress:
                suppress.discard(key)
            else:
                out.derived.append(d)

    # ------------------------------------------------------------------------- checkpoints
    @property
    def has_changes(self) -> bool:
        return self.next_offset != self.checkpointed_offset

    def prepare(self) -> Snapshot:
        """Take the changes since the last checkpoint out of the live state, synchronously, so that
        records applied while the snapshot is written belong to the next one."""
        snap = Snapshot(
            dirty=self._dirty,
            finished=self._finished,
            covered=self.next_offset,
            events=self.pending_events,
            final_ids=self.finals.freeze() if self._finished else None,
            history=self.history.take(),
        )
        self._dirty, self._finished = {}, {}
        self.pending_events = 0
        self._writing = snap
        return snap

    async def commit(self, snap: Snapshot, phases_offset: int, tasks_offset: int = 0) -> int:
        """Write ``snap`` as the partition's new checkpoint; returns the offset it covers.

        ``phases_offset``: the ``runs.phases`` offset below which every phase change derived from
        the snapshot's records is acknowledged; ``tasks_offset``: the same for the ready tasks on
        ``runs.tasks`` (kept only with a ``tasks_topic``). Raises ``datamanager.errors.Fenced``
        when another owner took the partition (drop this materializer), or the storage error; call
        :meth:`restore` on failure to keep the changes for the next try. Records may be applied
        while this runs (the snapshot was taken out of the live state by :meth:`prepare`).
        """
        puts: dict[str, dict[str, bytes]] = {ACTIVE: await _encoded(snap.dirty)}
        merged: np.ndarray | None = None
        if snap.final_ids is not None:
            final_ids, merged = await asyncio.to_thread(snap.final_ids.encode)
            puts[META] = {FINAL_IDS: final_ids}
        # A final run's state and a history chunk are written once: appended as new files, never
        # merged into (and rewriting) the files their ids fall into at every checkpoint.
        appends = {
            FINAL: await _encoded(snap.finished),
            HISTORY: await self.history.chunks(snap.history),
        }
        offsets = {
            offsets_key(self.topic, self.partition): snap.covered,
            offsets_key(self.phases_topic, self.partition): phases_offset,
        }
        if self.tasks_topic:
            offsets[offsets_key(self.tasks_topic, self.partition)] = tasks_offset
        await self.writer.checkpoint(puts, {ACTIVE: list(snap.finished)}, offsets, appends=appends)
        if snap.final_ids is not None and merged is not None:
            self.finals.merged(snap.final_ids, merged)
        self._writing = None
        self.checkpointed_offset = snap.covered
        self.phases_offset = phases_offset
        self.tasks_offset = tasks_offset
        return snap.covered

    def restore(self, snap: Snapshot) -> None:
        """Put a snapshot that was not written back into the live state (newer states win)."""
        self._writing = None
        self._finished = {**snap.finished, **self._finished}
        self._dirty = {**snap.dirty, **self._dirty}
        for rid in self._finished:
            self._dirty.pop(rid, None)
        self.pending_events += snap.events
        self.history.give_back(snap.history)

    async def read_run(self, run_id: str) -> RunState | None:
        """The run's latest state: in memory when active, else from the data files."""
        state = self.active.get(run_id) or self._finished.get(run_id)
        if state is None and self._writing is not None:
            state = self._writing.finished.get(run_id)
        if isinstance(state, bytes):
            return decode_state(state)
        if state is not None:
            return state
        try:
            return decode_state(await self.writer.get(FINAL, run_id))
        except NotExist:
            return None

    async def read_history(self, run_id: str) -> list[HistoryEntry] | None:
        """Every event judged for run ``run_id`` so far, in log order (``None``: no such run).
        Linearizable like :meth:`read_run`: it includes what is not checkpointed yet."""
        while True:
            # Chunks read from one manifest; if a checkpoint swapped in meanwhile, the entries
            # it stored are no longer in memory: read again from the new manifest.
            manifest = self.writer.manifest
            stored = await stored_history(self.writer, run_id)
            if self.writer.manifest is manifest:
                break
        writing = self._writing.history if self._writing is not None else None
        entries = merged(stored, self.history.in_memory(run_id, writing))
        if not entries and await self.read_run(run_id) is None:
            return None
        return entries


async def _encoded(states: Mapping[str, RunState | bytes]) -> dict[str, bytes]:
    """Encoded ``states``, in slices of the event loop's time (``partition.slices``) so that
    records go on being applied while a large checkpoint is encoded (bytes: encoded already)."""
    out: dict[str, bytes] = {}
    slices = Slices()
    for run_id, state in states.items():
        out[run_id] = state if isinstance(state, bytes) else encode_state(state)
        await slices.step()
    return out
