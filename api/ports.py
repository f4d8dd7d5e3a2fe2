"""What the API needs from the rest of runstream, as small ports (``typing.Protocol``).

``api/`` may not import ``agents/`` (import-linter), so the agents wire real implementations of
these ports into :class:`ApiDeps`; ``tests/fakes_api.py`` has in-memory ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from events import Event, RunState
from indexer import RunIndex

__all__ = ["ApiDeps", "EventSink", "IdSource", "PhaseFeed", "RunSource"]


class RunSource(Protocol):
    """The newest state of a run the materializer has applied."""

    async def get(self, run_id: str) -> RunState | None:
        """The state of run ``run_id`` (16-digit form), or None if the run is unknown.

        May lag the log: the API covers its own writes with a cache (read-your-writes)."""
        ...


class EventSink(Protocol):
    """The run event log (``runs.events``)."""

    async def append(self, events: Sequence[Event]) -> None:
        """Append ``events``; return once the log acknowledged all of them, else raise."""
        ...


class IdSource(Protocol):
    """Monotonic run ids (``datamanager.IdAllocator`` satisfies it)."""

    async def next(self) -> int:
        """A run id never handed out before (≥ 1)."""
        ...


class PhaseFeed(Protocol):
    """The ``runs.phases`` stream, for server-sent events."""

    async def follow(self, after: str | None) -> AsyncIterator[tuple[str, Event]]:
        """An endless iterator of ``(cursor, run.phase_changed event)``, starting just after the
        event whose cursor is ``after`` (``None``: from now on).

        Validates ``after`` *before* returning (so the API can answer with a status before it
        starts streaming): raises ``api.errors.CursorExpired`` (410) when the log no longer holds
        what follows ``after``, ``api.errors.InvalidCursor`` (400) when ``after`` is malformed.
        Cursors are opaque text without line breaks; resuming from the cursor of the last event
        seen yields every later event exactly once. Closing the iterator releases its resources.
        """
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiDeps:
    """Everything :func:`api.create_api` needs. ``ready`` is true once the agents caught up
    with the log (``/healthz``); ``clock`` gives milliseconds since the epoch (event times)."""

    runs: RunSource
    sink: EventSink
    ids: IdSource
    index: RunIndex
    feed: PhaseFeed
    ready: Callable[[], bool]
    clock: Callable[[], int]
