"""The producer API other services use to append run events (docs/design.md, "How an event
travels", step 1: commits).

``EventProducer.append(events)`` returns once every event is acknowledged by all in-sync
replicas (``acks=all``, idempotent producer). The events of one call that land in one partition
go as one Kafka record, a *commit* (split into several, in order, past ``max_commit_events`` /
``max_commit_bytes``). The partition is the one Kafka's default partitioner picks for the run id
as key (murmur2), so a foreign producer that sends one event per record with the run id as key
lands on the same partition and keeps per-run order.

When a commit is sent is chosen for latency first, batching only under load (the way Nagle's
algorithm or a group commit does it, with no timer): the commit goes to aiokafka in the caller's
own turn of the event loop, and aiokafka's sender writes a request one turn later
(``agents.quirks.send_promptly``) with every commit handed over meanwhile. While a partition's
batch is in flight (one at most, as the idempotent producer requires), its new commits gather
in its next batch, which goes the moment the broker answered. So an idle partition pays no
linger, and a busy one sends as few, large batches as its broker round trip allows; no task
of this class stands between a commit and aiokafka, nor between the answer and the caller.
``linger`` > 0 brings back a fixed window (aiokafka's ``linger_ms``: every batch waits that
long for company), for callers that prefer fewer requests to lower latency. ``in_flight`` > 1
lets the batches of other partitions go to the broker while one is in flight (aiokafka's own
limit is one request per broker).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

from aiokafka import AIOKafkaProducer

from agents import quirks
from events.catalogue import Event
from events.codec import encode
from partition.placement import partition_for

__all__ = ["EventProducer"]


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
        self._max_events = max_commit_events
        self._max_bytes = max_commit_bytes
        # A request is written one turn after a commit is handed over (quirks.send_promptly).
        self._producer = quirks.send_promptly(
            AIOKafkaProducer(
                bootstrap_servers=bootstrap,
                client_id=client_id,
                acks="all",
                enable_idempotence=True,
                linger_ms=round(linger * 1000),
                max_batch_size=1 << 20,
                max_request_size=8 << 20,
            ),
            in_flight=in_flight,
        )
        self._partitions = 0

    async def start(self) -> None:
        await self._producer.start()
        parts = await self._producer.partitions_for(self._topic)
        if not parts:
            raise RuntimeError(f"topic {self._topic!r} has no partitions")
        self._partitions = len(parts)

    async def stop(self) -> None:
        """Send what is pending, wait for it, then close."""
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

        Order is kept per run. Events of one call that land in one partition go in one commit
        (several, in order, past ``max_commit_events`` / ``max_commit_bytes``).
        """
        by_partition: dict[int, list[tuple[str, bytes]]] = {}
        for ev in events:  # encoding first: an invalid event fails the call before anything is sent
            p = partition_for(ev.run_id, self._partitions)
            by_partition.setdefault(p, []).append((ev.run_id, encode(ev)))
        futures: list[asyncio.Future[object]] = []
        for p, encoded in by_partition.items():
            for key, value in self._commits(encoded):
                futures.append(await self._producer.send(self._topic, value, key=key, partition=p))
        # Awaited as they are: each future wrapped around another (gather) costs a turn of the
        # event loop more before the caller goes on.
        if len(futures) == 1:
            await futures[0]
        else:
            await asyncio.gather(*futures)

    def _commits(self, encoded: list[tuple[str, bytes]]) -> Iterator[tuple[bytes, bytes]]:
        """``encoded`` (one partition's, in order) as commits: (key, value) each, a commit a JSON
        array of envelopes (events.codec.decode_record), keyed by its first event's run id."""
        start, size = 0, 1  # "[" and "]", less the comma the first event does not need
        for i, (_, b) in enumerate(encoded):
            if i > start and (i - start >= self._max_events or size + len(b) + 1 > self._max_bytes):
                yield self._commit(encoded[start:i])
                start, size = i, 1
            size += len(b) + 1
        yield self._commit(encoded[start:])

    @staticmethod
    def _commit(encoded: list[tuple[str, bytes]]) -> tuple[bytes, bytes]:
        return encoded[0][0].encode(), b"[" + b",".join(b for _, b in encoded) + b"]"
