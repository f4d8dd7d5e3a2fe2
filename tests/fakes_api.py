"""In-memory implementations of the API's ports (``api.ports``), for tests and the bench.

``FakeOwners`` plays the owner of every partition: a write is applied at once by the real
reducer (as the owner's materializer does before the API answers); ``Fakes.materialize()`` plays
the indexer and the two event streams (index entries, phase changes on a ``FakeFeed``, ready
tasks on another).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from api import (
    ApiDeps,
    CursorExpired,
    InvalidCursor,
    Local,
    PayloadTooLarge,
    Refused,
    Route,
    Written,
)
from api.ports import KeyRecord, OwnedStuck
from api.views import ExecutorSeen, StuckRun
from events import Applied, Event, EventType, Heartbeat, RunState, apply, encode
from indexer import RunIndex
from partition.history import HistoryEntry, HistoryOutcome
from tests.fakes_dlq import FakeDeadLetters, dead_letter


class FakeOwners:
    """``Owners``: this process owns every run (``route`` → ``Local``) unless ``routes`` says
    otherwise; ``write`` appends to ``events`` and, like the owner's materializer, applies it at
    once with the real reducer (``apply_writes=False``: the test applies them with
    ``Fakes.materialize``, and a write then waits until it does)."""

    def __init__(self) -> None:
        self.states: dict[str, RunState] = {}
        self.events: list[Event] = []
        self.derived: list[Event] = []  # the phase changes the reducer derived, in order
        self.routes: dict[str, Route] = {}
        self.fail_with: BaseException | None = None  # injected failure for every read/write
        self.append_fails_with: BaseException | None = None
        self.max_event_bytes = 1 << 20
        self.apply_writes = True
        self._pending: dict[str, asyncio.Future[Written | Refused]] = {}
        self.histories: dict[str, list[HistoryEntry]] = {}  # as the owner records them
        self.now_ms: int | None = None  # the clock of ``stuck`` (None: the wall clock)
        self.peer_urls: list[str] = []  # the other workers ``peers`` names

    def route(self, run_id: str) -> Route:
        return self.routes.get(run_id, Local())

    async def read(self, run_id: str) -> RunState | None:
        if self.fail_with is not None:
            raise self.fail_with
        return self.states.get(run_id)

    async def history(self, run_id: str) -> list[HistoryEntry] | None:
        if self.fail_with is not None:
            raise self.fail_with
        return list(self.histories[run_id]) if run_id in self.states else None

    async def write(self, event: Event) -> Written | Refused:
        if self.fail_with is not None:
            raise self.fail_with
        size = len(encode(event)) + 2
        if size > self.max_event_bytes:
            raise PayloadTooLarge(f"the event is {size} bytes, above {self.max_event_bytes}")
        if self.append_fails_with is not None:
            raise self.append_fails_with
        self.events.append(event)
        if not self.apply_writes:
            fut = self._pending[event.id] = asyncio.get_running_loop().create_future()
            return await fut
        return self.apply(event)

    def _note(self, event: Event, offset: int, outcome: HistoryOutcome, **kw: Any) -> None:
        entry = HistoryEntry(
            offset=offset, index=0, event_id=event.id, type=str(event.type), at=event.at,
            outcome=outcome, **kw,
        )  # fmt: skip
        self.histories.setdefault(event.run_id, []).append(entry)

    def stuck(self, older_than_ms: int) -> OwnedStuck:
        """The owner's ``stuck`` over every active run (one partition, 0), at ``now_ms`` (the
        wall clock when None)."""
        from partition.decisions import stuck

        now = self.now_ms if self.now_ms is not None else int(time.time() * 1000)
        active = [s for s in self.states.values() if not s.run.phase.is_final()]
        runs = [StuckRun(**msgspec.structs.asdict(s)) for s in stuck(active, now, older_than_ms)]
        return OwnedStuck(runs=runs, partitions=(0,), total=1)

    def peers(self) -> tuple[str, ...]:
        return tuple(self.peer_urls)

    def apply(self, event: Event) -> Written | Refused:
        """What the owner's materializer does with ``event``."""
        out = apply(self.states.get(event.run_id), event)
        n = len(self.events) - 1
        if not isinstance(out, Applied):
            decision: Written | Refused = Refused(out.reason)
            if event.run_id in self.states:
                self._note(event, n, HistoryOutcome.REFUSED, reason=out.reason)
        else:
            self.states[event.run_id] = out.state
            self.derived.extend(out.derived)
            decision = Written(out.state, duplicate=out.duplicate)
            outcome = HistoryOutcome.DUPLICATE if out.duplicate else HistoryOutcome.APPLIED
            self._note(event, n, outcome, seq=out.state.seq)
        pending = self._pending.pop(event.id, None)
        if pending is not None and not pending.done():
            pending.set_result(decision)
        return decision


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


class FakeExecutors:
    """``Executors``: a heartbeat is "appended" to ``heartbeats`` and heard at once (``seen``);
    ``fail`` set: ``heartbeat`` raises it instead (Kafka did not acknowledge)."""

    def __init__(self) -> None:
        self.heartbeats: list[Heartbeat] = []
        self.fail: Exception | None = None

    async def heartbeat(self, heartbeat: Heartbeat) -> None:
        if self.fail is not None:
            raise self.fail
        self.heartbeats.append(heartbeat)

    def seen(self, executor_id: str) -> ExecutorSeen | None:
        last = next((h for h in reversed(self.heartbeats) if h.executor_id == executor_id), None)
        if last is None:
            return None
        return ExecutorSeen(
            executor_id=executor_id, lease_ms=last.lease_ms, at=last.at, seen_ms_ago=0, lapsed=False
        )


@dataclass
class FakeCreationKeys:
    """``api.ports.CreationKeys`` in memory: one record per key, made once (the fakes keep no
    run numbers, so none is bound)."""

    records: dict[str, KeyRecord] = field(default_factory=dict)

    async def lookup_key(self, key: str) -> KeyRecord | None:
        got = self.records.get(key)
        return None if got is None else KeyRecord(run_id=got.run_id, digest=got.digest, fresh=False)  # fmt: skip

    async def claim_key(self, key: str, run_id: int, digest: str) -> bool:
        if key in self.records:
            return False
        self.records[key] = KeyRecord(run_id=run_id, digest=digest, fresh=True)
        return True

    async def bind_number(self, key: str, number: int) -> bool:
        return True

    async def number_for_key(self, key: str, root: str, run_id: str) -> int:
        return 0


@dataclass
class Fakes:
    owners: FakeOwners = field(default_factory=FakeOwners)
    ids: FakeIds = field(default_factory=FakeIds)
    index: RunIndex = field(default_factory=RunIndex)
    feed: FakeFeed = field(default_factory=FakeFeed)
    task_feed: FakeFeed = field(default_factory=FakeFeed)
    executors: FakeExecutors = field(default_factory=FakeExecutors)
    creation_keys: FakeCreationKeys = field(default_factory=FakeCreationKeys)
    dead_letters: FakeDeadLetters = field(
        default_factory=lambda: FakeDeadLetters.with_records(dead_letter(0, 0), dead_letter(1, 3))
    )
    ready_flag: bool = True
    now: int | None = None  # fixed clock when set
    applied: int = 0  # how many logged events materialize() has consumed
    published: int = 0  # how many derived events materialize() has published

    def deps(self) -> ApiDeps:
        return ApiDeps(
            owners=self.owners,
            ids=self.ids,
            index=self.index,
            feed=self.feed,
            ready=lambda: {
                "ready": self.ready_flag,
                "not_ready": [] if self.ready_flag else ["the fake says so"],
            },
            clock=lambda: self.now if self.now is not None else int(time.time() * 1000),
            executors=self.executors,
            dead_letters=self.dead_letters,
            creation_keys=self.creation_keys,
            task_feed=self.task_feed,
        )

    def materialize(self) -> None:
        """Apply the events logged since the last call (when the owner did not apply them at
        once), then do what the indexer and the event streams do with the derived events: index
        entries and phase changes on the feed from the phase changes, the ready tasks on the
        ready-task feed."""
        if not self.owners.apply_writes:
            for event in self.owners.events[self.applied :]:
                self.owners.apply(event)
        self.applied = len(self.owners.events)
        for d in self.owners.derived[self.published :]:
            data = d.data
            if d.type is EventType.TASK_READY:
                self.task_feed.publish(d)  # runs.tasks: never seen by the index
                continue
            self.index.apply(
                int(d.run_id),
                data.group,  # type: ignore[union-attr]
                data.phase,  # type: ignore[union-attr]
                data.result,  # type: ignore[union-attr]
                data.seq,  # type: ignore[union-attr]
                at=d.at,
                name=data.name,  # type: ignore[union-attr]
                counter=data.counter,  # type: ignore[union-attr]
            )
            self.feed.publish(d)
        self.published = len(self.owners.derived)
