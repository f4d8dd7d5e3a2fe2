"""The ``runs.phases`` stream (and the ``runs.tasks`` one) for every SSE client of a worker, from
one consumer per topic.

``PhaseHub`` (``api.ports.PhaseFeed``) keeps one bare consumer per process and topic, assigned
every partition of its topic from their end when first followed. A pump task decodes each record
once and offers the events it streams (:func:`is_phase_change`: the ``run.phase_changed`` events
of ``runs.phases``; :func:`is_ready_task`: the ``task.ready`` events of ``runs.tasks``), with
their (partition, offset), to every follower's bounded queue. A follower whose queue is full is
behind by more than ``queue_limit`` events: it is disconnected (its iterator ends), so it resumes
from its last cursor instead of holding the others back or growing the heap.

A cursor is the vector of next offsets of every partition just after the event it names
(``v1.<p0>.<p1>...`` on the phase stream, ``r1.<p0>.<p1>...`` on the ready-task stream: a
cursor of one stream is refused by the other). A follower resuming from a cursor subscribes first (from then on the queue
holds everything past the hub's position), reads what lies between its cursor and that position
with a short-lived consumer of its own, then goes on from the queue, skipping by offset whatever
it already had: every later event exactly once, in order per partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents import quirks
from agents.kafka import assign_at, bare_consumer, log_bounds, partitions_of, read_range
from api.errors import CursorExpired, InvalidCursor, Unavailable
from events.catalogue import Event, EventType
from events.codec import decode_record
from events.errors import DecodeError
from partition.materializer import phase_seq

__all__ = [
    "READY_CURSOR_PREFIX",
    "PhaseHub",
    "decode_feed_cursor",
    "encode_feed_cursor",
    "is_phase_change",
    "is_ready_task",
]

log = logging.getLogger("runstream.phasefeed")

_CURSOR_PREFIX = "v1"  # the phase stream's; the ready-task stream's is READY_CURSOR_PREFIX
READY_CURSOR_PREFIX = "r1"

# (partition, offset, event): what the pump hands every follower; shared, never copied.
_Item = tuple[int, int, Event]


def encode_feed_cursor(positions: Sequence[int], prefix: str = _CURSOR_PREFIX) -> str:
    """``v1.<offset of partition 0>.<offset of partition 1>...`` (next offsets to read)."""
    return ".".join([prefix, *(str(o) for o in positions)])


def decode_feed_cursor(cursor: str, partitions: int, prefix: str = _CURSOR_PREFIX) -> list[int]:
    """Inverse of :func:`encode_feed_cursor`; ``InvalidCursor`` naming what is wrong."""
    parts = cursor.split(".")
    if parts[0] != prefix or len(parts) != partitions + 1:
        raise InvalidCursor(f"malformed cursor {cursor[:60]!r}: not a cursor of this event stream")
    try:
        offsets = [int(p) for p in parts[1:]]
    except ValueError:
        raise InvalidCursor(f"malformed cursor {cursor[:60]!r}: offsets must be integers") from None
    if any(o < 0 for o in offsets):
        raise InvalidCursor(f"malformed cursor {cursor[:60]!r}: negative offset")
    return offsets


def is_phase_change(event: Event) -> bool:
    """The events of the phase stream (``runs.phases``): ``run.phase_changed``. A log written
    before ``runs.tasks`` existed also holds ``task.ready`` there: left out, as they always were."""
    return phase_seq(event) >= 0


def is_ready_task(event: Event) -> bool:
    """The events of the ready-task stream (``runs.tasks``): ``task.ready``."""
    return event.type is EventType.TASK_READY


def _events(value: bytes | None, streams: Callable[[Event], bool]) -> list[Event]:
    if value is None:
        return []
    try:
        return [ev for ev in decode_record(value) if streams(ev)]
    except DecodeError:
        return []  # the materializer writes only valid events; a foreign record is skipped


def _phase_events(value: bytes | None) -> list[Event]:  # bench/bench_sse.py decodes with it
    return _events(value, is_phase_change)


class _Follower:
    """One subscriber's bounded queue. ``ended``: the hub let go of it (closed, failed, or the
    follower lagged by more than ``limit`` items, then ``lagged`` is true too)."""

    __slots__ = ("ended", "items", "lagged", "limit", "wake")

    def __init__(self, limit: int) -> None:
        self.items: deque[_Item] = deque()
        self.limit = limit
        self.wake = asyncio.Event()
        self.ended = False
        self.lagged = False

    def offer(self, item: _Item) -> bool:
        """Queue ``item``; False (and the follower is ended) when the queue is full."""
        if len(self.items) >= self.limit:
            self.lagged = True
            self.end()
            return False
        self.items.append(item)
        self.wake.set()
        return True

    def end(self) -> None:
        self.ended = True
        self.items.clear()
        self.wake.set()


class _Subscription:
    """The iterator ``follow`` returns: ``aclose()`` lets go of the hub's queue even when the
    iteration never started."""

    def __init__(
        self, hub: PhaseHub, follower: _Follower, stream: AsyncGenerator[tuple[str, Event], None]
    ) -> None:
        self._hub = hub
        self._follower = follower
        self._stream = stream

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> tuple[str, Event]:
        return await anext(self._stream)

    async def aclose(self) -> None:
        self._hub._unsubscribe(self._follower)
        await self._stream.aclose()


class PhaseHub:
    """``PhaseFeed`` over one topic (``runs.phases`` unless told): one consumer per process,
    fanned out to followers. ``streams``: which events of the topic it streams;
    ``cursor_prefix``: the first part of its cursors (each stream its own).

    Starts on the first :meth:`follow` (or :meth:`start`). :meth:`close` ends every follower's
    iterator at once and stops the consumer; it is idempotent, and ``follow`` answers 503 after
    it. If the consumer fails, every follower's iterator ends (clients resume from their cursors)
    and the next ``follow`` starts a new consumer."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        queue_limit: int = 10_000,
        poll_ms: int = 500,
        catch_up_ms: int = 200,
        streams: Callable[[Event], bool] = is_phase_change,
        cursor_prefix: str = _CURSOR_PREFIX,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.streams = streams
        self.cursor_prefix = cursor_prefix
        self.queue_limit = queue_limit
        self.poll_ms = poll_ms
        self.catch_up_ms = catch_up_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._pump: asyncio.Task[None] | None = None
        self._positions: list[int] = []  # next offset per partition; all before: fanned out
        self._followers: set[_Follower] = set()
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def followers(self) -> int:
        return len(self._followers)

    async def start(self) -> None:
        """Start the consumer at the end of every partition, unless running. Idempotent."""
        async with self._lock:
            if self._closed:
                raise Unavailable("the event stream is shutting down")
            if self._pump is not None and not self._pump.done():
                return
            stack = contextlib.AsyncExitStack()
            try:
                consumer = await stack.enter_async_context(
                    bare_consumer(self.bootstrap, auto_offset_reset="none")
                )
                await quirks.fetch_promptly(consumer)  # see the quirk (and getmany_promptly)
                parts = await partitions_of(consumer, self.topic)
                if parts != list(range(len(parts))) or not parts:
                    raise RuntimeError(f"topic {self.topic} has no partitions")
                _, ends = await log_bounds(consumer, self.topic, parts)
                assign_at(consumer, self.topic, ends)
            except BaseException:
                await stack.aclose()
                raise
            self._stack, self._consumer = stack, consumer
            self._positions = [ends[p] for p in parts]
            self._pump = asyncio.create_task(self._run(consumer), name=f"hub-{self.topic}")

    async def close(self) -> None:
        """End every follower's iterator now, then stop the consumer. Idempotent."""
        self._closed = True
        self._end_all()
        async with self._lock:
            pump, self._pump = self._pump, None
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(BaseException):
                    await pump
            await self._stop_consumer()

    async def follow(self, after: str | None) -> AsyncIterator[tuple[str, Event]]:
        await self.start()
        consumer = self._consumer
        assert consumer is not None
        if after is None:
            positions = list(self._positions)  # from now: what the hub has not fanned out yet
        else:
            positions = decode_feed_cursor(after, len(self._positions), self.cursor_prefix)
            starts, ends = await log_bounds(consumer, self.topic, range(len(positions)))
            for p, pos in enumerate(positions):
                if pos < starts[p]:
                    raise CursorExpired(
                        f"cursor is older than the retained log (partition {p} starts at {starts[p]})"
                    )
                if pos > ends[p]:
                    raise InvalidCursor(f"cursor is beyond the end of the log (partition {p})")
        if self._closed:
            raise Unavailable("the event stream is shutting down")
        follower = self._subscribe()
        upto = list(self._positions)  # no await since _subscribe: the queue starts right here
        return _Subscription(self, follower, self._stream(follower, positions, upto))

    # ------------------------------------------------------------------------------ followers
    def _subscribe(self) -> _Follower:
        follower = _Follower(self.queue_limit)
        self._followers.add(follower)
        return follower

    def _unsubscribe(self, follower: _Follower) -> None:
        self._followers.discard(follower)

    def _end_all(self) -> None:
        followers, self._followers = self._followers, set()
        for f in followers:
            f.end()

    async def _stream(
        self, follower: _Follower, positions: list[int], upto: list[int]
    ) -> AsyncGenerator[tuple[str, Event], None]:
        try:
            if any(pos < end for pos, end in zip(positions, upto, strict=True)):
                async with bare_consumer(self.bootstrap, auto_offset_reset="none") as consumer:
                    while any(pos < end for pos, end in zip(positions, upto, strict=True)):
                        catch_up = self._catch_up(consumer, follower, positions, upto)
                        async with contextlib.aclosing(catch_up):
                            async for item in catch_up:
                                yield item
                        if not follower.lagged or self._closed:
                            break
                        # Fell behind the hub while catching up: only this client's own consumer
                        # is slow, so take a fresh place in the hub and read on to it.
                        self._unsubscribe(follower)
                        follower = self._subscribe()
                        upto = list(self._positions)
            while True:
                while follower.items and not follower.ended:
                    p, offset, event = follower.items.popleft()
                    if offset < positions[p]:
                        continue  # already read while catching up (or the cursor was ahead)
                    positions[p] = offset + 1
                    yield encode_feed_cursor(positions, self.cursor_prefix), event
                if follower.ended:
                    break
                follower.wake.clear()  # nothing queued and no await since the check: no race
                await follower.wake.wait()
            if follower.lagged:
                log.info("event stream client fell behind; disconnected, it resumes by cursor")
        finally:
            self._unsubscribe(follower)

    async def _catch_up(
        self,
        consumer: AIOKafkaConsumer,
        follower: _Follower,
        positions: list[int],
        upto: list[int],
    ) -> AsyncGenerator[tuple[str, Event], None]:
        """Read ``positions`` → ``upto`` from the log; stop early if the hub lets go."""
        ranges = {p: (pos, upto[p]) for p, pos in enumerate(positions) if pos < upto[p]}
        batches = read_range(consumer, self.topic, ranges, timeout_ms=self.catch_up_ms)
        async with contextlib.aclosing(batches):  # closed here, not by the garbage collector
            async for p, msgs in batches:
                for m in msgs:
                    positions[p] = m.offset + 1
                    for event in _events(m.value, self.streams):
                        yield encode_feed_cursor(positions, self.cursor_prefix), event
                        if self._closed:
                            return
                if follower.ended:
                    return

    # ----------------------------------------------------------------------------- the pump
    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        try:
            # A batch is fanned out in one go, so keep it well under a queue's room; then let
            # the followers run before the next one (a fetch with data at hand never yields).
            batch_size = max(1, min(1000, self.queue_limit // 4))
            while True:
                # Woken three turns of the loop sooner than getmany when records come.
                batch = await quirks.getmany_promptly(
                    consumer, wait=self.poll_ms / 1000, max_records=batch_size
                )
                self._fan_out(batch)
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "the event stream consumer failed; clients resume from their cursors",
                extra={"topic": self.topic},
            )
            self._end_all()
            async with self._lock:
                if self._consumer is consumer:
                    self._pump = None
                    await self._stop_consumer()

    def _fan_out(self, batch: dict[TopicPartition, list[Any]]) -> None:
        # Synchronous on purpose: between two awaits, ``_positions`` is exactly what every
        # follower's queue has received, which is what ``follow`` relies on.
        streams = self.streams
        for tp, msgs in batch.items():
            p = tp.partition
            for m in msgs:
                self._positions[p] = m.offset + 1
                for event in _events(m.value, streams):
                    item = (p, m.offset, event)
                    lagging = [f for f in self._followers if not f.offer(item)]
                    for f in lagging:
                        self._followers.discard(f)

    async def _stop_consumer(self) -> None:
        stack, self._stack, self._consumer = self._stack, None, None
        if stack is not None:
            await stack.aclose()
