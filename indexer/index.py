"""The in-memory run index: columnar arrays over dense run ids, plus per-group posting lists.

Layout. Run ids are dense (an etcd sequence), so a run lives in slot ``run_id - base`` of numpy
columns: ``gid`` (uint32, 0 = no run), ``pr`` (uint8, phase and result codes), ``seq`` (uint32,
the per-run sequence number of the last applied update), and the run's facts for listings:
``counter`` (uint32, its number in its root group), ``nid`` (uint32, an id in the run-name
dictionary, 0 = unknown) and ``enq``, ``start``, ``end`` (uint32 seconds since the Unix epoch,
0 = unknown; good until 2106). Each group keeps the sorted slots of its runs (``Postings``), so
one group's page is a bisection and a slice. That is 33 bytes a run plus spare capacity, against
hundreds for a dict of Python objects. Per group, two numbers kept beside the posting lists
(``sizes``: its runs, ``lasts``: its greatest slot) let a broad prefix (the root, ``/project``)
choose its plan and answer ``lastrun`` with vectorized work instead of a loop over its groups.

Facts come from the phase changes: the first one (seq 1) names the run, its counter and its
enqueue time; a change to ``running`` its start, one to a final phase its end. Each fact is
written once, whatever the order updates arrive in (an older update still fills a fact a newer
one did not carry), so replays and redeliveries give the same columns.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterator
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from events import Phase, Result
from indexer.errors import ConflictingGroup, RunIdOutOfRange
from indexer.groups import GroupDict
from indexer.model import IndexStats, Order, Page, RunEntry, make_entry, pr_code, pr_decode
from indexer.names import NameDict
from indexer.postings import Postings
from indexer.query import iter_runs, list_runs

__all__ = ["DEFAULT_MAX_GAP", "MAX_SPAN", "RunIndex"]

MAX_SPAN = 2**32 - 2  # slots are uint32 in the posting lists
DEFAULT_MAX_GAP = 1 << 24  # 16M ids ≈ 550 MB of columns
_MAX_SEQ = 2**32 - 1
_MAX_U32 = 2**32 - 1
#: Every per-slot column, uint8 ``pr`` aside all uint32.
COLUMNS = ("gid", "pr", "seq", "counter", "nid", "enq", "start", "end")
_FINAL_PHASES = frozenset(p for p in Phase if p.is_final())
_T = TypeVar("_T", bound=np.generic)
_START_SLACK = 4096  # first id seen is rarely the lowest: partitions are read in any order


class RunIndex:
    """run id → group path, phase, result; with group-prefix listings. Not thread-safe.

    All mutation goes through :meth:`apply` (idempotent, order-tolerant). Queries are in
    ``indexer.query`` and exposed as :meth:`list_runs`.
    """

    def __init__(self, *, max_gap: int = DEFAULT_MAX_GAP) -> None:
        """``max_gap``: how far (in ids) beyond the ids held an update may land. Ids are dense,
        so a far jump is a producer bug, and honouring it would allocate 9 bytes per skipped id."""
        self.max_gap = max_gap
        self.groups = GroupDict()
        self.base = 0  # run id of slot 0 (meaningless while span == 0)
        self.span = 0  # slots in use
        self.gid: npt.NDArray[np.uint32] = np.zeros(0, dtype=np.uint32)
        self.pr: npt.NDArray[np.uint8] = np.zeros(0, dtype=np.uint8)
        self.seq: npt.NDArray[np.uint32] = np.zeros(0, dtype=np.uint32)
        self.counter: npt.NDArray[np.uint32] = np.zeros(0, dtype=np.uint32)
        self.nid: npt.NDArray[np.uint32] = np.zeros(0, dtype=np.uint32)
        self.enq: npt.NDArray[np.uint32] = np.zeros(0, dtype=np.uint32)
        self.start: npt.NDArray[np.uint32] = np.zeros(0, dtype=np.uint32)
        self.end: npt.NDArray[np.uint32] = np.zeros(0, dtype=np.uint32)
        self.names = NameDict()
        self.postings: list[Postings] = [Postings()]  # index 0 unused (gid 0 = no run)
        # gid → runs of the group (its postings' length) and its greatest slot (when it has
        # runs); capacity beyond the groups held is zero.
        self.sizes: npt.NDArray[np.uint32] = np.zeros(1, dtype=np.uint32)
        self.lasts: npt.NDArray[np.uint32] = np.zeros(1, dtype=np.uint32)
        self.count = 0
        self.changes = 0
        self._offsets: dict[str, int] = {}

    @classmethod
    def from_columns(
        cls,
        *,
        sorted_names: list[str],
        base: int,
        gid: npt.NDArray[np.uint32],
        pr: npt.NDArray[np.uint8],
        seq: npt.NDArray[np.uint32],
        offsets: dict[str, int],
        facts: dict[str, npt.NDArray[np.uint32]] | None = None,
        run_names: list[str] | None = None,
    ) -> RunIndex:
        """An index over ready columns (a decoded dump): gid i+1 is ``sorted_names[i]``, nid i+1
        is ``run_names[i]``; ``facts`` holds the columns ``counter``, ``nid``, ``enq``,
        ``start``, ``end`` (all zero when None: a version 1 dump).

        The posting lists come from one stable sort of the gid column, so building them is
        bulk work, not a loop over runs. The arrays are adopted, not copied.
        """
        index = cls()
        index.groups = GroupDict(sorted_names)
        ng = len(sorted_names)
        index.base, index.span = (base, len(gid)) if len(gid) else (0, 0)
        index.gid, index.pr, index.seq = gid, pr, seq
        for col in COLUMNS[3:]:
            arr = facts[col] if facts is not None else np.zeros(len(gid), dtype=np.uint32)
            setattr(index, col, arr)
        index.names = NameDict(run_names or ())
        # Sorting narrow keys lets numpy use its radix sort.
        keys = gid.astype(np.uint16) if ng < 1 << 16 else gid
        order = np.argsort(keys, kind="stable").astype(np.uint32)
        ends = np.cumsum(np.bincount(gid, minlength=ng + 1)).tolist()
        index.postings = [Postings()]
        index.postings += [Postings(order[ends[g - 1] : ends[g]]) for g in range(1, ng + 1)]
        sizes = np.bincount(gid, minlength=ng + 1).astype(np.uint32)
        sizes[0] = 0
        held = np.flatnonzero(sizes)
        index.sizes, index.lasts = sizes, np.zeros(ng + 1, dtype=np.uint32)
        index.lasts[held] = order[np.asarray(ends, dtype=np.int64)[held] - 1]
        index.count = len(order) - ends[0]
        index._offsets = dict(offsets)
        return index

    # ----------------------------------------------------------------- writes

    def apply(
        self,
        run_id: int,
        group: str,
        phase: Phase,
        result: Result,
        seq: int,
        *,
        at: int = 0,
        name: str = "",
        counter: int = 0,
    ) -> bool:
        """Record that run ``run_id`` of ``group`` is now in ``phase``/``result`` as of ``seq``,
        a change made at ``at`` (milliseconds since the Unix epoch; 0 = unknown) that names the
        run ``name`` with number ``counter`` (as the seq-1 change does; "" and 0 = not said).

        Phase and result are applied only if ``seq`` is greater than the stored one (or the run
        is new); the facts (name, counter, enqueue time at seq 1, start time on ``running``, end
        time on a final phase) fill those still unknown, whatever the seq. Returns whether
        anything changed. Idempotent and tolerant of any arrival order.
        Raises ``BadGroup`` (invalid path), ``ConflictingGroup`` (the run is indexed under another
        group; nothing changes), ``RunIdOutOfRange`` (beyond ``max_gap``; nothing changes),
        ``ValueError`` (seq, counter, time or run id out of range; nothing changes),
        ``KeyError`` (a phase or result this version cannot store).
        """
        if not 0 <= seq <= _MAX_SEQ:
            raise ValueError(f"seq {seq} out of range 0..{_MAX_SEQ}")
        if not 0 <= counter <= _MAX_U32:
            raise ValueError(f"counter {counter} out of range 0..{_MAX_U32}")
        secs = at // 1000
        if not 0 <= secs <= _MAX_U32:
            raise ValueError(f"time {at} ms out of range (1970 to 2106)")
        if run_id < 1:
            raise ValueError(f"run id {run_id} must be positive")
        code = pr_code(phase, result)
        slot = self._slot_for_write(run_id)
        cur = int(self.gid[slot])
        if cur == 0:
            gid = self.groups.add(group)
            if gid == len(self.postings):
                self.postings.append(Postings())
            if gid >= len(self.sizes):
                cap = max(gid + 1, len(self.sizes) + (len(self.sizes) >> 4) + 256)
                self.sizes, self.lasts = _resized(self.sizes, cap), _resized(self.lasts, cap)
            self.postings[gid].insert(slot)
            self.sizes[gid] += 1
            if slot > self.lasts[gid]:
                self.lasts[gid] = slot
            self.gid[slot] = gid
            self.count += 1
        else:
            same_group = self.groups.name(cur) == group
            if seq <= int(self.seq[slot]):  # old news, but it may still carry a fact
                filled = same_group and self._facts(slot, phase, seq, secs, name, counter)
                self.changes += filled
                return filled
            if not same_group:
                raise ConflictingGroup(
                    f"run {run_id} is indexed under {self.groups.name(cur)!r}, not {group!r}"
                )
        self._facts(slot, phase, seq, secs, name, counter)
        self.pr[slot] = code
        self.seq[slot] = seq
        self.changes += 1
        return True

    def _facts(self, slot: int, phase: Phase, seq: int, secs: int, name: str, counter: int) -> bool:
        """Fill the facts of ``slot`` still unknown; whether any was."""
        changed = False
        if name and not self.nid[slot]:
            self.nid[slot] = self.names.add(name)
            changed = True
        if counter and not self.counter[slot]:
            self.counter[slot] = counter
            changed = True
        if secs:
            for col, holds in (
                (self.enq, seq == 1),
                (self.start, phase is Phase.RUNNING),
                (self.end, phase in _FINAL_PHASES),
            ):
                if holds and not col[slot]:
                    col[slot] = secs
                    changed = True
        return changed

    def mark_offset(self, source: str, next_offset: int) -> None:
        """Record that every record of ``source`` (e.g. ``"runs.phases/3"``) before
        ``next_offset`` has been applied. Never moves backwards."""
        if next_offset > self._offsets.get(source, -1):
            self._offsets[source] = next_offset

    @property
    def offsets(self) -> dict[str, int]:
        """A copy of source → next offset to read, as covered by the current state."""
        return dict(self._offsets)

    def _slot_for_write(self, run_id: int) -> int:
        if self.count == 0:
            self.base, self.span = max(1, run_id - _START_SLACK), 0
        elif run_id - (self.base + self.span) >= self.max_gap or self.base - run_id >= self.max_gap:
            raise RunIdOutOfRange(
                f"run id {run_id} is {self.max_gap} or more ids away from the ids indexed "
                f"({self.base}..{self.base + self.span - 1}); refusing to allocate the gap"
            )
        if run_id < self.base:
            self._rebase(max(1, run_id - max(_START_SLACK, self.span >> 4)))
        slot = run_id - self.base
        if slot >= self.span:
            if slot >= MAX_SPAN:
                raise RunIdOutOfRange(
                    f"run id {run_id} is more than {MAX_SPAN} above the lowest id {self.base}"
                )
            self._grow(slot + 1)
        return slot

    def _grow(self, span: int) -> None:
        cap = len(self.gid)
        if span > cap:
            # 1/16 spare: eight columns make a copy cheap next to the memory it would idle.
            new_cap = min(MAX_SPAN, max(span, cap + (cap >> 4) + 4096))
            for col in COLUMNS:
                setattr(self, col, _resized(getattr(self, col), new_cap))
        self.span = span

    def _rebase(self, new_base: int) -> None:
        delta = self.base - new_base
        span = self.span + delta
        if span > MAX_SPAN:
            raise RunIdOutOfRange(f"run id {new_base} is too far below the lowest id {self.base}")
        for col in COLUMNS:
            old = getattr(self, col)
            new = np.zeros(span, dtype=old.dtype)
            new[delta:] = old[: self.span]
            setattr(self, col, new)
        for p in self.postings:
            p.shift(delta)
        self.lasts[self.sizes > 0] += delta
        self.base, self.span = new_base, span

    # ----------------------------------------------------------------- reads

    def get(self, run_id: int) -> RunEntry | None:
        """The entry of run ``run_id``, or None if the index has never seen it."""
        slot = run_id - self.base
        if not 0 <= slot < self.span:
            return None
        gid = int(self.gid[slot])
        if gid == 0:
            return None
        phase, result = pr_decode(int(self.pr[slot]))
        return make_entry(
            run_id,
            self.groups.name(gid),
            phase,
            result,
            self.names.names[int(self.nid[slot])],
            int(self.counter[slot]),
            _millis(int(self.enq[slot])),
            _millis(int(self.start[slot])),
            _millis(int(self.end[slot])),
        )

    def get_seq(self, run_id: int) -> int | None:
        """The seq of the last update applied to ``run_id``, or None if unknown."""
        slot = run_id - self.base
        if not 0 <= slot < self.span or self.gid[slot] == 0:
            return None
        return int(self.seq[slot])

    def __len__(self) -> int:
        return self.count

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
        """See :func:`indexer.query.list_runs`."""
        return list_runs(
            self,
            groups=groups,
            phases=phases,
            results=results,
            last_run=last_run,
            order=order,
            limit=limit,
            cursor=cursor,
        )

    def entries(self, order: Order = Order.ASC) -> Iterator[RunEntry]:
        """Every run in id order. Do not apply updates while iterating."""
        return iter_runs(self, order)

    # ----------------------------------------------------------------- figures

    def memory_bytes(self) -> int:
        """Bytes held by the index: column buffers (with spare capacity), posting lists
        (shared load buffers counted once), the group and the name dictionaries."""
        return sum(self.memory_parts(sys.maxsize))

    def memory_parts(self, chunk: int) -> Iterator[int]:
        """:meth:`memory_bytes` in parts that each walk at most ``chunk`` posting lists, group
        paths or run names (their sum): the walk is O(groups + names), 50 ms and more for a
        million runs, and a worker sizes its index on its event loop (``agents.indexing``),
        letting other work run between two parts. Changes applied meanwhile may be counted or
        not: a gauge's reading."""
        size: int = sum(getattr(self, col).nbytes for col in COLUMNS)
        yield size + self.sizes.nbytes + self.lasts.nbytes + sys.getsizeof(self.postings)
        shared: dict[int, int] = {}
        postings = self.postings
        for start in range(0, len(postings), chunk):
            size = 0
            for p in postings[start : start + chunk]:
                size += p.own_bytes()
                base = p.buf.base
                if isinstance(base, np.ndarray):
                    shared[id(base)] = base.nbytes
            yield size
        yield sum(shared.values())
        yield from self.groups.memory_parts(chunk)
        yield from self.names.memory_parts(chunk)

    def stats(self) -> IndexStats:
        """Runs, groups, span, bytes held, changes applied and offsets covered."""
        return IndexStats(
            runs=self.count,
            groups=len(self.groups),
            span=self.span,
            memory_bytes=self.memory_bytes(),
            changes=self.changes,
            offsets=self.offsets,
        )


def _millis(secs: int) -> int | None:
    return secs * 1000 if secs else None


def _resized(arr: npt.NDArray[_T], cap: int) -> npt.NDArray[_T]:
    out = np.zeros(cap, dtype=arr.dtype)
    out[: len(arr)] = arr
    return out
