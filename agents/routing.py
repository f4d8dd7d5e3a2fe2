"""Who decides a run: the ``api.ports.Owners`` of a worker (docs/design.md, "The API: the owner
decides, any worker relays").

Ownership comes from Faust's partition assignor, not a registry of our own: every member puts its
``canonical_url`` (this worker's API URL, ``agents.app.self_url``) into the group metadata, and the
leader hands every member the map *member URL → partitions it actively owns*
(``app.router.external_topics_metadata()``), refreshed at every rebalance. A run's partition is
``partition_for(run_id, partitions)`` — the producer's murmur2, the same as Kafka's default
partitioner. So :meth:`OwnedRuns.route` is a dictionary lookup:

* the partition is owned here (the materializer holds its ``PartitionOwner``) and serving →
  ``Local``; owned here but still loading or catching up → ``Unsettled``;
* the map names another member → ``Remote(url)``; the map names no one, or names this worker
  while the materializer does not hold the partition (assignment in progress) → ``Unsettled``.

The map is as of the last rebalance; during one it is stale, and a relayed request reaching a
worker that no longer owns the partition answers 503 (``api.handlers``), never relays again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from prometheus_client import Histogram

from api.errors import PayloadTooLarge, Unavailable
from api.ports import Local, OwnedStuck, Refused, Remote, Route, Unsettled, Written
from api.views import StuckRun
from events import Event, RunState, encode
from partition.history import HistoryEntry
from partition.owner import PartitionOwner
from partition.placement import partition_for
from partition.waiters import ApplyOutcome, NotServing, PartitionMoved

__all__ = ["OwnedRuns", "UrlMap"]

log = logging.getLogger("runstream.routing")

WRITE_SECONDS = Histogram(
    "runstream_api_write_seconds",
    "API writes at the owner, by stage: append (until the log acknowledged the event) and apply "
    "(then until the owner's materializer judged it)",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0),
)
_APPEND = WRITE_SECONDS.labels("append")
_APPLY = WRITE_SECONDS.labels("apply")

LOCAL = Local()
#: Bytes a commit adds around one event (``[`` and ``]``).
_COMMIT_OVERHEAD = 2

#: ``{url: {topic: [partitions]}}`` as Faust's assignor hands it to every member.
UrlMap = Mapping[str, Mapping[str, Sequence[int]]]


class OwnedRuns:
    """``api.ports.Owners`` over the materializer's partition owners and Faust's ownership map."""

    def __init__(
        self,
        *,
        topic: str,
        self_url: str,
        owners: Callable[[int], PartitionOwner | None],
        url_map: Callable[[], UrlMap],
        append: Callable[[Sequence[Event]], Awaitable[None]],
        max_event_bytes: int,
        apply_timeout: float,
    ) -> None:
        self.topic = topic
        self.self_url = self_url
        self.partitions = 0  # set by ``start`` (the topic exists by then)
        self._owners = owners
        self._url_map = url_map
        self._append = append
        self.max_event_bytes = max_event_bytes
        self.apply_timeout = apply_timeout
        self._seen_map: object = None
        self._urls: dict[int, str] = {}

    # ------------------------------------------------------------------------- routing
    def partition(self, run_id: str) -> int:
        if self.partitions <= 0:
            raise Unavailable("the worker is starting: partitions not known yet")
        return partition_for(run_id, self.partitions)

    def _owner_url(self, p: int) -> str | None:
        current = self._url_map()
        if current is not self._seen_map:  # a new assignment: rebuild partition → url
            self._urls = {
                part: url for url, topics in current.items() for part in topics.get(self.topic, ())
            }
            self._seen_map = current
        return self._urls.get(p)

    def route(self, run_id: str) -> Route:
        p = self.partition(run_id)
        owner = self._owners(p)
        if owner is not None:
            if owner.serving:
                return LOCAL
            return Unsettled(f"partition {p} is loading on this worker")
        url = self._owner_url(p)
        if url is None:
            return Unsettled(f"partition {p} has no owner right now (rebalance)")
        if url == self.self_url:
            return Unsettled(f"partition {p} is being assigned to this worker")
        return Remote(url)

    def _serving(self, run_id: str) -> PartitionOwner:
        p = self.partition(run_id)
        owner = self._owners(p)
        if owner is None or not owner.serving:
            raise Unavailable(f"this worker does not serve partition {p} right now")
        return owner

    # ------------------------------------------------------------------------- reads
    async def read(self, run_id: str) -> RunState | None:
        owner = self._serving(run_id)
        try:
            return await owner.read(run_id)
        except NotServing:
            raise Unavailable(f"partition of run {run_id} is not served here right now") from None

    async def history(self, run_id: str) -> list[HistoryEntry] | None:
        owner = self._serving(run_id)
        try:
            return await owner.history(run_id)
        except NotServing:
            raise Unavailable(f"partition of run {run_id} is not served here right now") from None

    # ------------------------------------------------------------------------- stuck
    def stuck(self, older_than_ms: int) -> OwnedStuck:
        """The stuck runs of every partition this worker owns and serves (``PartitionOwner.stuck``,
        from its live state); a partition loading or moving is left out of ``partitions``."""
        runs: list[StuckRun] = []
        served: list[int] = []
        for p in range(self.partitions):
            owner = self._owners(p)
            if owner is None or not owner.serving:
                continue
            try:
                found = owner.stuck(older_than_ms)
            except NotServing:
                continue
            served.append(p)
            runs += (
                StuckRun(
                    run_id=s.run_id, group=s.group, phase=s.phase, since=s.since, tasks=s.tasks
                )
                for s in found
            )
        return OwnedStuck(runs=runs, partitions=tuple(served), total=self.partitions)

    def peers(self) -> tuple[str, ...]:
        """The other workers owning partitions of the events topic, as the ownership map has
        them (the relay's map)."""
        current = self._url_map()
        return tuple(
            sorted(
                url
                for url, topics in current.items()
                if url != self.self_url and topics.get(self.topic)
            )
        )

    # ------------------------------------------------------------------------- writes
    async def write(self, event: Event) -> Written | Refused:
        size = len(encode(event)) + _COMMIT_OVERHEAD
        if size > self.max_event_bytes:
            raise PayloadTooLarge(
                f"the event this request makes is {size} bytes; the log accepts at most "
                f"{self.max_event_bytes} bytes per record (--max-event-bytes)"
            )
        owner = self._serving(event.run_id)
        try:
            [future] = owner.expect([event.id])
        except NotServing:
            raise Unavailable(
                f"partition of run {event.run_id} is not served here right now"
            ) from None
        started = time.perf_counter()
        try:
            await self._append([event])
        except Exception:
            owner.forget([event.id])
            log.exception("appending to the log failed", extra={"run_id": event.run_id})
            raise Unavailable("could not append the event to the log; retry") from None
        appended = time.perf_counter()
        _APPEND.observe(appended - started)
        try:
            # The future itself is awaited (a timeout cancels it, and forget drops it): each
            # future wrapped around it (wait_for, shield) cost a turn of the event loop more
            # before this request went on, 5 ms a turn on a busy worker.
            async with asyncio.timeout(self.apply_timeout):
                outcome: ApplyOutcome = await future
            _APPLY.observe(time.perf_counter() - appended)
        except TimeoutError:
            owner.forget([event.id])
            raise Unavailable(
                f"the event is in the log but was not applied within {self.apply_timeout:g} s; "
                "read the run to see whether it was"
            ) from None
        except PartitionMoved:
            raise Unavailable(
                "the run's partition moved to another worker before the event was applied; "
                "read the run to see whether it was"
            ) from None
        return _decision(event, outcome)


def _decision(event: Event, outcome: ApplyOutcome) -> Written | Refused:
    if outcome.kind in ("applied", "duplicate") and outcome.state is not None:
        return Written(outcome.state, duplicate=outcome.kind == "duplicate")
    if outcome.kind == "refused":
        return Refused(outcome.reason)
    # The API only appends events it built and checked: a dead letter here is a bug.
    raise RuntimeError(
        f"event {event.id} of run {event.run_id} became a dead letter: {outcome.reason}"
    )
