"""What one partition's owner sends to Kafka: phase changes to ``runs.phases`` and ready tasks to
``runs.tasks`` (both on the partition with the same number, key = run id), the answers to refused
events to ``runs.refusals`` (the same) and dead letters to ``runs.dlq``, held as pending sends
until the next checkpoint waits for them (``partition.owner``). No Faust here.

Exactly once: a checkpoint is written only once every send of the records it covers is
acknowledged, and it records, per output topic, the offset below which they all are
(:class:`Settled`). A new owner reads what lies beyond those offsets on *both* topics
(:meth:`Outbox.emitted_since`): the derived events of records past the checkpoint that a dead
owner sent already, which the materializer then does not send again (their ids are
deterministic). Per topic, the order of a run's derived events is the order they were derived in;
between the two topics there is no order."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from events.catalogue import Event, EventType
from events.codec import decode_record, encode
from events.errors import DecodeError
from events.requests import Refusal
from partition.materializer import DeadLetter
from partition.ports import LogReader, LogSender, RecordMeta

__all__ = [
    "DEAD_LETTER_HEADERS",
    "Headers",
    "Outbox",
    "Sends",
    "Settled",
    "dead_letter_headers",
    "emitted",
]

log = logging.getLogger("runstream.outbox")
_encode_refusal = msgspec.json.Encoder().encode

Headers = Mapping[str, bytes] | Sequence[tuple[str, bytes]] | None
TRUNCATED_DEAD_LETTER = 64 << 10
BATCH_FROM = 16  # derived events of one record for one topic sent as one batch from this many
_TASK_READY = EventType.TASK_READY


#: The headers runstream adds to a dead letter, and what each holds (docs/events.md, AsyncAPI).
DEAD_LETTER_HEADERS = {
    "runstream-error": "the reason code: invalid_json, schema, unknown_type, "
    "unsupported_version, oversize, misrouted, wrong_partition (the key hashes to another "
    "partition), no_key (a record without a key on a partition its run does not live in)",
    "runstream-error-message": "what is wrong, naming the field (at most 2000 bytes)",
    "runstream-source-topic": "the topic the record was read from",
    "runstream-source-partition": "its partition (decimal)",
    "runstream-source-offset": "its offset (decimal)",
    "runstream-source-timestamp": "its Kafka timestamp, ms since the epoch (decimal), if it had one",
    "runstream-truncated-from": "only on a record too large even for runs.dlq: its size in bytes "
    "(the value is its first 64 KiB; the whole record stays at the source offset)",
}


def dead_letter_headers(
    dl: DeadLetter, topic: str, partition: int, *, timestamp_ms: int | None = None
) -> list[tuple[str, bytes]]:
    """Headers of a dead letter: why it was refused and where it came from."""
    hdrs = [
        ("runstream-error", dl.reason.encode()),
        ("runstream-error-message", dl.message.encode()[:2000]),
        ("runstream-source-topic", topic.encode()),
        ("runstream-source-partition", str(partition).encode()),
        ("runstream-source-offset", str(dl.offset).encode()),
    ]
    if timestamp_ms is not None:
        hdrs.append(("runstream-source-timestamp", str(timestamp_ms).encode()))
    return hdrs


def emitted(records: Iterable[bytes]) -> set[str]:
    """Ids of the derived events (phase changes, ready tasks) in ``runs.phases`` or ``runs.tasks``
    records (unreadable ones skipped)."""
    out: set[str] = set()
    for raw in records:
        with contextlib.suppress(DecodeError):
            out.update(ev.id for ev in decode_record(raw))
    return out


@dataclass(frozen=True, slots=True)
class Settled:
    """The sends of one checkpoint, all finished: the ``runs.phases`` offset below which every
    phase change is acknowledged, the ``runs.tasks`` one below which every ready task is, and
    how many sends failed (their records are not in Kafka)."""

    phases_offset: int
    lost: int
    tasks_offset: int = 0


#: The context the sends' callbacks run in (they read no context variable): one for all, where
#: ``add_done_callback`` would copy the caller's for each send.
_NO_CONTEXT = contextvars.Context()


class Sends:
    """The sends queued for one checkpoint's records, folded into counts and offsets as each
    finishes, none of them held: its future, the broker's metadata and what aiokafka hangs on
    them are freed as soon as the broker answers. (Held until the checkpoint, five seconds at
    bench_latency's (d) load, they were about half the objects alive in the worker's young
    generation, and each of its collections, 1-2 a second, paused the event loop 2-5 ms.)"""

    __slots__ = ("_all_done", "_phases", "_tasks", "lost", "pending", "phases_offset", "tasks_offset")  # fmt: skip

    def __init__(self, phases_topic: str, tasks_topic: str) -> None:
        self._phases = phases_topic
        self._tasks = tasks_topic
        self.pending = 0  # queued, not finished yet
        self.lost = 0  # failed or cancelled: not in Kafka
        self.phases_offset = 0  # the runs.phases offset below which every send finished is
        self.tasks_offset = 0  # the same on runs.tasks
        self._all_done: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return self.pending

    def add(self, send: Awaitable[RecordMeta]) -> None:
        """Count ``send`` until it finishes."""
        fut = asyncio.ensure_future(send)
        self.pending += 1
        fut.add_done_callback(self._finished, context=_NO_CONTEXT)

    def _finished(self, fut: asyncio.Future[RecordMeta]) -> None:
        self.pending -= 1
        if fut.cancelled() or fut.exception() is not None:
            self.lost += 1
        else:
            meta = fut.result()
            if meta.topic == self._phases:
                self.phases_offset = max(self.phases_offset, meta.offset + 1)
            if meta.topic == self._tasks:
                self.tasks_offset = max(self.tasks_offset, meta.offset + 1)
        if not self.pending and self._all_done is not None and not self._all_done.done():
            self._all_done.set_result(None)

    async def finished(self) -> None:
        """Return once every send added so far has finished."""
        if self.pending:
            self._all_done = asyncio.get_running_loop().create_future()
            await self._all_done


class Outbox:
    """Pending sends of one partition of ``runs.events``."""

    def __init__(
        self,
        sender: LogSender,
        *,
        source_topic: str,
        phases_topic: str,
        dlq_topic: str,
        partition: int,
        refusals_topic: str = "",
        tasks_topic: str = "",
    ) -> None:
        self._sender = sender
        self._refusals_topic = refusals_topic
        self._source_topic = source_topic
        self._phases_topic = phases_topic
        # "" (or the phases topic): ready tasks go with the phase changes, as before runs.tasks.
        self._tasks_topic = tasks_topic or phases_topic
        self._dlq_topic = dlq_topic
        self._partition = partition
        self._pending = Sends(phases_topic, self._tasks_topic)

    async def phase_changes(self, events: Sequence[Event]) -> None:
        """Queue ``events`` (the derived events of one record) in order, one record each:
        ``task.ready`` to ``runs.tasks``, the phase changes to ``runs.phases`` (the caller counts
        them in ``PHASE_CHANGES``). Many for one topic (a commit's) go as one batch: a send per
        record costs more than the batch's appends. A few (one event per record) go one by one,
        into the producer's open batch: a batch of their own per record would wait for the
        broker's answer to the one before."""
        phases, tasks = self._phases_topic, self._tasks_topic
        if len(events) < BATCH_FROM:  # the usual case: no list to build
            for ev in events:
                await self._send(tasks if ev.type is _TASK_READY else phases, ev)
        elif tasks == phases:
            await self._queue(phases, events)
        else:
            await self._queue(phases, [ev for ev in events if ev.type is not _TASK_READY])
            await self._queue(tasks, [ev for ev in events if ev.type is _TASK_READY])

    async def _queue(self, topic: str, events: Sequence[Event]) -> None:
        """Queue ``events`` for ``topic`` in order: one batch from ``BATCH_FROM``, else one by one."""
        if len(events) < BATCH_FROM:
            for ev in events:
                await self._send(topic, ev)
            return
        records = [(ev.run_id.encode(), encode(ev)) for ev in events]
        self._pending.add(await self._sender.send_batch(topic, self._partition, records))

    async def _send(self, topic: str, ev: Event) -> None:
        self._pending.add(
            await self._sender.send(
                topic, ev.run_id.encode(), encode(ev), partition=self._partition, headers=None
            )
        )

    async def dead_letter(
        self,
        dl: DeadLetter,
        headers: Headers,
        *,
        key: bytes | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Queue ``dl`` for ``runs.dlq`` with the source record's own headers, ``key`` and
        timestamp (a header: the dead letter's own timestamp is when it was refused)."""
        hdrs = _foreign(headers) + dead_letter_headers(
            dl, self._source_topic, self._partition, timestamp_ms=timestamp_ms
        )
        send = self._sender.send
        try:
            sent = await send(self._dlq_topic, key, dl.raw, partition=None, headers=hdrs)
        except Exception as exc:
            # Too large even for the dead-letter topic: keep the head of it; the whole record
            # stays in the source topic at the offset the headers name.
            log.error("dead letter too large; sending its first 64 KiB", extra={"error": str(exc)})
            hdrs += [("runstream-truncated-from", str(len(dl.raw)).encode())]
            head = dl.raw[:TRUNCATED_DEAD_LETTER]
            sent = await send(self._dlq_topic, key, head, partition=None, headers=hdrs)
        self._pending.add(sent)

    async def refusals(self, refused: Sequence[tuple[Event, str, str]], offset: int) -> None:
        """Queue one answer per refused event (``events.requests.Refusal``) for ``runs.refusals``,
        key = run id, on this partition's number (nothing when no refusals topic is set)."""
        topic = self._refusals_topic
        if not topic:
            return
        for event, code, reason in refused:
            answer = Refusal(
                event_id=event.id,
                run_id=event.run_id,
                type=str(event.type),
                code=code,
                reason=reason,
                partition=self._partition,
                offset=offset,
                at=event.at,
            )
            self._pending.add(
                await self._sender.send(
                    topic,
                    event.run_id.encode(),
                    _encode_refusal(answer),
                    partition=self._partition,
                    headers=None,
                )
            )

    def take(self) -> Sends:
        """The pending sends, handed over to a checkpoint (the outbox starts empty again)."""
        taken, self._pending = self._pending, Sends(self._phases_topic, self._tasks_topic)
        return taken

    async def settle(self, sends: Sends, phases_offset: int, tasks_offset: int = 0) -> Settled:
        """Wait for every send of ``sends`` to finish (none is left running). ``phases_offset``,
        ``tasks_offset``: the offsets acknowledged before (what the result cannot go below)."""
        await sends.finished()
        return Settled(
            phases_offset=max(phases_offset, sends.phases_offset),
            lost=sends.lost,
            tasks_offset=max(tasks_offset, sends.tasks_offset),
        )

    async def emitted_since(
        self, reader: LogReader, phases_offset: int, tasks_offset: int
    ) -> set[str]:
        """Ids of the derived events already in the log beyond a checkpoint's offsets: the tail
        of ``runs.phases`` from ``phases_offset`` and the tail of ``runs.tasks`` from
        ``tasks_offset`` (read together). The phases tail is read for ready tasks too: a worker
        of a version before ``runs.tasks`` sent them there, and they are not sent again."""
        p, phases, tasks = self._partition, self._phases_topic, self._tasks_topic
        if tasks == phases:
            return emitted(await reader.read_values(phases, p, phases_offset))
        tails = await asyncio.gather(
            reader.read_values(phases, p, phases_offset),
            reader.read_values(tasks, p, tasks_offset),
        )
        return emitted(tails[0]) | emitted(tails[1])


def _foreign(headers: Headers) -> list[tuple[str, bytes]]:
    """The record's own headers, without any ``runstream-*`` header of an earlier refusal."""
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(k, v) for k, v in items if not str(k).startswith("runstream-")]
