"""``runstream dlq list | show | redrive``: the dead letters of ``runs.dlq``, read and acted on.

A dead letter is the original record's bytes plus ``runstream-*`` headers saying why it was
refused and where it came from (``agents.materializer_service.dead_letter_headers``). It is named
``PARTITION:OFFSET`` of the dead-letter topic. The topic is read with a bare aiokafka consumer
(no group, nothing committed) from the beginning, or from ``--since``, to where it ended when
the command started.

``redrive`` appends the selected records' original bytes back to their source topic, keyed by
the original key or else by the run id of their first event, so the producer's murmur2
partitioner puts them on the run's partition (never the source partition's number: a record
refused for being on the wrong partition goes where its key belongs). Repeating it is safe: every
event carries an id, and the materializer counts an event it has applied before as a duplicate.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from tqdm import tqdm

from agents.config import Settings
from agents.kafka import Record, bare_consumer, log_bounds, partitions_of, read_range
from api.dlq import (
    MAX_ITEMS,
    DeadLetter,
    DeadLetterPage,
    DeadLetterSummary,
    DlqCursor,
    DlqSelection,
    PageBuilder,
    RedriveItem,
    RedriveResult,
    parse_time,
    sort_key,
    value_of,
)
from api.errors import Unavailable
from events.codec import decode_record, encode
from events.errors import DecodeError
from partition.placement import key_partition, partition_for

__all__ = [
    "ROUTING_REASONS",
    "DeadLetterRecord",
    "DeadLetterTopic",
    "Redrive",
    "RedriveReport",
    "Selection",
    "decoded",
    "describe",
    "find",
    "held",
    "parse_id",
    "parse_time",
    "read",
    "redrive",
    "redrive_plan",
    "selection_from",
]

_HEADER_PREFIX = "runstream-"
#: Reasons of records refused for where they were, not for what they hold: redrive sends them to
#: the partition of their run (partition.materializer: route_check, _misrouted).
ROUTING_REASONS = frozenset({"misrouted", "wrong_partition", "no_key"})


def parse_id(text: str) -> tuple[int | None, int]:
    """``PARTITION:OFFSET`` → (partition, offset); a bare ``OFFSET`` → (None, offset)."""
    part, sep, off = text.partition(":")
    try:
        return (int(part), int(off)) if sep else (None, int(part))
    except ValueError:
        raise ValueError(
            f"bad dead letter {text!r}: want PARTITION:OFFSET as `list` prints it"
        ) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterRecord:
    """One record of the dead-letter topic."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v.decode("utf-8", "replace")
        return None

    @property
    def id(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)

    @property
    def reason(self) -> str:
        return self.header("runstream-error") or "?"

    @property
    def source_topic(self) -> str | None:
        return self.header("runstream-source-topic")

    @property
    def source_partition(self) -> int | None:
        raw = self.header("runstream-source-partition")
        return int(raw) if raw is not None and raw.isdigit() else None

    @property
    def source_offset(self) -> int | None:
        raw = self.header("runstream-source-offset")
        return int(raw) if raw is not None and raw.isdigit() else None

    @property
    def truncated_from(self) -> int | None:
        raw = self.header("runstream-truncated-from")
        return int(raw) if raw is not None and raw.isdigit() else None

    def original_headers(self) -> list[tuple[str, bytes]]:
        """The headers the original record had (every ``runstream-*`` one removed)."""
        return [(k, v) for k, v in self.headers if not k.startswith(_HEADER_PREFIX)]

    def summary(self) -> dict[str, object]:
        """What ``list --json`` prints for this dead letter."""
        return {
            "id": self.id,
            "partition": self.partition,
            "offset": self.offset,
            "time": self.time.isoformat(timespec="milliseconds"),
            "reason": self.reason,
            "message": self.header("runstream-error-message"),
            "source_topic": self.source_topic,
            "source_partition": self.source_partition,
            "source_offset": self.source_offset,
            "size": len(self.value),
            "truncated_from": self.truncated_from,
            "key": None if self.key is None else self.key.decode("utf-8", "replace"),
        }

    def line(self) -> str:
        """One line of ``list``: id, time, reason, source topic/partition@offset, size."""
        src = f"{self.source_topic}/{self.source_partition}@{self.source_offset}"
        size = f"{len(self.value)} B" + (
            f" (truncated from {self.truncated_from})" if self.truncated_from else ""
        )
        when = self.time.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return f"{self.id:<10} {when}  {self.reason:<20} {src:<32} {size}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """Which dead letters a command acts on (all of them when every field is empty)."""

    reasons: frozenset[str] = frozenset()
    source_partitions: frozenset[int] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    ids: frozenset[tuple[int, int]] = frozenset()

    def matches(self, r: DeadLetterRecord) -> bool:
        return (
            (not self.reasons or r.reason in self.reasons)
            and (not self.source_partitions or r.source_partition in self.source_partitions)
            and (self.since is None or r.time >= self.since)
            and (self.until is None or r.time < self.until)
            and (not self.ids or (r.partition, r.offset) in self.ids)
        )


def _consumer(settings: Settings) -> Any:
    return bare_consumer(
        settings.kafka,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )


def _record(partition: int, m: Record) -> DeadLetterRecord:
    return DeadLetterRecord(
        partition=partition,
        offset=m.offset,
        timestamp_ms=int(m.timestamp or 0),
        key=m.key,
        value=bytes(m.value or b""),
        headers=tuple((str(k), bytes(v or b"")) for k, v in (m.headers or ())),
    )


async def read(
    settings: Settings,
    selection: Selection = Selection(),  # frozen: a shared default is safe
    *,
    on_progress: Callable[[int], object] | None = None,
) -> AsyncIterator[DeadLetterRecord]:
    """The selected dead letters, per partition in offset order, up to where the topic ended when
    the call started. ``on_progress(n)`` is told of every batch of ``n`` records read."""
    async with _consumer(settings) as consumer:
        parts = await partitions_of(consumer, settings.topic_dlq)
        starts, ends = await log_bounds(consumer, settings.topic_dlq, parts)
        if selection.since is not None and parts:
            # Dead letters are appended in time order: start at the first one not older.
            at = int(selection.since.timestamp() * 1000)
            found = await consumer.offsets_for_times(
                {TopicPartition(settings.topic_dlq, p): at for p in parts}
            )
            starts = {
                tp.partition: (o.offset if o else ends[tp.partition]) for tp, o in found.items()
            }
        ranges = {p: (starts[p], ends[p]) for p in parts}
        async for partition, msgs in read_range(consumer, settings.topic_dlq, ranges):
            for m in msgs:
                r = _record(partition, m)
                if selection.matches(r):
                    yield r
            if on_progress is not None:
                on_progress(len(msgs))


async def held(settings: Settings) -> int:
    """How many records the dead-letter topic holds now (the progress bar's total)."""
    async with _consumer(settings) as consumer:
        parts = await partitions_of(consumer, settings.topic_dlq)
        starts, ends = await log_bounds(consumer, settings.topic_dlq, parts)
        return sum(ends[p] - starts[p] for p in parts)


async def find(settings: Settings, partition: int | None, offset: int) -> DeadLetterRecord:
    """The dead letter at ``partition:offset`` (``partition`` may be None when the topic has one).
    Raises ``LookupError`` when there is none, ``ValueError`` when the name is ambiguous."""
    async with _consumer(settings) as consumer:
        parts = await partitions_of(consumer, settings.topic_dlq)
        if partition is None:
            if len(parts) != 1:
                raise ValueError(
                    f"{settings.topic_dlq} has {len(parts)} partitions: "
                    "name the dead letter as PARTITION:OFFSET, as `list` prints it"
                )
            partition = parts[0]
        starts, ends = await log_bounds(
            consumer, settings.topic_dlq, [partition] if partition in parts else []
        )
        if partition not in parts or not starts[partition] <= offset < ends[partition]:
            raise LookupError(f"no dead letter {partition}:{offset} in {settings.topic_dlq}")
        ranges = {partition: (offset, offset + 1)}
        async for _, msgs in read_range(consumer, settings.topic_dlq, ranges, max_records=1):
            return _record(partition, msgs[0])
        raise LookupError(f"no dead letter {partition}:{offset} in {settings.topic_dlq}")


def decoded(r: DeadLetterRecord, *, max_event_bytes: int) -> tuple[list[Any] | None, str | None]:
    """(the record's events as JSON envelopes in their current version, None) or (None, the
    decoding error). A record above ``max_event_bytes`` is still decoded, to show it."""
    try:
        events = decode_record(r.value, max_size=max(max_event_bytes, len(r.value)))
    except DecodeError as exc:
        return None, f"{exc.reason}: {exc.message}"
    return [orjson.loads(encode(e)) for e in events], None


def describe(r: DeadLetterRecord, *, max_event_bytes: int) -> dict[str, object]:
    """What ``show`` prints: headers, key and the record decoded (or the error and its start)."""
    events, error = decoded(r, max_event_bytes=max_event_bytes)
    out: dict[str, object] = {
        **r.summary(),
        "headers": {k: v.decode("utf-8", "replace") for k, v in r.headers},
        "decoded": events,
    }
    if error is not None:
        out["decode_error"] = error
        out["raw_start"] = r.value[:512].decode("utf-8", "replace")
    return out


# ------------------------------------------------------------------------------------ redrive
@dataclass(frozen=True, slots=True, kw_only=True)
class Redrive:
    """What redriving one dead letter does: send ``value`` to ``topic`` with ``key``, or skip."""

    record: DeadLetterRecord
    topic: str | None = None
    key: bytes | None = None
    skip: str | None = None  # why it is not redriven
    # Where the producer's murmur2 partitioner puts it (when the partition count is known);
    # only said, never sent: the send names no partition.
    partition: int | None = None


def redrive_plan(
    r: DeadLetterRecord, *, max_event_bytes: int, partitions: int | None = None
) -> Redrive:
    """Decide how to redrive ``r`` (pure). Skipped: no source topic, a truncated copy (the whole
    record is still in the source topic), or bytes this runstream still refuses (redriving them
    would only make a new dead letter).

    A record refused for where it was (``ROUTING_REASONS``) is keyed so that the producer's
    murmur2 partitioner puts it where its run lives: ``wrong_partition`` keeps its key (it names
    the run's partition), ``no_key`` and ``misrouted`` get the run id of their first event.
    With ``partitions`` (the source topic's count) it also checks that: a record whose events
    are for runs of several partitions, or that would land on its source partition again, is
    skipped; a kept key that does not lead to the runs' partition is replaced by the run id."""
    if not r.source_topic:
        return Redrive(record=r, skip="no runstream-source-topic header")
    if r.truncated_from is not None:
        return Redrive(record=r, skip=f"a truncated copy of a {r.truncated_from}-byte record")
    try:
        events = decode_record(r.value, max_size=max_event_bytes)
    except DecodeError as exc:
        why = f"{exc.reason}: {exc.message}"
        if r.reason == "no_key":
            why = f"no key, and no run id to key it by: its events cannot be read ({why})"
            return Redrive(record=r, skip=why[:300])
        return Redrive(record=r, skip=f"still refused: {why}"[:300])
    # Kafka key = run id: the original key, else the run id of the record's first event (the
    # dead letters of older workers carry no key; a misrouted record's key is the bug itself);
    # the producer's partitioner does the rest.
    run_key = events[0].run_id.encode()
    key = r.key if r.key and r.reason not in ("misrouted", "no_key") else run_key
    if not partitions or r.reason not in ROUTING_REASONS:
        return Redrive(record=r, topic=r.source_topic, key=key)
    homes = sorted({partition_for(e.run_id, partitions) for e in events})
    if len(homes) > 1:
        return Redrive(
            record=r,
            skip=f"its events are for runs of partitions {', '.join(map(str, homes))}: "
            "send them again one record per run, key = run id",
        )
    (home,) = homes
    if key_partition(key, partitions) != home:
        key = run_key
    if home == r.source_partition:
        return Redrive(record=r, skip=f"its run belongs to partition {home}, where it was refused")
    return Redrive(record=r, topic=r.source_topic, key=key, partition=home)


@dataclass(slots=True, kw_only=True)
class RedriveReport:
    redriven: int = 0
    skipped: int = 0
    skips: list[tuple[str, str]] = field(default_factory=list)  # (id, why)
    by_topic: dict[str, int] = field(default_factory=dict)


async def redrive(
    settings: Settings,
    selection: Selection,
    *,
    dry_run: bool = False,
    progress: bool = True,
    on_plan: Callable[[Redrive], object] | None = None,
) -> RedriveReport:
    """Append the selected dead letters' original bytes (original key and headers, ``runstream-*``
    headers removed) to their source topics; returns the counts. Raises the first send error.
    Safe to repeat: the materializer applies an event id once."""
    report = RedriveReport()
    total = await held(settings)
    producer: AIOKafkaProducer | None = None
    if not dry_run:
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka,
            client_id="runstream-redrive",
            acks="all",
            enable_idempotence=True,
            max_request_size=max(8 << 20, settings.max_event_bytes + (64 << 10)),
        )
        await producer.start()
    bar = tqdm(total=total, unit="rec", desc="redrive", disable=not progress, file=sys.stderr)
    pending: list[asyncio.Future[object]] = []
    counts: dict[str, int] = {}  # source topic → its partition count (routing reasons only)
    try:
        async for r in read(settings, selection, on_progress=bar.update):
            topic = r.source_topic
            if topic and r.reason in ROUTING_REASONS and topic not in counts:
                counts[topic] = await _partition_count(settings, topic)
            plan = redrive_plan(
                r,
                max_event_bytes=settings.max_event_bytes,
                partitions=counts.get(topic or "") or None,
            )
            if on_plan is not None:
                on_plan(plan)
            if plan.skip is not None or plan.topic is None:
                report.skipped += 1
                report.skips.append((r.id, plan.skip or "no topic"))
            else:
                if producer is not None:
                    pending.append(
                        await producer.send(
                            plan.topic, r.value, key=plan.key, headers=r.original_headers()
                        )
                    )
                report.redriven += 1
                report.by_topic[plan.topic] = report.by_topic.get(plan.topic, 0) + 1
            bar.set_postfix(redriven=report.redriven, skipped=report.skipped, refresh=False)
        if pending:
            await asyncio.gather(*pending)
    finally:
        bar.close()
        if producer is not None:
            await producer.stop()
    return report


async def _partition_count(settings: Settings, topic: str) -> int:
    """How many partitions ``topic`` has (0: no such topic)."""
    async with _consumer(settings) as consumer:
        return len(await partitions_of(consumer, topic))


def selection_from(
    *,
    reasons: Sequence[str] | None,
    source_partitions: Sequence[int] | None,
    since: str | None,
    until: str | None,
    ids: Sequence[str] | None = None,
) -> Selection:
    """A ``Selection`` from the command line's values. Raises ``ValueError`` on a bad value."""
    parsed = [parse_id(i) for i in ids or ()]
    if any(p is None for p, _ in parsed):
        raise ValueError("name the dead letters to redrive as PARTITION:OFFSET")
    return Selection(
        reasons=frozenset(reasons or ()),
        source_partitions=frozenset(source_partitions or ()),
        since=parse_time(since) if since else None,
        until=parse_time(until) if until else None,
        ids=frozenset((p, o) for p, o in parsed if p is not None),
    )


# ------------------------------------------------------------------------------ over HTTP
def _selection(s: DlqSelection) -> Selection:
    return Selection(
        reasons=s.reasons,
        source_partitions=s.source_partitions,
        since=s.since,
        until=s.until,
        ids=s.ids,
    )


def _summary(r: DeadLetterRecord) -> DeadLetterSummary:
    return DeadLetterSummary(**r.summary())  # type: ignore[arg-type]


class DeadLetterTopic:
    """``api.ports.DeadLetters`` on ``runs.dlq``: what ``runstream dlq`` does, for the API and
    the console. Each call reads the topic with its own bare consumer (nothing committed)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def page(
        self, selection: DlqSelection, *, limit: int, after: DlqCursor | None
    ) -> DeadLetterPage:
        pages = PageBuilder(limit, after)
        try:
            async for r in read(self.settings, _selection(selection)):
                pages.add(sort_key(r.timestamp_ms, r.partition, r.offset), _summary(r))
        except _KAFKA_TROUBLE as exc:  # Kafka did not answer: the client retries
            raise _unavailable(exc) from exc
        return pages.page()

    async def get(self, partition: int, offset: int) -> DeadLetter | None:
        try:
            r = await find(self.settings, partition, offset)
        except LookupError:
            return None
        except _KAFKA_TROUBLE as exc:
            raise _unavailable(exc) from exc
        events, error = decoded(r, max_event_bytes=self.settings.max_event_bytes)
        return DeadLetter(
            **r.summary(),  # type: ignore[arg-type]
            headers={k: v.decode("utf-8", "replace") for k, v in r.headers},
            truncated=r.truncated_from is not None,
            value=value_of(r.value),
            decoded=events,
            decode_error=error,
        )

    async def redrive(self, selection: DlqSelection, *, dry_run: bool) -> RedriveResult:
        items: list[RedriveItem] = []
        seen = 0

        def note(p: Redrive) -> None:
            nonlocal seen
            seen += 1
            if len(items) >= MAX_ITEMS:
                return
            if p.skip is not None or p.topic is None:
                items.append(RedriveItem(id=p.record.id, outcome="skipped", why=p.skip))
            else:
                outcome: Literal["redriven", "would_redrive"] = (
                    "would_redrive" if dry_run else "redriven"
                )
                items.append(
                    RedriveItem(
                        id=p.record.id, outcome=outcome, topic=p.topic, partition=p.partition
                    )
                )

        try:
            report = await redrive(
                self.settings, _selection(selection), dry_run=dry_run, progress=False, on_plan=note
            )
        except _KAFKA_TROUBLE as exc:
            raise _unavailable(exc) from exc
        return RedriveResult(
            dry_run=dry_run,
            redriven=report.redriven,
            skipped=report.skipped,
            by_topic=report.by_topic,
            items=items,
            items_truncated=seen > len(items),
        )


#: What a read or a send of the dead-letter topic raises when Kafka does not answer (503).
_KAFKA_TROUBLE = (KafkaError, OSError, TimeoutError)


def _unavailable(exc: BaseException) -> Unavailable:
    return Unavailable(f"the dead-letter topic could not be read: {type(exc).__name__}: {exc}")
