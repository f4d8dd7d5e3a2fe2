"""Writes waiting for their apply: what the HTTP API awaits before it answers (docs/design.md,
"The API: the owner decides, any worker relays": a 2xx is the truth).

A request registers the ids of the events it is about to append (:meth:`Waiters.expect`), appends
them, and awaits the futures. The partition's materializer resolves a future when the reducer has
judged that event (applied, duplicate, refused) or when the record carrying it became a dead
letter; the partition's owner fails every pending future with :class:`PartitionMoved` when the
partition is revoked, fenced or reloaded. No Faust here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import orjson

from events.state import RunState

__all__ = ["ApplyOutcome", "NotServing", "PartitionMoved", "Waiters", "envelope_ids"]


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    """What the owner's materializer did with one event.

    ``state``: the run's state after the event (applied / duplicate), the unchanged state
    (refused; ``None`` for an unknown run or a final run no longer in memory), ``None`` (dead).
    ``reason``: the reducer's reason (refused), the dead-letter reason and message (dead).
    """

    kind: Literal["applied", "duplicate", "refused", "dead"]
    state: RunState | None
    reason: str = ""


class PartitionMoved(Exception):
    """The partition was revoked / fenced / reloaded while waiting: outcome unknown here."""


class NotServing(Exception):
    """Not loaded or not caught up yet."""


class Waiters(dict[str, list["asyncio.Future[ApplyOutcome]"]]):
    """event id → the futures waiting for it.

    A plain ``dict`` underneath on purpose: the apply path tests ``if waiters:``, which is the
    C-level length of the dict, so applying costs nothing more while nobody waits.
    """

    __slots__ = ()

    def expect(self, event_ids: Sequence[str]) -> list[asyncio.Future[ApplyOutcome]]:
        """One new future per id, in order. Register before appending the events."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[ApplyOutcome]] = []
        for eid in event_ids:
            fut: asyncio.Future[ApplyOutcome] = loop.create_future()
            self.setdefault(eid, []).append(fut)
            futures.append(fut)
        return futures

    def forget(self, event_ids: Iterable[str]) -> None:
        """Drop every waiter of these ids (the caller timed out or its append failed); a future
        still pending is cancelled, so nobody awaits it for ever. Idempotent."""
        for eid in event_ids:
            for fut in self.pop(eid, ()):
                fut.cancel()

    def resolve(self, event_id: str, outcome: ApplyOutcome) -> None:
        """Resolve the waiters of ``event_id`` (if any) with ``outcome``."""
        for fut in self.pop(event_id, ()):
            if not fut.done():
                fut.set_result(outcome)

    def resolve_dead(self, raw: bytes, reason: str) -> None:
        """A record became a dead letter: resolve the waiters of the envelope ids found in it."""
        for eid in envelope_ids(raw):
            if eid in self:
                self.resolve(eid, ApplyOutcome("dead", None, reason))

    def fail_all(self, why: str) -> None:
        """Fail every pending future with :class:`PartitionMoved` and forget them all."""
        pending = [fut for futs in self.values() for fut in futs]
        self.clear()
        for fut in pending:
            if not fut.done():
                fut.set_exception(PartitionMoved(why))
                fut.exception()  # retrieved: no "never retrieved" log for a caller gone meanwhile


def envelope_ids(raw: bytes) -> list[str]:
    """The ``id`` strings of a record that did not decode, read leniently: an envelope (a JSON
    object) or a commit (a list of them); anything else gives no id."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    items = obj if isinstance(obj, list) else [obj]
    return [i["id"] for i in items if isinstance(i, dict) and isinstance(i.get("id"), str)]
