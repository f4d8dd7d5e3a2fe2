"""The producer API other services use to append run events (docs/design.md, "How an event
travels", step 1: commits).

``EventProducer.append(events)`` returns once every event is acknowledged by all in-sync
replicas (``acks=all``, idempotent producer). Concurrent appends are grouped per partition into
one Kafka record, a *commit*. The partition is the one Kafka's default partitioner picks for the
run id as key (murmur2), so a foreign producer that sends one event per record with the run id as
key lands on the same partition and keeps per-run order.

When a commit is sent is chosen for latency first, batching only under load (the way Nagle's
algorithm or a group commit does it, with no timer): a partition with no commit in flight sends
at once (after the appends of the same event-loop turn joined it); while one is in flight, new
appends wait and go together as the next commit the moment it is acknowledged, or sooner when
they reach ``max_commit_events`` / ``max_commit_bytes``. So an idle partition pays no linger,
and a busy one sends as few, large records as its broker round trip allows. ``linger`` > 0
brings back a fixed window (every commit waits that long for company), for callers that prefer
fewer records to lower latency. A commit's request is written the moment it is handed to
aiokafka (``agents.quirks.send_promptly``); ``in_flight`` > 1 lets the commits of other
partitions go to the broker while one is in flight (aiokafka's own limit is one request per
broker).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer

from agents import quirks
from events.catalogue import Event
from events.codec import encode
from partition.placement import partition_for

__all__ = ["EventProducer"]


@dataclass(slots=True)
class _Pending:
    encoded: list[bytes] = field(default_factory=list)
    first_run_id: str = ""
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    size: int = 0
    timer: asyncio.Handle | None = None


class EventProducer:
    """Appends events to one topic; start with ``await start()`` or ``async with``."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        linger: float = 0.0,
        max_commit_events: int = 1000,
        max_commit_bytes: int = 512 * 1024,
        client_id: str = "runstream-producer",
        in_flight: int = 1,
    ) -> None:
        self._topic = topic
        self._linger = linger
        self._max_events = max_commit_events
        self._max_bytes = max_commit_bytes
        # A request is written the moment a commit is handed over (agents.quirks.send_promptly).
        self._producer = quirks.send_promptly(
            AIOKafkaProducer(
                bootstrap_servers=bootstrap,
                client_id=client_id,
                acks="all",
                enable_idempotence=True,
                linger_ms=0,  # the commit is the batch: aiokafka adds no wait of its own
                max_batch_size=1 << 20,
                max_request_size=8 << 20,
            ),
            in_flight=in_flight,
        )
        self._partitions = 0
        self._pending: dict[int, _Pending] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        self._sending: dict[int, int] = {}  # partition → commits sent and not yet acknowledged

    async def start(self) -> None:
        await self._producer.start()
        parts = await self._producer.partitions_for(self._topic)
        if not parts:
            raise RuntimeError(f"topic {self._topic!r} has no partitions")
        self._partitions = len(parts)

    async def stop(self) -> None:
        """Flush what is pending, wait for it, then close."""
        for p in list(self._pending):
            self._flush(p)
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        await self._producer.stop()

    async def __aenter__(self) -> EventProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def partitions(self) -> int:
        return self._partitions

    async def append(self, events: Sequence[Event]) -> None:
        """Append ``events``; returns when all are acknowledged. Raises the Kafka error otherwise.

        Order is kept per run. Events of one call that land in one partition go in one commit.
        """
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        by_partition: dict[int, list[tuple[str, bytes]]] = {}
        for ev in events:  # encoding first: an invalid event fails the call before anything is sent
            p = partition_for(ev.run_id, self._partitions)
            by_partition.setdefault(p, []).append((ev.run_id, encode(ev)))
        for p, encoded in by_partition.items():
            pend = self._pending.get(p)
            if (
                pend is not None
                and pend.size + sum(len(b) + 1 for _, b in encoded) > self._max_bytes
            ):
                self._flush(p)  # keep every commit under the size the consumers accept
                pend = None
            if pend is None:
                pend = self._pending[p] = _Pending(first_run_id=encoded[0][0])
                if self._linger > 0:
                    pend.timer = loop.call_later(self._linger, self._flush, p)
                elif not self._sending.get(p):
                    # Idle partition: a task sends it, taking it at its first step, so that the
                    # appends of this turn of the event loop join it.
                    self._start(p, pend, take=True)
                # else: sent when the commit in flight is acknowledged (_send)
            fut: asyncio.Future[None] = loop.create_future()
            pend.encoded.extend(b for _, b in encoded)
            pend.size += sum(len(b) + 1 for _, b in encoded)
            pend.waiters.append(fut)
            futures.append(fut)
            if len(pend.encoded) >= self._max_events or pend.size >= self._max_bytes:
                self._flush(p)
        # Each future wrapped around another (gather) costs a turn of the event loop more before
        # the caller goes on: one awaited as it is when the events went to one partition.
        if len(futures) == 1:
            await futures[0]
        else:
            await asyncio.gather(*futures)

    def _flush(self, partition: int) -> None:
        """Send the partition's pending commit now (full, its linger is over, or stopping)."""
        pend = self._pending.pop(partition, None)
        if pend is None:
            return
        if pend.timer is not None:
            pend.timer.cancel()
        self._start(partition, pend)

    def _start(self, partition: int, pend: _Pending, *, take: bool = False) -> None:
        self._sending[partition] = self._sending.get(partition, 0) + 1
        task = asyncio.ensure_future(self._send(partition, pend, take=take))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _send(self, partition: int, pend: _Pending | None, *, take: bool = False) -> None:
        """Send ``pend``, then, in this same task, each commit that gathered while the last one
        was in flight, as long as no other commit of the partition is: a task started per commit
        would cost a turn of the event loop more before each is sent. With ``take``, ``pend`` is
        still the partition's pending commit, taken at this task's first step (so that the
        appends of the turn that started it join it), unless it was sent meanwhile (it filled
        up): then a later commit is not this task's to send, or it would go before this one."""
        try:
            if take:
                if self._pending.get(partition) is not pend:
                    return
                del self._pending[partition]
            while pend is not None:  # (a pending commit's linger timer is cancelled: _flush)
                await self._send_commit(partition, pend)
                pend = None
                waiting = self._pending.get(partition)
                if self._sending[partition] == 1 and waiting is not None and waiting.timer is None:
                    pend = self._pending.pop(partition)  # gathered while that one was in flight
        finally:
            self._sending[partition] -= 1

    async def _send_commit(self, partition: int, pend: _Pending) -> None:
        try:
            # A commit is a JSON array of envelopes (events.codec.decode_record).
            value = b"[" + b",".join(pend.encoded) + b"]"
            key = pend.first_run_id.encode()
            await self._producer.send_and_wait(self._topic, value, key=key, partition=partition)
        except Exception as exc:  # every waiter of this commit learns of the failure
            for fut in pend.waiters:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            for fut in pend.waiters:
                if not fut.done():
                    fut.set_result(None)
