"""What the API needs from the rest of runstream, as small ports (``typing.Protocol``).

``api/`` may not import ``agents/`` (import-linter), so the agents wire real implementations of
these ports into :class:`ApiDeps`; ``tests/fakes_api.py`` has in-memory ones.

The owner decides (docs/design.md, "The API: the owner decides, any worker relays"): every
request about one run is answered by the worker that owns the run's partition of ``runs.events``.
:meth:`Owners.route` says where that is; :meth:`Owners.read` and :meth:`Owners.write` work only
for a run whose partition this process owns and serves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from api.dlq import DeadLetters
from api.views import ExecutorSeen, StuckRun
from events import Event, Phase, Result, RunState
from events.executors import Heartbeat
from indexer import Order, Page
from partition.history import HistoryEntry

__all__ = [
    "ApiDeps",
    "CreationKeys",
    "DeadLetters",
    "Executors",
    "IdSource",
    "KeyRecord",
    "Local",
    "OwnedStuck",
    "Owners",
    "PhaseFeed",
    "Refused",
    "Remote",
    "Route",
    "RunCounters",
    "RunListing",
    "StoreUnavailable",
    "Unsettled",
    "Written",
]


@dataclass(frozen=True, slots=True)
class Local:
    """This process owns the run's partition and serves it."""


@dataclass(frozen=True, slots=True)
class Remote:
    """Another worker owns the run's partition; ``url`` is its API's base URL."""

    url: str


@dataclass(frozen=True, slots=True)
class Unsettled:
    """No settled owner right now (rebalance, the owner still loading): answer 503."""

    reason: str


Route = Local | Remote | Unsettled


@dataclass(frozen=True, slots=True)
class Written:
    """The owner's materializer applied the event (``duplicate``: it had applied it before)."""

    state: RunState
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Refused:
    """The owner's materializer refused the event, for ``reason`` (the reducer's words)."""

    reason: str


@dataclass(frozen=True, slots=True)
class OwnedStuck:
    """:meth:`Owners.stuck`: the stuck runs of ``partitions`` (those this process serves) out of
    ``total`` partitions of the log."""

    runs: Sequence[StuckRun]
    partitions: tuple[int, ...]
    total: int


class Owners(Protocol):
    """The runs of the partitions this process owns, and where the others live."""

    def route(self, run_id: str) -> Route:
        """Where requests about run ``run_id`` (16-digit form) are decided. Never blocks."""
        ...

    async def read(self, run_id: str) -> RunState | None:
        """The live state of a run of an owned partition (None: no such run).

        Linearizable: it reflects every write that got a 2xx. Raises ``api.errors.Unavailable``
        when the partition is not owned or not caught up with the log."""
        ...

    async def history(self, run_id: str) -> list[HistoryEntry] | None:
        """Every event judged for a run of an owned partition, in log order (None: no such run).
        Linearizable like :meth:`read`; raises ``api.errors.Unavailable`` like it."""
        ...

    async def write(self, event: Event) -> Written | Refused:
        """Append ``event`` to the log and wait until the owner's materializer judged it.

        Raises ``api.errors.PayloadTooLarge`` (before appending) when the encoded event exceeds
        what the log accepts, ``api.errors.Unavailable`` when the partition is not served here,
        moved while waiting, or the apply did not come within the timeout (the outcome is then
        unknown: the event is in the log and may still be applied)."""
        ...

    def stuck(self, older_than_ms: int) -> OwnedStuck:
        """The active runs of the partitions this process owns and serves with no progress for
        ``older_than_ms`` (``partition.decisions.stuck``, from each owner's live state). Never
        raises for a partition not served: it is left out of ``partitions``."""
        ...

    def peers(self) -> tuple[str, ...]:
        """The base URLs of the other workers owning partitions (the ownership map the relay
        uses), for requests every worker answers for its own partitions."""
        ...


class RunListing(Protocol):
    """The run index's listings (``indexer.RunIndex`` satisfies it): eventual, from
    ``runs.phases``."""

    def list_runs(
        self,
        *,
        groups: Collection[str] = (),
        phases: Collection[Phase] | None = None,
        results: Collection[Result] | None = None,
        last_run: bool = False,
        order: Order = Order.DESC,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page:
        """One page of the runs under any of ``groups`` (``indexer.query.list_runs``); raises
        ``indexer.QueryError`` for a bad group, cursor or limit."""
        ...


class StoreUnavailable(Exception):
    """A port's store did not answer (etcd, for run numbers and creation keys): the request may
    succeed later (the API answers 503). The worker's adapters raise it in place of their
    store's own errors (``agents.api_server``), so ``api`` knows none of them."""


class IdSource(Protocol):
    """Monotonic run ids (``datamanager.IdAllocator`` satisfies it)."""

    async def next(self) -> int:
        """A run id never handed out before (≥ 1)."""
        ...


class RunCounters(Protocol):
    """Run numbers per root group (``datamanager.Counters``, through ``agents.api_server``).
    Every method raises :class:`StoreUnavailable` when its store (etcd) does not answer."""

    async def next(self, name: str) -> int:
        """The next number of counter ``name``: dense and increasing across every process."""
        ...

    async def give_back(self, name: str, n: int) -> bool:
        """Return ``n``, the last number taken here, unless a later one was taken (False)."""
        ...

    async def void(self, name: str, n: int, *, run_id: str, reason: str) -> None:
        """Record that ``n`` stays used by a creation of ``run_id`` that failed."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRecord:
    """What a creation key (an ``Idempotency-Key`` of ``POST /runs``, or a request id of
    ``runs.requests``) is recorded with: its run id and the digest of what it creates (None: a
    record kept without one, which any body matches); ``fresh`` when recorded by this call."""

    run_id: int
    digest: str | None
    fresh: bool

    def matches(self, digest: str | None) -> bool:
        return self.digest is None or digest is None or self.digest == digest


class CreationKeys(Protocol):
    """Idempotent creation (``agents.creation.CreationKeys``): one etcd record per key
    (``<run id> <digest>``), made once, shared with ``runs.requests`` (docs/api.md, "Idempotent
    creation"), and the run number bound to it when a try's outcome is unknown. Every method
    raises :class:`StoreUnavailable` when its store (etcd) does not answer."""

    async def lookup_key(self, key: str) -> KeyRecord | None:
        """The record of ``key`` (None: none yet, or it expired)."""
        ...

    async def claim_key(self, key: str, run_id: int, digest: str) -> bool:
        """Record ``key`` → ``run_id``, ``digest`` unless ``key`` has a record (False)."""
        ...

    async def bind_number(self, key: str, number: int) -> bool:
        """Bind run number ``number`` to ``key`` unless one is bound already (False)."""
        ...

    async def number_for_key(self, key: str, root: str, run_id: str) -> int:
        """The run number bound to ``key``, else the next of counter ``root``, bound now."""
        ...


class PhaseFeed(Protocol):
    """The ``runs.phases`` stream (``run.phase_changed``), or the ``runs.tasks`` one
    (``task.ready``), for server-sent events."""

    async def follow(self, after: str | None) -> AsyncIterator[tuple[str, Event]]:
        """An endless iterator of ``(cursor, event)`` (a ``run.phase_changed``, or a
        ``task.ready`` of the ready-task stream), starting just after the event whose cursor is
        ``after`` (``None``: from now on).

        Validates ``after`` *before* returning (so the API can answer with a status before it
        starts streaming): raises ``api.errors.CursorExpired`` (410) when the log no longer holds
        what follows ``after``, ``api.errors.InvalidCursor`` (400) when ``after`` is malformed.
        Cursors are opaque text without line breaks; resuming from the cursor of the last event
        seen yields every later event exactly once. Closing the iterator releases its resources.
        """
        ...


class Executors(Protocol):
    """Executors' heartbeats: any worker appends one, every worker hears all of them."""

    async def heartbeat(self, heartbeat: Heartbeat) -> None:
        """Append ``heartbeat`` to the heartbeats topic (key = its executor id); returns once
        Kafka acknowledged it. Raises ``api.errors.Unavailable`` when it was not."""
        ...

    def seen(self, executor_id: str) -> ExecutorSeen | None:
        """The last heartbeat of ``executor_id`` this worker heard (None: none in the last
        hour). Eventual: a heartbeat is heard a few ms after it was appended."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiDeps:
    """Everything :func:`api.create_api` needs. ``ready`` describes readiness for ``/healthz``:
    a JSON-able dict whose ``ready`` is true once the agents caught up with the log, whose
    ``not_ready`` lists what is not ready (``agents.health.readiness``); ``clock`` gives
    milliseconds since the epoch (event times);
    ``self_url`` is this worker's own base URL as the other workers reach it."""

    owners: Owners
    ids: IdSource
    index: RunListing
    feed: PhaseFeed
    ready: Callable[[], Mapping[str, Any]]
    clock: Callable[[], int]
    self_url: str = ""
    #: Run numbers (``Run.counter``); None leaves the counter a creation carries (0 over HTTP).
    counters: RunCounters | None = None
    #: The scheduler's limit of running runs per group (``max_running_per_group``; 0: off),
    #: for what a queued run waits for (``api.waiting``).
    max_running_per_group: int = 0
    #: Heartbeats (``agents.liveness``); None: the executor routes answer 503.
    executors: Executors | None = None
    #: Records of creation keys (``Idempotency-Key`` on ``POST /runs``); None: a creation with
    #: the header answers 503.
    creation_keys: CreationKeys | None = None
    #: The dead-letter topic (``agents.dlq``); None: the ``/api/v1/dlq`` routes answer 503.
    dead_letters: DeadLetters | None = None
    #: The ready tasks (``runs.tasks``) for ``GET /api/v1/runs/tasks/events``; None: it
    #: answers 503.
    task_feed: PhaseFeed | None = None
