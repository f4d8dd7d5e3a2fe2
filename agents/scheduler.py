"""The scheduler: starts the oldest queued run of a group while fewer than N of its runs run.

Agola's scheduler, made safe for many workers (docs/design.md, "What a run is": queued runs start
by policy).

Who schedules a group. A *group* is a run's full group path (``/project/p/branch/feature`` and
``/project/p/branch/feature02`` are two groups, and neither contains the other). Group ``g`` is
scheduled by the worker that owns partition ``partition_for(g, P)`` of ``runs.events`` (the same
murmur2 as run ids): Faust's assignment already gives every partition one owner, moves it at
every rebalance and after a worker dies, and costs no extra lock, lease or keep-alive. An etcd
lease lock per group shard would add a TTL's wait after a kill and a keep-alive per shard, and
would still not fence a holder that lost its lease without noticing.

Why the cap holds anyway. Neither an assignment nor a lease lock excludes a second scheduler for
sure (a zombie that has not seen its revocation yet), and every worker's view of the phases
(its ``RunIndex``, fed by ``runs.phases``) is eventual. So a start is never decided from the
view alone: a group's running *slots* live in one etcd key (``agents.keys.scheduler_slots_key``),
the run ids allowed to run, and a run is granted a slot by compare-and-swap on that key *before*
its start is sent. The key never holds more than N ids, whoever writes it and whatever their
view, so at most N runs of a group are ever started by schedulers. A slot is freed only when its
run is seen in a final phase, which never changes, so a stale view delays a release, never
makes one wrong. A stale view can still see a slot holder as queued although it runs: the start
is then sent again with the same event id (``sched.<run id>.start``), which the run's owner
ignores as a duplicate. That id also makes a start issued twice across restarts and rebalances
(crash after the swap, before or after the send) one start.

Pure core, thin edge: :func:`plan` decides from a :class:`GroupView`;
:class:`Scheduler` reads the views (index + etcd), swaps the slots, sends the starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import Counter

from agents import keys
from agents.config import Settings
from agents.kafka import end_offsets
from agents.producer import EventProducer
from agents.resources import Resources
from datamanager import DataManagerError, Kv, KvValue
from events import Phase, StartRequested, format_run_id, make_event
from events.catalogue import Event
from indexer import RunIndex
from indexer.query import active_runs
from partition.placement import partition_for

__all__ = [
    "GroupPlan",
    "GroupView",
    "Scheduler",
    "SchedulerService",
    "Slots",
    "plan",
    "start_event_id",
]

log = logging.getLogger("runstream.scheduler")

STARTS = Counter("runstream_scheduler_starts", "Runs the scheduler granted a slot and started")
SLOT_CONFLICTS = Counter(
    "runstream_scheduler_slot_conflicts",
    "Slot swaps that lost to another writer (another scheduler of the group, briefly)",
)

_FINAL = frozenset(p for p in Phase if p.is_final())


def start_event_id(run_id: str) -> str:
    """The id of the start the scheduler sends for ``run_id``: the same every time."""
    return f"sched.{run_id}.start"


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupView:
    """What the scheduler knows of one group.

    ``phases``: run id → phase as seen in the index, for the group's queued and running runs and
    for every slot holder (``None``: the index has not seen that run yet). ``slots``: the run ids
    holding a running slot, as stored in etcd (authoritative). ``created``: run id → (counter,
    enqueue seconds) as the index has them, the creation order (absent or 0 = unknown)."""

    group: str
    phases: Mapping[int, Phase | None]
    slots: frozenset[int] = frozenset()
    created: Mapping[int, tuple[int, int]] = field(default_factory=dict)

    def age(self, run_id: int) -> tuple[int, int, int]:
        """The sort key of "oldest first": the run number (dense and increasing in creation
        order across every process, where run ids come in blocks per process and are only
        roughly ordered), then the enqueue time, then the id. A run without a number (indexed
        from phase changes older than numbers) sorts first: it was created before them."""
        counter, enqueued = self.created.get(run_id, (0, 0))
        return counter, enqueued, run_id


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupPlan:
    """What to do for one group: store ``slots`` (when they differ from the view's), then send a
    start for every run of ``starts`` (new slot holders first, then holders still queued)."""

    group: str
    slots: frozenset[int]
    new: tuple[int, ...]
    starts: tuple[int, ...]

    def changed(self, view: GroupView) -> bool:
        return self.slots != view.slots


def plan(view: GroupView, max_running: int) -> GroupPlan:
    """Agola's rule for one group: the oldest queued runs (first created, :meth:`GroupView.age`)
    start while fewer than ``max_running`` of the group's runs hold a slot or run. Pure;
    ``max_running`` ≥ 1.

    * a slot holder seen in a final phase frees its slot;
    * runs running without a slot (a manual start) count against the cap too;
    * a slot holder seen queued or not seen yet keeps its slot and gets its start (again).
    """
    kept = frozenset(r for r in view.slots if view.phases.get(r) not in _FINAL)
    running = {r for r, p in view.phases.items() if p is Phase.RUNNING}
    free = max_running - len(kept | running)
    queued = sorted(
        (r for r, p in view.phases.items() if p is Phase.QUEUED and r not in kept), key=view.age
    )
    new = tuple(queued[: max(0, free)])
    again = tuple(sorted(r for r in kept if view.phases.get(r) in (Phase.QUEUED, None)))
    return GroupPlan(group=view.group, slots=kept | set(new), new=new, starts=new + again)


# ------------------------------------------------------------------------------ the I/O edge
@dataclass(frozen=True, slots=True, kw_only=True)
class Slots:
    """The stored slots of one group and the etcd revision they were read at."""

    group: str
    runs: frozenset[int]
    mod_revision: int | None  # None: no key

    @staticmethod
    def decode(value: KvValue) -> Slots:
        doc = orjson.loads(value.value)
        return Slots(
            group=str(doc["group"]),
            runs=frozenset(int(r) for r in doc["runs"]),
            mod_revision=value.mod_revision,
        )

    @staticmethod
    def encode(group: str, runs: Iterable[int]) -> bytes:
        return orjson.dumps({"group": group, "runs": sorted(runs)})


@dataclass(slots=True)
class TickReport:
    """What one :meth:`Scheduler.once` did (for tests and logs)."""

    groups: int = 0
    started: list[str] = field(default_factory=list)
    conflicts: int = 0


class Scheduler:
    """Runs :func:`plan` for the groups this worker schedules, every ``interval`` seconds.

    ``index``: the worker's run index (the view); ``kv``: etcd (the slots); ``send``: appends
    events to ``runs.events``; ``mine(group)``: whether this worker schedules ``group`` now;
    ``format_id``: run id → its text form. Idempotent: a tick repeated after a crash at any
    point sends nothing that was not due, and a start twice at most with the same event id.
    """

    def __init__(
        self,
        *,
        index: Callable[[], RunIndex],
        kv: Kv,
        send: Callable[[Sequence[Event]], Awaitable[None]],
        mine: Callable[[str], bool],
        format_id: Callable[[int], str],
        max_running: int,
        clock: Callable[[], int] = lambda: int(time.time() * 1000),
        interval: float = 0.5,
    ) -> None:
        if max_running < 1:
            raise ValueError("max_running must be at least 1 (0 means: no scheduler at all)")
        self.index = index
        self.kv = kv
        self.send = send
        self.mine = mine
        self.format_id = format_id
        self.max_running = max_running
        self.clock = clock
        self.interval = interval
        # Starts sent by this process for runs that still hold their slot: not sent again
        # while the view lags (a new process sends them once more: a duplicate at most).
        self._sent: set[int] = set()
        self._stored: dict[str, Slots] = {}

    async def views(self) -> list[GroupView]:
        """The views of the groups this worker schedules: active runs from the index, slots
        from etcd (one range read)."""
        stored: dict[str, Slots] = {}
        for _, value in await self.kv.get_prefix(keys.scheduler_slots_prefix()):
            s = Slots.decode(value)
            if self.mine(s.group):
                stored[s.group] = s
        index = self.index()
        phases: dict[str, dict[int, Phase | None]] = {}
        created: dict[str, dict[int, tuple[int, int]]] = {}
        for run_id, group, phase, made in active_runs(index):
            if group in stored or self.mine(group):
                phases.setdefault(group, {})[run_id] = phase
                created.setdefault(group, {})[run_id] = made
        out = []
        for group in sorted(set(phases) | set(stored)):
            seen = phases.get(group, {})
            slots = stored[group].runs if group in stored else frozenset()
            for r in slots - seen.keys():
                entry = index.get(r)
                seen[r] = None if entry is None else entry.phase
            ages = created.get(group, {})
            out.append(GroupView(group=group, phases=seen, slots=slots, created=ages))
        self._stored = stored
        return out

    async def once(self) -> TickReport:
        """One pass over every group this worker schedules."""
        report = TickReport()
        for view in await self.views():
            report.groups += 1
            p = plan(view, self.max_running)
            if p.changed(view) and not await self._swap(view, p):
                report.conflicts += 1
                continue  # someone else wrote the slots: next tick decides from them
            self._sent -= view.slots - p.slots  # released: forget them
            due = [r for r in p.starts if r not in self._sent]
            if due:
                now = self.clock()
                events = [
                    make_event(StartRequested(), id=start_event_id(rid), run_id=rid, at=now)
                    for rid in map(self.format_id, due)
                ]
                await self.send(events)
                self._sent.update(due)
                report.started += [e.run_id for e in events]
                STARTS.inc(len(p.new))
        return report

    async def _swap(self, view: GroupView, p: GroupPlan) -> bool:
        key = keys.scheduler_slots_key(view.group)
        stored = self._stored.get(view.group)
        revision = None if stored is None else stored.mod_revision
        if not p.slots:
            ok = revision is None or await self.kv.compare_and_delete(key, mod_revision=revision)
        else:
            value = Slots.encode(view.group, p.slots)
            ok = await self.kv.compare_and_swap(key, value, mod_revision=revision) is not None
        if not ok:
            SLOT_CONFLICTS.inc()
            log.info("slots of a group changed meanwhile", extra={"group": view.group})
        return ok

    async def run_forever(self, ready: Callable[[], Awaitable[object]] | None = None) -> None:
        """``once()`` every ``interval`` seconds, after ``ready()`` (the index caught up). An
        error is logged and the next tick tries again (etcd or Kafka may come back)."""
        if ready is not None:
            await ready()
        while True:
            try:
                await self.once()
            except (TimeoutError, DataManagerError, OSError) as exc:
                log.warning("scheduler tick failed; retrying", extra={"error": str(exc)})
            except Exception:
                log.exception("scheduler tick failed; retrying")
            await asyncio.sleep(self.interval)


class SchedulerService:
    """In the worker: a :class:`Scheduler` over the worker's index, etcd, a producer of
    ``runs.events`` and the materializer's partitions (``settings.max_running_per_group`` ≥ 1)."""

    def __init__(
        self, settings: Settings, resources: Resources, materializer: Any, index: Any
    ) -> None:
        self.settings = settings
        self.resources = resources
        self.materializer = materializer  # agents.materializer_service.MaterializerService
        self.index = index  # agents.indexing.IndexService
        self.partitions = 0

    def mine(self, group: str) -> bool:
        """True while this worker owns and serves the partition of ``group``'s hash."""
        if self.partitions <= 0:
            return False
        owner = self.materializer.owner(partition_for(group, self.partitions))
        return owner is not None and bool(owner.serving)

    async def run(self) -> None:
        s = self.settings
        self.partitions = len(await end_offsets(s.kafka, s.topic_events))
        async with EventProducer(s.kafka, s.topic_events, client_id="runstream-scheduler") as out:
            scheduler = Scheduler(
                index=lambda: self.index.index,
                kv=await self.resources.kv(),
                send=out.append,
                mine=self.mine,
                format_id=format_run_id,
                max_running=s.max_running_per_group,
            )
            await scheduler.run_forever(self.index.ready.wait)
