"""The owner of one partition of ``runs.events``: everything a worker holds for it, no Faust.

One object per owned partition (pure core, thin edges: no Faust here), from its assignment to its revocation:

* the :class:`~partition.materializer.PartitionMaterializer` (the state of the partition's runs);
* the records applied since the last checkpoint, acknowledged (so that Kafka may commit their
  offsets) only once a checkpoint covering them is swapped in, so Kafka's committed offset never
  passes the manifest;
* the pending sends: phase changes to ``runs.phases`` and ready tasks to ``runs.tasks`` (on the
  partition with the same number) and dead letters to ``runs.dlq``;
* the checkpoint rules, run in the background, one in flight at a time, while records go on
  being applied (the snapshot is copy-on-write): ok → ack the records it covers; ``Fenced`` →
  this owner is dead and the wiring starts a fresh one; any other failure → the snapshot goes
  back into the live state and the records stay held, for the next try; a failed *send* →
  the wiring crashes the worker, because a phase change or dead letter was lost and only a
  restart from the last checkpoint derives it again;
* loading: claim the partition in the datamanager (which fences a previous owner), load its
  latest checkpoint, read the ``runs.phases`` and ``runs.tasks`` tails beyond the manifest so
  that phase changes and ready tasks emitted before a crash are not emitted twice, and note the
  catch-up point (the partition's end offset at assignment);
* the writes waiting for their apply (:mod:`partition.waiters`), which the HTTP API awaits.

The wiring (``agents.materializer_service``) feeds records with :meth:`PartitionOwner.handle`, calls
:meth:`PartitionOwner.after_batch` and :meth:`PartitionOwner.maybe_checkpoint`, and
:meth:`PartitionOwner.close` at revocation. Unit tests drive it with in-memory fakes of the ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from datamanager.errors import Fenced, MissingManifest
from events.codec import encode
from events.state import RunState
from partition import metrics
from partition.active import ActiveRuns, add_counts
from partition.decisions import LivenessView, Stuck, Timekeeper, stuck
from partition.history import HistoryEntry
from partition.materializer import PartitionMaterializer, RecordEffects, Snapshot
from partition.outbox import Headers, Outbox, Sends, dead_letter_headers
from partition.ports import LogReader, LogSender, OwnerHooks, PartitionOpener
from partition.slices import Slices, drain
from partition.waiters import ApplyOutcome, NotServing, PartitionMoved, Waiters

__all__ = [
    "ApplyOutcome",
    "CheckpointResult",
    "NotServing",
    "OwnerConfig",
    "PartitionMoved",
    "PartitionOwner",
    "dead_letter_headers",
]

log = logging.getLogger("runstream.owner")

#: Seconds without a record, while catching up and while the log's reader waits for records,
#: before the owner asks to read again from its next offset (``PartitionOwner.keep_catching_up``).
CATCH_UP_STALL = 5.0
#: Offsets acknowledged in one step of a checkpoint's end (about 3 µs each for Faust).
ACK_SLICE = 128

CheckpointResult = Literal["ok", "fenced", "failed", "crashed", "nothing"]

#: Spreads the partitions' checkpoint times over the interval (the golden ratio's fraction: any
#: number of partitions lands evenly spread), so that a worker's partitions never all checkpoint
#: in the same instant and stall the records of every partition at once.
_SPREAD = 0.6180339887498949


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnerConfig:
    topic: str  # runs.events
    phases_topic: str
    dlq_topic: str
    refusals_topic: str = ""  # runs.refusals: the answers to refused events ("" = none sent)
    tasks_topic: str = ""  # runs.tasks: the ready tasks ("" = on phases_topic, as before it)
    max_event_bytes: int = 1 << 20
    checkpoint_interval: float = 5.0
    checkpoint_events: int = 50_000


class PartitionOwner:
    """Owns one partition of ``runs.events`` between its assignment and its revocation."""

    def __init__(
        self,
        partition: int,
        *,
        config: OwnerConfig,
        datamanager: PartitionOpener,
        reader: LogReader,
        sender: LogSender,
        hooks: OwnerHooks,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        liveness: LivenessView | None = None,
    ) -> None:
        self.partition = partition
        self._wall_ms = wall_ms
        self._sender = sender
        # Decisions taken from time: lapsed leases, passed timeouts (partition.decisions).
        self.timekeeper = Timekeeper(liveness)
        self._appending: set[asyncio.Task[None]] = set()
        self.config = config
        self._dm = datamanager
        self._reader = reader
        self._hooks = hooks
        self._clock = clock
        self.pm: PartitionMaterializer | None = None
        self.catch_up_to = 0  # the partition's end offset when it was assigned
        self.closed = False  # revoked
        # (checkpoint offset, first retained) when the log no longer held records the loaded
        # checkpoint needed (_check_retained): /healthz shows it for as long as this owner lives.
        self.lost_offsets: tuple[int, int] | None = None
        self.dead = False  # fenced
        self._waiters = Waiters()
        # The offsets of the records applied since the last checkpoint, acknowledged once one
        # covers them: offsets, not the consumer's records (a Faust event, its message, headers
        # and a weak reference each, held for seconds, made up a quarter of the objects the
        # collector walked in each of its young collections under load).
        self._held = array("q")
        self._outbox = Outbox(
            sender,
            source_topic=config.topic,
            phases_topic=config.phases_topic,
            dlq_topic=config.dlq_topic,
            partition=partition,
            refusals_topic=config.refusals_topic,
            tasks_topic=config.tasks_topic,
        )
        self._acked_phases = 0  # runs.phases offset acknowledged, not yet in a manifest
        self._acked_tasks = 0  # runs.tasks offset acknowledged, not yet in a manifest
        self._settled = asyncio.Event()  # loaded, closed or dead: records need not wait
        # Set unless a record is applied and its sends are not all queued yet (a send may wait
        # for room in the producer's buffer): a snapshot is only taken while it is set.
        self._idle = asyncio.Event()
        self._idle.set()
        self._load_task: asyncio.Task[None] | None = None
        self._checkpoint_task: asyncio.Task[CheckpointResult] | None = None
        self._last_checkpoint = clock()
        self._next_checkpoint = self._slot_after(self._last_checkpoint)
        # Reading on from the checkpoint (see _read_on): the offset the log was asked to read
        # from, until its record comes; the offset the loaded checkpoint ends at.
        self._reading_from: int | None = None
        self._checkpoint_offset = 0
        self._last_record = clock()  # when a record last came (keep_catching_up)
        # Counts of the records handled since the last batch ended, published to the metrics
        # once per batch: a Prometheus increment per record costs more than the bookkeeping.
        self._tally = _Tally()

    # ------------------------------------------------------------------------------ state
    @property
    def loaded(self) -> bool:
        return self.pm is not None

    @property
    def serving(self) -> bool:
        """Loaded, still owned, and applied the log up to where it ended at assignment."""
        pm = self.pm
        return (
            pm is not None
            and not self.closed
            and not self.dead
            and pm.next_offset >= self.catch_up_to
        )

    @property
    def settled(self) -> bool:
        """Loaded (its seek done), closed or dead: :meth:`handle` takes a record at once."""
        return self._settled.is_set()

    async def settle(self) -> None:
        """Until :attr:`settled`."""
        await self._settled.wait()

    @property
    def checkpointing(self) -> bool:
        return self._checkpoint_task is not None

    @property
    def held(self) -> int:
        """Records applied and not yet acknowledged."""
        return len(self._held)

    async def read(self, run_id: str) -> RunState | None:
        """The run's live state (memory, else the data files); ``None`` if this partition has no
        such run. Raises :class:`NotServing` when not serving."""
        if not self.serving:
            raise NotServing(f"partition {self.partition} is not serving")
        assert self.pm is not None
        return await self.pm.read_run(run_id)

    async def history(self, run_id: str) -> list[HistoryEntry] | None:
        """Every event judged for the run, in log order (``partition.history``); ``None`` if this
        partition has no such run. Raises :class:`NotServing` when not serving."""
        if not self.serving:
            raise NotServing(f"partition {self.partition} is not serving")
        assert self.pm is not None
        return await self.pm.read_history(run_id)

    def expect(self, event_ids: Sequence[str]) -> list[asyncio.Future[ApplyOutcome]]:
        """One future per event id, resolved when the event has been judged here; register
        before appending. The futures fail with :class:`PartitionMoved` if the partition is
        revoked, fenced or reloaded first. Raises :class:`NotServing` when not serving."""
        if not self.serving:
            raise NotServing(f"partition {self.partition} is not serving")
        return self._waiters.expect(event_ids)

    def forget(self, event_ids: Sequence[str]) -> None:
        """Drop the waiters of these ids (timeout, or the append failed). Idempotent."""
        self._waiters.forget(event_ids)

    # ---------------------------------------------------------------------------- loading
    def start(self) -> None:
        """Start loading in the background (retried until loaded or closed)."""
        self._load_task = asyncio.ensure_future(self._load_until_done())

    async def _load_until_done(self) -> None:
        attempt = 0
        while not self.closed:
            attempt += 1
            try:
                await self.load()
                return
            except asyncio.CancelledError:
                raise
            except MissingManifest as exc:
                # No retry makes the manifest appear: the worker stops with one line saying
                # why and what to do; /healthz says it meanwhile.
                self._hooks.wrong_storage(exc)
                return
            except Exception:
                log.exception(
                    "loading partition failed; retrying", extra={"partition": self.partition}
                )
                await asyncio.sleep(min(5.0, 0.2 * attempt))

    async def load(self) -> None:
        """Claim the partition, load its latest checkpoint and the ``runs.phases`` and
        ``runs.tasks`` tails beyond it, and note the catch-up point. Raises what the ports raise
        (call again)."""
        started = self._clock()
        cfg, p = self.config, self.partition
        # One look at the log gives the partition count, where it starts and where catching up
        # ends.
        starts, ends = await self._reader.log_bounds(cfg.topic)
        pm = await PartitionMaterializer.open(
            self._dm,
            topic=cfg.topic,
            partition=p,
            phases_topic=cfg.phases_topic,
            max_event_bytes=cfg.max_event_bytes,
            partitions=len(ends),
            tasks_topic=cfg.tasks_topic,
            cool=True,
        )
        tails = self._outbox.emitted_since(self._reader, pm.phases_offset, pm.tasks_offset)
        pm.suppress_emitted(await tails)
        if self.closed:
            return
        pm.waiters = self._waiters
        self.catch_up_to = ends.get(p, 0)
        self._check_retained(starts.get(p, 0), pm.next_offset)
        # A new owner reads on from its checkpoint: the log is asked to read from there,
        # whatever it would have delivered first (see _read_on).
        self._reading_from = pm.next_offset
        await self._hooks.seek(p, pm.next_offset)
        if self.closed:
            return
        self._checkpoint_offset = pm.next_offset
        pm.touched = set()
        self.timekeeper.watch_all(pm.active, self._clock())
        self.pm = pm
        self._last_checkpoint = self._last_record = self._clock()
        self._next_checkpoint = self._slot_after(self._last_checkpoint)
        self._settled.set()
        log.info(
            "partition loaded",
            extra={
                "partition": p,
                "active_runs": len(pm.active),
                "final_runs": len(pm.finals),
                "next_offset": pm.next_offset,
                "catch_up_to": self.catch_up_to,
                "seconds": round(self._clock() - started, 3),
            },
        )

    def _check_retained(self, first: int, next_offset: int) -> None:
        """Say it loudly when the log no longer holds records the checkpoint needs (retention
        passed it, or the topic was made anew): the owner reads on from the first one retained,
        and the events before are lost to the materialized state (``runstream replay`` cannot
        bring them back either). Before, such a partition waited for ever."""
        if first > next_offset:
            self.lost_offsets = (next_offset, first)
            metrics.EXPIRED_OFFSETS.inc(first - next_offset)
            log.error(
                "the log no longer holds records this partition's checkpoint needs (retention "
                "passed it, or the topic was made anew): their events are lost; reading on from "
                "the first record retained",
                extra={
                    "partition": self.partition,
                    "checkpoint_offset": next_offset,
                    "first_retained": first,
                    "offsets_lost": first - next_offset,
                },
            )

    # --------------------------------------------------------------------------- applying
    async def handle(
        self,
        offset: int,
        value: bytes,
        headers: Headers,
        *,
        key: bytes | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Apply one record of this partition (waits until loaded). A record that arrives once
        the owner is closed or dead is dropped unacknowledged: the next owner reads it. ``key``
        and ``timestamp_ms`` are the record's: a dead letter keeps them. A record without a key,
        or whose key hashes to another partition, is a dead letter unless its runs live here."""
        if not self._settled.is_set():
            await self._settled.wait()
        pm = self.pm
        if pm is None or self.closed or self.dead:
            return
        self._last_record = self._clock()
        out_of_order = offset < pm.next_offset or self._reading_from is not None
        if out_of_order and not self._read_on(offset):
            return
        tally = self._tally
        tally.records += 1
        if offset > pm.next_offset:
            # Offsets with no record before this one (a transaction's marker, a compacted or
            # expired record): acknowledged with it, or the consumer group's committed offset
            # (contiguous acks, Faust's) would stop before them.
            self._held.extend(range(pm.next_offset, offset))
        # A record whose key is missing or hashes to another partition is a dead letter
        # (wrong_partition, no_key) before it is applied (PartitionMaterializer.route_check).
        out = pm.route_check(offset, value, key)
        if out is None:
            out = pm.apply_record(offset, value)
        self._held.append(offset)
        tally.applied += out.applied
        if out.duplicates or out.refused or out.dead is not None:
            tally.add(out)
        if not out.derived and out.dead is None and out.answers is None:
            return
        # Until its sends are queued, a snapshot must not cover this record (see _idle).
        self._idle.clear()
        try:
            if out.derived:
                tally.phase_changes += len(out.derived)
                await self._outbox.phase_changes(out.derived)
            if out.answers is not None:
                await self._outbox.refusals(out.answers, offset)
            if out.dead is not None:
                if self._waiters:
                    dl = out.dead
                    self._waiters.resolve_dead(dl.raw, f"{dl.reason}: {dl.message}")
                await self._outbox.dead_letter(
                    out.dead, headers, key=key, timestamp_ms=timestamp_ms
                )
        finally:
            self._idle.set()

    # -------------------------------------------------------- reading on from the checkpoint
    def _read_on(self, offset: int) -> bool:
        """Whether to apply a record that is not simply the next one in order (below the next
        offset to apply, or come while the log is asked to read from elsewhere).

        The rules of reading on from the checkpoint. An owner applies its partition's records in
        offset order, starting at its checkpoint's offset, and trusts no position of the log's
        reader: the offset committed for the consumer group may lag the checkpoint (acks go to
        Kafka after it) or be ahead of it (the object storage was restored), and a reader may
        have passed records it never delivered (the wiring knows how its reader does). So at
        load, and again when catching up stalls (:meth:`keep_catching_up`), it asks the wiring
        to read from the offset it needs (``OwnerHooks.seek``), and until that record comes:

        * a record below the checkpoint it started from is in that checkpoint: acknowledged (its
          offset may be committed), not applied;
        * a record it applied already (read again after a seek): dropped, its first copy is
          held until a checkpoint covers it;
        * the first record at or past the offset asked for starts the reading on: the wiring
          hands over only records read after the seek (``OwnerHooks.seek``), so the offsets
          between hold no record (a transaction's marker, an aborted or expired record): they
          are held and acknowledged with it; from there on records come in order."""
        asked = self._reading_from
        if offset < self._checkpoint_offset:
            self._hooks.ack(self.partition, (offset,))
            return False
        if asked is None or offset < asked:
            return False
        self._reading_from = None
        if offset > asked:
            log.info(
                "no record at the offset read from; reading on from the next one",
                extra={"partition": self.partition, "asked": asked, "offset": offset},
            )
        return True

    def skip_to(self, offset: int) -> None:
        """The wiring read this partition up to ``offset`` and handed over every record below it:
        the offsets from the next one to apply up to there hold no record (a transaction's
        marker, an aborted or expired record). Read on from ``offset``: they are held and
        acknowledged with the next checkpoint, which covers them. Without this an owner whose
        next offset is a marker at the end of the log would wait for ever to catch up."""
        pm = self.pm
        if pm is None or self.closed or self.dead or offset <= pm.next_offset:
            return
        self._held.extend(range(pm.next_offset, offset))
        pm.skip_to(offset)
        self._reading_from = None
        self._last_record = self._clock()

    async def keep_catching_up(self, agent_waiting: float) -> None:
        """Called by the wiring's timer, with how long its reader has been waiting for records
        (0 while it is busy): while catching up, if the reader waited ``CATCH_UP_STALL`` seconds
        and no record of this partition came meanwhile, ask to read again from the next offset to
        apply (:meth:`_read_on`). Catching up means records are there to read, so a reader left
        waiting has passed records it never delivered; this keeps such a partition from
        answering 503 for ever."""
        pm = self.pm
        if pm is None or self.serving or self.closed or self.dead:
            return
        if agent_waiting < CATCH_UP_STALL or self._clock() - self._last_record < CATCH_UP_STALL:
            return
        log.warning(
            "catching up stalled: no record came; reading again from the next offset",
            extra={
                "partition": self.partition,
                "next_offset": pm.next_offset,
                "catch_up_to": self.catch_up_to,
            },
        )
        self._last_record = self._clock()
        self._reading_from = pm.next_offset
        try:
            await self._hooks.seek(self.partition, pm.next_offset)
        except Exception:  # revoked meanwhile, or the consumer is stopping: the next tick retries
            log.exception("seek failed", extra={"partition": self.partition})

    # ----------------------------------------------------------------- time decisions
    def decide(self) -> int:
        """Take the decisions that are due (``partition.decisions``) and append them to
        ``runs.events`` on this partition, keyed by run id, in the background; returns how many.
        Only while serving: a new owner decides once it has applied the log up to where it ended
        at assignment, so a decision its predecessor appended is seen first. The wiring's timer
        calls it a few times a second."""
        pm = self.pm
        if pm is None or not self.serving or pm.touched is None:
            return 0
        now = self._clock()
        keeper = self.timekeeper
        if pm.touched:
            touched, pm.touched = pm.touched, set()
            active = pm.active
            for run_id in touched:
                keeper.watch(run_id, active.get(run_id), now)
        events = keeper.due(pm.active, self._wall_ms(), now)
        for ev in events:
            data = ev.data
            log.info(
                "time decision appended",
                extra={
                    "partition": self.partition,
                    "run_id": ev.run_id,
                    "event_id": ev.id,
                    "type": str(ev.type),
                    "reason": str(getattr(data, "reason", "")),
                },
            )
            metrics.DECISIONS.labels(str(getattr(data, "reason", "timeout"))).inc()
            task = asyncio.ensure_future(self._append(ev.run_id, encode(ev)))
            self._appending.add(task)
            task.add_done_callback(self._appending.discard)
        return len(events)

    async def _append(self, run_id: str, value: bytes) -> None:
        """Append one decision; a failure is logged (the timekeeper appends it again later)."""
        try:
            sent = await self._sender.send(
                self.config.topic, run_id.encode(), value, partition=self.partition, headers=None
            )
            await sent
        except Exception:
            log.exception(
                "appending a time decision failed; it is retried", extra={"run_id": run_id}
            )

    def stuck(self, older_than_ms: int) -> list[Stuck]:
        """The active runs of this partition with no progress for ``older_than_ms`` (oldest
        first). Raises :class:`NotServing` when not serving."""
        if not self.serving:
            raise NotServing(f"partition {self.partition} is not serving")
        assert self.pm is not None
        active, now_ms = self.pm.active, self._wall_ms()
        quiet = active.quiet_since(now_ms - older_than_ms) if isinstance(active, ActiveRuns) else active.values()  # fmt: skip
        return stuck(quiet, now_ms, older_than_ms)

    def stuck_count(self, older_than_ms: int) -> tuple[int, int]:
        """How many runs :meth:`stuck` would give, and how many tasks they list, without
        decoding a run held as bytes (``ActiveRuns.quiet_count``): the stuck gauges. Raises
        :class:`NotServing` when not serving."""
        return add_counts(self.stuck_count_parts(older_than_ms, sys.maxsize))

    def stuck_count_parts(self, older_than_ms: int, chunk: int) -> Iterator[tuple[int, int]]:
        """:meth:`stuck_count` in parts of at most ``chunk`` runs (``ActiveRuns.
        quiet_count_parts``): the caller may let records apply between two. Raises
        :class:`NotServing` when not serving (at the first part)."""
        if not self.serving:
            raise NotServing(f"partition {self.partition} is not serving")
        assert self.pm is not None
        active, now_ms = self.pm.active, self._wall_ms()
        if isinstance(active, ActiveRuns):
            yield from active.quiet_count_parts(now_ms - older_than_ms, chunk)
            return
        found = stuck(active.values(), now_ms, older_than_ms)
        yield len(found), sum(len(s.tasks) for s in found)

    async def cool(self) -> int:
        """Move the active runs that went still to compressed bytes (``partition.active``);
        the wiring's timer calls it about once a second. Returns how many went."""
        pm = self.pm
        if pm is None or self.closed or self.dead or not isinstance(pm.active, ActiveRuns):
            return 0
        return await pm.active.cool()

    # ------------------------------------------------------------------------ checkpoints
    def maybe_checkpoint(self) -> asyncio.Task[CheckpointResult] | None:
        """Start a checkpoint in the background when one is due (interval elapsed, or enough
        events), none is in flight and no record is half applied; returns it (or ``None``).
        Never blocks: the agent calls it after each batch, the timer when no record comes."""
        pm = self.pm
        if pm is None or self.closed or self.dead or self.checkpointing or not pm.has_changes:
            return None
        due = self._clock() >= self._next_checkpoint
        if due or pm.pending_events >= self.config.checkpoint_events:
            return self._start_checkpoint(crash_on_lost_send=True)
        return None

    @property
    def next_checkpoint(self) -> float:
        """When (on the owner's clock) the next checkpoint is due, changes permitting."""
        return self._next_checkpoint

    def _slot_after(self, t: float) -> float:
        """The first time from ``t`` on this partition's checkpoint schedule: every
        ``checkpoint_interval`` seconds, shifted by a fraction of it that differs per partition
        (``_SPREAD``), so the partitions of a worker take turns."""
        interval = self.config.checkpoint_interval
        if interval <= 0:
            return t
        shift = interval * ((self.partition * _SPREAD) % 1.0)
        return t + (shift - t) % interval

    def publish_counts(self) -> None:
        """Add the records and events handled since the last call to the metrics (done after
        each batch, and in a batch before the loop is handed back)."""
        self._tally.flush()

    async def after_batch(self) -> None:
        """After each batch of records: publish the batch's counts, start a due checkpoint, and
        wait for the one in flight only when another checkpoint's worth of events piled up
        behind it (bounded memory)."""
        self._tally.flush()
        self.maybe_checkpoint()
        task, pm = self._checkpoint_task, self.pm
        if (
            task is not None
            and pm is not None
            and pm.pending_events >= self.config.checkpoint_events
        ):
            await asyncio.wait([task])

    async def checkpoint(self) -> CheckpointResult:
        """Wait for the checkpoint in flight, then write one of what changed since (if
        anything). For tests; the agent uses :meth:`maybe_checkpoint`."""
        if self.closed or self.dead:
            return "nothing"
        return await self._checkpoint_now(crash_on_lost_send=True)

    async def _checkpoint_now(self, *, crash_on_lost_send: bool) -> CheckpointResult:
        while (task := self._checkpoint_task) is not None:
            await asyncio.wait([task])
        await self._idle.wait()
        started = self._start_checkpoint(crash_on_lost_send=crash_on_lost_send)
        return "nothing" if started is None else await started

    def _start_checkpoint(
        self, *, crash_on_lost_send: bool
    ) -> asyncio.Task[CheckpointResult] | None:
        """Take the snapshot now, synchronously, and write it in the background. Not while a
        record is half applied: its sends would miss the snapshot that covers it."""
        pm = self.pm
        if pm is None or self.dead or self.checkpointing or not self._idle.is_set():
            return None
        if not pm.has_changes:
            return None
        # Taken at one instant: the state changes, the records to ack and the sends they caused.
        # Records applied from here on belong to the next checkpoint.
        snap = pm.prepare()
        held, self._held = self._held, array("q")
        sends = self._outbox.take()
        task = asyncio.ensure_future(
            self._write_checkpoint(pm, snap, held, sends, crash_on_lost_send)
        )
        self._checkpoint_task = task
        task.add_done_callback(self._checkpoint_done)
        return task

    def _checkpoint_done(self, task: asyncio.Task[CheckpointResult]) -> None:
        if self._checkpoint_task is task:
            self._checkpoint_task = None

    async def _write_checkpoint(
        self,
        pm: PartitionMaterializer,
        snap: Snapshot,
        held: array[int],
        sends: Sends,
        crash_on_lost_send: bool,
    ) -> CheckpointResult:
        started = self._clock()
        settled = await self._outbox.settle(
            sends,
            max(pm.phases_offset, self._acked_phases),
            max(pm.tasks_offset, self._acked_tasks),
        )
        phases_offset = self._acked_phases = settled.phases_offset
        tasks_offset = self._acked_tasks = settled.tasks_offset
        if settled.lost:
            return await self._lost_sends(snap, held, settled.lost, crash_on_lost_send)
        try:
            await pm.commit(snap, phases_offset, tasks_offset)
        except Fenced:
            metrics.CHECKPOINTS.labels("fenced").inc()
            log.warning(
                "fenced: another owner claimed the partition", extra={"partition": self.partition}
            )
            self._die("fenced: another owner claimed the partition")
            self._hooks.fenced(self.partition, self)
            return "fenced"
        except Exception:
            metrics.CHECKPOINTS.labels("failed").inc()
            log.exception("checkpoint failed; will retry", extra={"partition": self.partition})
            pm.restore(snap)
            self._held = held + self._held
            return "failed"
        self._last_checkpoint = self._clock()
        self._next_checkpoint = self._slot_after(self._last_checkpoint)
        metrics.CHECKPOINTS.labels("ok").inc()
        metrics.CHECKPOINT_SECONDS.observe(self._last_checkpoint - started)
        slices = Slices()  # thousands of records (3 µs each for Faust): not in one step
        for at in range(0, len(held), ACK_SLICE):
            self._hooks.ack(self.partition, held[at : at + ACK_SLICE])
            await slices.step()
        # What the checkpoint covered is freed in slices too (partition.slices.drain).
        for done in (snap.history, snap.finished, snap.dirty):
            await drain(done, slices)
        return "ok"

    async def _lost_sends(
        self, snap: Snapshot, held: array[int], lost: int, crash: bool
    ) -> CheckpointResult:
        """A send of the snapshot's records failed: the checkpoint must not be written (it would
        cover a phase change or dead letter that is not in Kafka). Restore, keep the records, and
        crash the worker: only a restart from the last checkpoint derives the lost sends again.
        At revocation no crash is needed: the next owner starts from that checkpoint anyway."""
        assert self.pm is not None
        metrics.CHECKPOINTS.labels("failed").inc()
        log.error(
            "sending to Kafka failed; checkpoint not written",
            extra={"partition": self.partition, "lost": lost},
        )
        self.pm.restore(snap)
        self._held = held + self._held
        if not crash:
            return "failed"
        self._die("a send to Kafka failed; the worker restarts")
        await self._hooks.crash(RuntimeError(f"sending to Kafka failed ({lost} records lost)"))
        return "crashed"

    # ------------------------------------------------------------------------ the end
    def _die(self, why: str) -> None:
        self.dead = True
        self._waiters.fail_all(why)
        self._settled.set()

    async def close(self, grace: float = 10.0) -> None:
        """Revocation: fail every waiting write with :class:`PartitionMoved`, stop applying,
        wait for the checkpoint in flight and write a last one of what changed since, the two
        bounded by ``grace`` seconds (a short tail hands the partition over quickly). Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._tally.flush()
        self._waiters.fail_all(f"partition {self.partition} revoked")
        self._settled.set()
        if self._load_task is not None:
            self._load_task.cancel()
        try:
            async with asyncio.timeout(grace):
                await self._checkpoint_now(crash_on_lost_send=False)
        except TimeoutError:
            log.warning("last checkpoint timed out", extra={"partition": self.partition})
            if self._checkpoint_task is not None:
                self._checkpoint_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._checkpoint_task


class _Tally:
    """What the records of one batch did, until :meth:`flush` adds it to the metrics."""

    __slots__ = ("applied", "duplicates", "phase_changes", "records", "refused")

    def __init__(self) -> None:
        self.records = self.applied = self.duplicates = self.refused = self.phase_changes = 0

    def add(self, out: RecordEffects) -> None:
        """The rarer outcomes of ``out`` (``applied`` is counted by the caller)."""
        self.duplicates += out.duplicates
        self.refused += out.refused
        if out.dead is not None:
            metrics.DEAD_LETTERS.labels(out.dead.reason).inc()
            log.warning(
                "dead letter",
                extra={
                    "reason": out.dead.reason,
                    "error": out.dead.message,
                    "offset": out.dead.offset,
                },
            )

    def flush(self) -> None:
        if self.records:
            _RECORDS.inc(self.records)
        if self.applied:
            _APPLIED.inc(self.applied)
        if self.duplicates:
            _DUPLICATE.inc(self.duplicates)
        if self.refused:
            _REFUSED.inc(self.refused)
        if self.phase_changes:
            _PHASE_CHANGES.inc(self.phase_changes)
        self.records = self.applied = self.duplicates = self.refused = self.phase_changes = 0


_RECORDS = metrics.RECORDS
_APPLIED = metrics.EVENTS.labels("applied")
_DUPLICATE = metrics.EVENTS.labels("duplicate")
_REFUSED = metrics.EVENTS.labels("rejected")  # the label keeps its name (dashboards)
_PHASE_CHANGES = metrics.PHASE_CHANGES
