"""The load driver: appends a seeded workload in chunks and retries what fails.

Only an append that returned counts as acknowledged (``Load.acked``, in produce order: the
oracle's input). A failed append is retried whole with a fresh producer; whatever of the failed
try reached the log anyway is a producer retry, which event ids must dedupe.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from agents.config import Settings
from agents.producer import EventProducer
from events.catalogue import Event

__all__ = ["Load"]

CHUNK = 400
SUB = 200


@dataclass(slots=True)
class Load:
    """Drives events into ``settings.topic_events``; ``acked`` grows as appends return."""

    settings: Settings
    acked: list[Event] = field(default_factory=list)
    retries: int = 0
    first_failure: float | None = None
    last_failure: float | None = None
    _producer: EventProducer | None = None

    async def _ensure(self) -> EventProducer:
        if self._producer is None:
            producer = EventProducer(self.settings.kafka, self.settings.topic_events)
            try:
                await asyncio.wait_for(producer.start(), timeout=20)
            except BaseException:
                await self._close(producer)
                raise
            self._producer = producer
        return self._producer

    @staticmethod
    async def _close(producer: EventProducer) -> None:
        with contextlib.suppress(Exception, asyncio.TimeoutError):
            await asyncio.wait_for(producer.stop(), timeout=10)

    async def append(self, part: Sequence[Event], *, give_up_after: float = 30.0) -> None:
        """Append ``part`` until it is acknowledged (retrying with a fresh producer)."""
        while True:
            try:
                producer = await self._ensure()
                await asyncio.wait_for(
                    asyncio.gather(
                        *(producer.append(part[i : i + SUB]) for i in range(0, len(part), SUB))
                    ),
                    timeout=give_up_after,
                )
            except Exception:
                self.retries += 1
                now = time.monotonic()
                self.first_failure = self.first_failure or now
                self.last_failure = now
                if self._producer is not None:
                    producer, self._producer = self._producer, None
                    await self._close(producer)
                await asyncio.sleep(0.5)
                continue
            self.acked.extend(part)
            return

    async def drive(
        self,
        events: Sequence[Event],
        *,
        chunk: int = CHUNK,
        pause: float = 0.05,
        after_chunk: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        """Append ``events`` chunk by chunk (each acknowledged before the next is sent, so a
        retry never reorders a run's events); ``after_chunk(i)`` runs after chunk ``i``."""
        try:
            for n, i in enumerate(range(0, len(events), chunk)):
                await self.append(events[i : i + chunk])
                if after_chunk is not None:
                    await after_chunk(n)
                await asyncio.sleep(pause)
        finally:
            if self._producer is not None:
                producer, self._producer = self._producer, None
                await self._close(producer)
