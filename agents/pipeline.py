"""The materializer agent: Faust wiring around ``PartitionMaterializer`` (no business logic here).

Offsets and acks. The manifest in the datamanager is the source of truth for where a partition
resumes. The agent consumes with ``noack_take`` and acks a record (so Faust may commit its offset
to Kafka) only after a checkpoint covering it has been swapped in, so Kafka's committed offset
never passes the manifest; records below the manifest's offset are skipped. If Kafka's offset is
ahead anyway (say the object storage was wiped), the first record after an assignment shows it and
the agent seeks back once.

Phase changes are sent to ``runs.phases`` on the partition with the same number (both topics have
the same partition count and key = run id), and a checkpoint waits for every send it covers to be
acknowledged. At assignment the tail of that ``runs.phases`` partition beyond the manifest's
offset is read back so that changes already emitted before a crash are not emitted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from agents import metrics
from agents.config import Settings
from agents.inspect import end_offsets, stop_consumer
from agents.materializer import (
    DeadLetter,
    Outcome,
    PartitionMaterializer,
    partition_name,
    phase_seq,
)
from agents.resources import Resources
from datamanager.errors import Fenced
from events.catalogue import Event
from events.codec import decode_record, encode
from events.errors import DecodeError

__all__ = ["MaterializerService", "dead_letter_headers"]

log = logging.getLogger("runstream.pipeline")

TAKE_MAX = 2000
TAKE_WITHIN = 0.05
GC_EVERY = 60.0


def dead_letter_headers(dl: DeadLetter, topic: str, partition: int) -> list[tuple[str, bytes]]:
    """Headers of a dead letter: why it was refused and where it came from."""
    return [
        ("runstream-error", dl.reason.encode()),
        ("runstream-error-message", dl.message.encode()[:2000]),
        ("runstream-source-topic", topic.encode()),
        ("runstream-source-partition", str(partition).encode()),
        ("runstream-source-offset", str(dl.offset).encode()),
    ]


@dataclass(slots=True)
class _Owned:
    """What the worker holds for one owned partition."""

    pm: PartitionMaterializer | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    held: list[Any] = field(default_factory=list)  # faust events to ack after the next checkpoint
    sends: list[Awaitable[Any]] = field(default_factory=list)
    last_checkpoint: float = field(default_factory=time.monotonic)
    seek_checked: bool = False
    catch_up_to: int = 0  # the partition's end offset when it was assigned
    skipping_to: int | None = None
    load_task: asyncio.Task[None] | None = None


class MaterializerService:
    """Registers the materializer agent, the assignment hooks and the checkpoint timer on ``app``."""

    def __init__(self, app: faust.App, settings: Settings, resources: Resources) -> None:
        self.app = app
        self.settings = settings
        self.resources = resources
        self.topics = app.runstream_topics  # type: ignore[attr-defined]
        self.owned: dict[int, _Owned] = {}
        self._last_gc = time.monotonic()
        app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        app.agent(self.topics.events, name="runstream.materializer")(self._agent)
        app.timer(max(0.5, min(1.0, settings.checkpoint_interval / 2)))(self._tick)

    def caught_up(self) -> bool:
        """True when every owned partition has loaded its checkpoint and applied the log up to
        where it ended when the partition was assigned (``/healthz`` is ready then)."""
        return all(
            o.pm is not None and o.pm.next_offset >= o.catch_up_to for o in self.owned.values()
        )

    # ----------------------------------------------------------------------- assignment
    async def _on_assigned(self, app: Any, assigned: set[TP], **_: Any) -> None:
        mine = {tp.partition for tp in assigned if tp.topic == self.settings.topic_events}
        for p in mine - set(self.owned):
            owned = self.owned[p] = _Owned()
            owned.load_task = asyncio.ensure_future(self._load(p, owned))
        metrics.PARTITIONS_OWNED.set(len(self.owned))

    async def _on_revoked(self, app: Any, revoked: set[TP], **_: Any) -> None:
        gone = [tp.partition for tp in revoked if tp.topic == self.settings.topic_events]
        for p in gone:
            owned = self.owned.get(p)
            if owned is None:
                continue
            # A last checkpoint hands the partition over with a short tail; bounded in time.
            if owned.pm is not None and owned.pm.has_changes:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._checkpoint(p, owned), timeout=10)
            self.owned.pop(p, None)
            if owned.load_task is not None:
                owned.load_task.cancel()
            log.info("partition revoked", extra={"partition": p})
        metrics.PARTITIONS_OWNED.set(len(self.owned))

    async def _load(self, p: int, owned: _Owned) -> None:
        started = time.monotonic()
        for attempt in range(1, 1000):
            try:
                # One look at the log gives the partition count and where catching up ends.
                ends = await end_offsets(self.settings.kafka, self.settings.topic_events)
                pm = await PartitionMaterializer.open(
                    await self.resources.datamanager(),
                    topic=self.settings.topic_events,
                    partition=p,
                    phases_topic=self.settings.topic_phases,
                    max_event_bytes=self.settings.max_event_bytes,
                    partitions=len(ends),
                )
                pm.suppress_emitted(await self._emitted_since(p, pm.phases_offset))
                owned.catch_up_to = ends.get(p, 0)
                break
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("loading partition failed; retrying", extra={"partition": p})
                await asyncio.sleep(min(5.0, 0.2 * attempt))
        owned.pm = pm
        owned.ready.set()
        log.info(
            "partition loaded",
            extra={
                "partition": p,
                "active_runs": len(pm.active),
                "final_runs": len(pm.finals),
                "next_offset": pm.next_offset,
                "seconds": round(time.monotonic() - started, 3),
            },
        )

    async def _emitted_since(self, p: int, offset: int) -> set[tuple[str, int]]:
        """(run id, seq) of the phase changes on ``runs.phases`` partition ``p`` from ``offset``."""
        tp = TopicPartition(self.settings.topic_phases, p)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka, enable_auto_commit=False, group_id=None
        )
        await consumer.start()
        emitted: set[tuple[str, int]] = set()
        try:
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            if end <= offset:
                return emitted
            consumer.seek(tp, offset)
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=10_000)
                for msg in batch.get(tp, []):
                    with contextlib.suppress(DecodeError):
                        for ev in decode_record(msg.value):
                            emitted.add((ev.run_id, phase_seq(ev)))
        finally:
            await stop_consumer(consumer)
        return emitted

    # ----------------------------------------------------------------------- the agent
    async def _agent(self, stream: Any) -> None:
        try:
            async for batch in stream.noack_take(TAKE_MAX, within=TAKE_WITHIN):
                for event in batch:
                    await self._handle(event)
                await self._maybe_checkpoint_all()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Never a silently dead agent: stop the worker so that it is restarted and resumes
            # from its checkpoints (bad input never gets here: it becomes a dead letter).
            log.exception("materializer failed; stopping the worker")
            await self.app.crash(exc)
            raise

    async def _handle(self, event: Any) -> None:
        msg = event.message
        p, offset = msg.partition, msg.offset
        owned = self.owned.get(p)
        if owned is None:
            return  # revoked meanwhile: the new owner reads it (not acked here)
        await owned.ready.wait()
        pm = owned.pm
        assert pm is not None
        if await self._needs_seek(p, owned, pm, offset):
            return
        metrics.RECORDS.inc()
        out = pm.apply_record(offset, msg.value)
        if out.skipped:
            event.ack()  # below the checkpoint we started from: safe to commit now
            return
        owned.held.append(event)
        self._count(out)
        for d in out.derived:
            owned.sends.append(await self._send_phase(p, d))
        if out.dead is not None:
            owned.sends.append(await self._send_dead(p, out.dead, msg.headers))

    async def _needs_seek(
        self, p: int, owned: _Owned, pm: PartitionMaterializer, offset: int
    ) -> bool:
        """True when the record must be dropped because Kafka is ahead of the checkpoint."""
        if owned.skipping_to is not None:
            if offset != owned.skipping_to:
                return True
            owned.skipping_to = None
            return False
        if owned.seek_checked:
            return False
        owned.seek_checked = True
        if offset <= pm.next_offset:
            return False
        log.error(
            "Kafka's committed offset is ahead of the checkpoint; seeking back",
            extra={"partition": p, "offset": offset, "checkpoint_offset": pm.next_offset},
        )
        owned.skipping_to = pm.next_offset
        await self.app.consumer.seek(TP(self.settings.topic_events, p), pm.next_offset)
        return True

    def _count(self, out: Outcome) -> None:
        if out.applied:
            metrics.EVENTS.labels("applied").inc(out.applied)
        if out.duplicates:
            metrics.EVENTS.labels("duplicate").inc(out.duplicates)
        if out.rejected:
            metrics.EVENTS.labels("rejected").inc(out.rejected)
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

    async def _send_phase(self, p: int, ev: Event) -> Awaitable[Any]:
        metrics.PHASE_CHANGES.inc()
        fut = await self.app.producer.send(
            self.settings.topic_phases,
            ev.run_id.encode(),
            encode(ev),
            partition=p,
            timestamp=None,
            headers=None,
        )
        return fut

    async def _send_dead(self, p: int, dl: DeadLetter, headers: Any) -> Awaitable[Any]:
        hdrs = list(_headers(headers)) + dead_letter_headers(dl, self.settings.topic_events, p)
        try:
            return await self.app.producer.send(
                self.settings.topic_dlq, None, dl.raw, partition=None, timestamp=None, headers=hdrs
            )
        except Exception as exc:
            # Too large even for the dead-letter topic: keep the head of it; the whole record
            # stays in the source topic at the offset the headers name.
            log.error("dead letter too large; sending its first 64 KiB", extra={"error": str(exc)})
            hdrs += [("runstream-truncated-from", str(len(dl.raw)).encode())]
            return await self.app.producer.send(
                self.settings.topic_dlq,
                None,
                dl.raw[: 64 << 10],
                partition=None,
                timestamp=None,
                headers=hdrs,
            )

    # ----------------------------------------------------------------------- checkpoints
    async def _tick(self) -> None:
        await self._maybe_checkpoint_all()
        await self._maybe_collect_garbage()

    async def _maybe_collect_garbage(self) -> None:
        """Every ``GC_EVERY`` seconds, collect superseded manifests and unreferenced data files of
        the owned partitions (the datamanager keeps a grace period for readers mid-way)."""
        now = time.monotonic()
        if now - self._last_gc < GC_EVERY:
            return
        self._last_gc = now
        dm = await self.resources.datamanager()
        for p in list(self.owned):
            try:
                await dm.collect_garbage(partition_name(self.settings.topic_events, p))
            except Exception:
                log.exception("garbage collection failed; will retry", extra={"partition": p})

    async def _maybe_checkpoint_all(self) -> None:
        now = time.monotonic()
        for p, owned in list(self.owned.items()):
            pm = owned.pm
            if pm is None or not pm.has_changes or owned.lock.locked():
                continue
            due = now - owned.last_checkpoint >= self.settings.checkpoint_interval
            if due or pm.pending_events >= self.settings.checkpoint_events:
                await self._checkpoint(p, owned)

    async def _checkpoint(self, p: int, owned: _Owned) -> None:
        pm = owned.pm
        assert pm is not None
        async with owned.lock:
            if not pm.has_changes:
                return  # another caller checkpointed while we waited for the lock
            # Everything below is taken at one instant: the state changes, the records to ack
            # and the sends they caused.
            snap = pm.prepare()
            held, owned.held = owned.held, []
            sends, owned.sends = owned.sends, []
            started = time.monotonic()
            try:
                phases_offset = pm.phases_offset
                for meta in await asyncio.gather(*sends):
                    if getattr(meta, "topic", None) == self.settings.topic_phases:
                        phases_offset = max(phases_offset, meta.offset + 1)
                await pm.commit(snap, phases_offset)
            except Fenced:
                metrics.CHECKPOINTS.labels("fenced").inc()
                log.warning("fenced: another owner claimed the partition", extra={"partition": p})
                if self.owned.get(p) is owned:
                    # Still ours in Kafka's eyes: start over from the newest checkpoint (the
                    # first record after it makes the agent seek back).
                    fresh = self.owned[p] = _Owned()
                    fresh.load_task = asyncio.ensure_future(self._load(p, fresh))
                return
            except Exception:
                metrics.CHECKPOINTS.labels("failed").inc()
                log.exception("checkpoint failed; will retry", extra={"partition": p})
                pm.restore(snap)
                owned.held = held + owned.held
                # The sends all completed or raised; a send that raised is a lost phase change,
                # so the process must restart from the last checkpoint to derive it again.
                if any(isinstance(f, asyncio.Future) and f.done() and f.exception() for f in sends):
                    await self.app.crash(RuntimeError("sending to Kafka failed"))
                return
            owned.last_checkpoint = time.monotonic()
            metrics.CHECKPOINTS.labels("ok").inc()
            metrics.CHECKPOINT_SECONDS.observe(owned.last_checkpoint - started)
            for event in held:
                event.ack()


def _headers(headers: Any) -> Iterable[tuple[str, bytes]]:
    if not headers:
        return ()
    items = headers.items() if isinstance(headers, dict) else headers
    return [(k, v) for k, v in items if not str(k).startswith("runstream-")]
