"""What the owner answered to one event a producer appended (``runstream runs report``).

Two sources, whichever speaks first: the run's history over the HTTP API (every event judged for
the run, with its outcome: linearizable, from the run's owner), and ``runs.refusals`` (the answer
to a refused event, also for a run this partition does not know, which has no history). The
refusal's partition is the run's, read from where it ended before the event was appended.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import msgspec

from agents import kafka
from agents.config import Settings
from api.client import AsyncClient
from api.errors import ApiError
from events import EventType
from events.requests import Refusal
from partition.admission import refusal_code
from partition.placement import partition_for

__all__ = ["Answer", "await_answer"]

_refusal = msgspec.json.Decoder(Refusal)


@dataclass(frozen=True, slots=True)
class Answer:
    """``outcome``: applied, duplicate, refused, or none (no answer in time)."""

    event_id: str
    outcome: str
    code: str = ""
    reason: str = ""

    def line(self) -> str:
        if self.outcome == "refused":
            return f"refused ({self.code}): {self.reason}"
        if self.outcome == "none":
            return f"no answer yet for event {self.event_id}: see `runstream runs history`"
        if self.outcome == "duplicate":
            return "duplicate: an event with this id was applied before (nothing changed)"
        return "applied"

    @property
    def exit_code(self) -> int:
        return {"applied": 0, "duplicate": 0, "refused": 1}.get(self.outcome, 3)


async def await_answer(
    settings: Settings,
    run_id: str,
    event_id: str,
    ends: dict[int, int],
    *,
    within: float,
    since_offset: int = 0,
) -> Answer:
    """The answer to ``event_id`` of run ``run_id``, waiting up to ``within`` seconds.
    ``since_offset``: where the run's partition of the events topic ended before the event was
    appended; the history's entries before it are an earlier append of the same id (a retried
    report is answered ``duplicate``, not with the first append's ``applied``)."""
    deadline = time.monotonic() + within
    partition = partition_for(run_id, max(1, len(ends) or settings.partitions))
    start = ends.get(partition, 0)
    async with AsyncClient(settings.url, token=settings.api_token) as client:
        while True:
            found = await _from_history(client, run_id, event_id, since_offset)
            if found is None:
                found = await _from_refusals(settings, partition, start, event_id)
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                return Answer(event_id, "none")
            await asyncio.sleep(0.2)


async def _from_history(client: AsyncClient, run_id: str, event_id: str, since_offset: int = 0) -> Answer | None:  # fmt: skip
    try:
        history = await client.run_history(run_id)
    except (ApiError, OSError):
        return None  # no such run here yet, or no API to ask: runs.refusals may know
    for entry in history.events:
        if entry.event_id == event_id and entry.offset >= since_offset:
            outcome, reason, code = str(entry.outcome), entry.reason, ""
            if outcome == "refused":
                with contextlib.suppress(ValueError):
                    code = str(refusal_code(EventType(entry.type), reason))
            return Answer(event_id, outcome, code, reason)
    return None


async def _from_refusals(settings: Settings, partition: int, start: int, event_id: str) -> Answer | None:  # fmt: skip
    async with kafka.bare_consumer(settings.kafka) as consumer:
        async for _, records in kafka.read_range(
            consumer, settings.topic_refusals, {partition: (start, None)}, timeout_ms=200
        ):
            for r in records:
                if r.value is None:
                    continue
                with contextlib.suppress(msgspec.DecodeError):
                    answer = _refusal.decode(r.value)
                    if answer.event_id == event_id:
                        return Answer(event_id, "refused", answer.code, answer.reason)
    return None
