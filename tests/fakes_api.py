"""In-memory implementations of the API's ports (``api.ports``), for tests and the bench.

``FakeRuns`` plays the materializer: ``materialize()`` folds the events the sink received into
run states with the real reducer, and publishes the derived phase changes to a ``FakeFeed``.
Nothing is applied until a test calls it, so read-your-writes can be tested honestly.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from api import ApiDeps, CursorExpired, InvalidCursor
from events import Applied, Event, RunState, apply
from indexer import RunIndex


class FakeRuns:
    """``RunSource``: states by run id."""

    def __init__(self) -> None:
        self.states: dict[str, RunState] = {}
        self.fail_with: BaseException | None = None  # injected failure for every get

    async def get(self, run_id: str) -> RunState | None:
        if self.fail_with is not None:
            raise self.fail_with
        return self.states.get(run_id)


class FakeSink:
    """``EventSink``: keeps every appended event, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.fail_with: BaseException | None = None

    async def append(self, events: Sequence[Event]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.events.extend(events)


class FakeIds:
    """``IdSource``: 1, 2, 3, ... (or from ``start``)."""

    def __init__(self, start: int = 1) -> None:
        self._next = itertools.count(start)

    async def next(self) -> int:
        return next(self._next)


class FakeFeed:
    """``PhaseFeed`` over a list; the cursor of item i is ``str(i)``. ``truncate(n)`` forgets the
    items before n (a log's retention), so older cursors get ``CursorExpired``."""

    def __init__(self) -> None:
        self.items: list[Event] = []
        self.first = 0  # index of the oldest retained item
        self._changed = asyncio.Event()
        self.open_streams = 0
        self.end_after: int | None = None  # each stream ends after this many items (a drop)

    def publish(self, event: Event) -> str:
        self.items.append(event)
        self._changed.set()
        self._changed = asyncio.Event()
        return str(len(self.items) - 1)

    def truncate(self, first: int) -> None:
        self.first = first

    async def follow(self, after: str | None) -> AsyncIterator[tuple[str, Event]]:
        if after is None:
            start = len(self.items)
        else:
            if not (after.isascii() and after.isdigit()) or len(after) > 12:
                raise InvalidCursor(f"malformed cursor {after[:40]!r}")
            start = int(after) + 1
            if start < self.first:
                raise CursorExpired(f"cursor {after} is older than the retained log")
            if start > len(self.items):
                raise InvalidCursor(f"cursor {after} is beyond the end of the log")
        return self._stream(start)

    async def _stream(self, start: int) -> AsyncIterator[tuple[str, Event]]:
        self.open_streams += 1
        try:
            i = start
            while True:
                while i < len(self.items):
                    if self.end_after is not None and i - start >= self.end_after:
                        return
                    yield str(i), self.items[i]
                    i += 1
                await self._changed.wait()
        finally:
            self.open_streams -= 1


@dataclass
class Fakes:
    runs: FakeRuns = field(default_factory=FakeRuns)
    sink: FakeSink = field(default_factory=FakeSink)
    ids: FakeIds = field(default_factory=FakeIds)
    index: RunIndex = field(default_factory=RunIndex)
    feed: FakeFeed = field(default_factory=FakeFeed)
    ready_flag: bool = True
    now: int | None = None  # fixed clock when set
    applied: int = 0  # how many sink events materialize() has consumed

    def deps(self) -> ApiDeps:
        return ApiDeps(
            runs=self.runs,
            sink=self.sink,
            ids=self.ids,
            index=self.index,
            feed=self.feed,
            ready=lambda: self.ready_flag,
            clock=lambda: self.now if self.now is not None else int(time.time() * 1000),
        )

    def materialize(self) -> None:
        """Apply the events appended since the last call, like the materializer and the
        indexer would: states, index entries and phase changes on the feed."""
        for event in self.sink.events[self.applied :]:
            out = apply(self.runs.states.get(event.run_id), event)
            if isinstance(out, Applied):
                self.runs.states[event.run_id] = out.state
                for d in out.derived:
                    data = d.data
                    self.index.apply(
                        int(d.run_id),
                        data.group,
                        data.phase,
                        data.result,
                        data.seq,  # type: ignore[union-attr]
                    )
                    self.feed.publish(d)
        self.applied = len(self.sink.events)
