"""Listing runs: group prefixes, phase/result filters, last run per group, keyset pagination.

Plan. A group prefix (the root ``/``, a type ``/project``, a group path, a group path then a
type) is one contiguous range of the sorted groups (``GroupDict.select``). The cursor and the
order become a half-open slot range [lo, hi) of candidates. A few groups (or a sparse set) are
served from their posting lists: from each, the first matching runs in order, then a merge. A
broad selection (the root, or groups holding more than 1/16 of the slots, counted from the
index's per-group sizes) scans the columns in growing chunks with a vectorized membership test
instead. Both stop as soon as one run more than the page is found (to know whether a next page
exists). ``lastrun`` without a phase or result filter takes each group's kept greatest slot.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from events import Phase, Result
from indexer.cursor import decode_cursor, encode_cursor
from indexer.errors import BadLimit
from indexer.groups import GroupDict
from indexer.model import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    PHASE_CODES,
    RESULT_CODES,
    Order,
    Page,
    RunEntry,
    format_id,
    pr_code,
)
from indexer.names import NameDict
from indexer.postings import Postings

__all__ = ["Columns", "active_runs", "iter_runs", "list_runs", "page_size"]

Slots = npt.NDArray[np.int64]
_MERGE_MAX_GROUPS = 64
_MAX_STEP = 1 << 18
# Code → phase / result for every valid code (codes in the index are validated on the way in).
_PHASE_OF: list[Phase] = [Phase.QUEUED] * 256
_RESULT_OF: list[Result] = [Result.UNKNOWN] * 256
for _p in PHASE_CODES:
    for _r in RESULT_CODES:
        _PHASE_OF[pr_code(_p, _r)], _RESULT_OF[pr_code(_p, _r)] = _p, _r


class Columns(Protocol):
    """What a query reads of the index (``indexer.index.RunIndex`` holds it): one slot per run
    id from ``base``, ``span`` slots, a column per fact, and per group its posting list, size and
    greatest slot. The index calls the queries; they never import it."""

    groups: GroupDict
    names: NameDict
    base: int
    span: int
    count: int
    gid: npt.NDArray[np.uint32]
    pr: npt.NDArray[np.uint8]
    counter: npt.NDArray[np.uint32]
    nid: npt.NDArray[np.uint32]
    enq: npt.NDArray[np.uint32]
    start: npt.NDArray[np.uint32]
    end: npt.NDArray[np.uint32]
    postings: list[Postings]
    sizes: npt.NDArray[np.uint32]
    lasts: npt.NDArray[np.uint32]


def page_size(limit: int | None) -> int:
    """``limit`` made a page size: None or 0 → 25, above 100 → 100. Raises ``BadLimit`` if < 0."""
    if limit is None or limit == 0:
        return DEFAULT_LIMIT
    if limit < 0:
        raise BadLimit(f"limit must not be negative, got {limit}")
    return min(limit, MAX_LIMIT)


def list_runs(
    index: Columns,
    *,
    groups: Collection[str] = (),
    phases: Collection[Phase] | None = None,
    results: Collection[Result] | None = None,
    last_run: bool = False,
    order: Order = Order.DESC,
    limit: int | None = None,
    cursor: str | None = None,
) -> Page:
    """One page of the runs under any of ``groups`` (listing prefixes by whole elements: ``/`` or
    none = all, ``/project`` = every project's, a trailing ``/`` is dropped),
    whose phase is in ``phases`` and result in ``results`` (None or empty = any), ordered by run
    id, after ``cursor`` (from a previous page of the same order).

    With ``last_run``, only the greatest-id run among the matching runs of each distinct group
    path is listed (Agola's ``lastrun``); the cursor then pages through those.
    Raises ``BadGroup``, ``BadCursor``, ``BadLimit`` (all ``QueryError``).
    """
    need = page_size(limit) + 1
    after = decode_cursor(cursor, order) if cursor is not None else None
    gids = index.groups.select(groups)
    ok = _pr_mask(phases, results)
    desc = order.is_desc()
    lo, hi = _slot_range(index, after, desc)
    if index.count == 0 or (gids is not None and len(gids) == 0) or lo >= hi:
        return Page(runs=(), next_cursor=None)
    if last_run:
        slots = _last_runs(index, gids, ok, lo, hi, desc)[:need]
    elif gids is not None and _use_postings(index, gids, hi - lo):
        slots = _from_postings(index, gids, ok, lo, hi, desc, need)
    else:
        slots = _scan(index, gids, ok, lo, hi, desc, need)
    runs = _entries(index, slots[: need - 1])
    more = len(slots) >= need
    return Page(runs=runs, next_cursor=encode_cursor(runs[-1].run_id, order) if more else None)


def iter_runs(index: Columns, order: Order = Order.ASC, chunk: int = 1 << 16) -> Iterator[RunEntry]:
    """Every run, in id order (for exports and checks). Do not apply updates meanwhile."""
    starts = range(0, index.span, chunk)
    for s in reversed(starts) if order.is_desc() else starts:
        slots = np.flatnonzero(index.gid[s : s + chunk]).astype(np.int64) + s
        entries = _entries(index, slots[::-1] if order.is_desc() else slots)
        yield from entries


def active_runs(index: Columns) -> Iterator[tuple[int, str, Phase, tuple[int, int]]]:
    """``(run id, group, phase, (counter, enqueue seconds))`` of every queued or running run, in
    id order: one vectorized scan of the phase column (the scheduler's view; about a millisecond
    a million runs). The pair is the run's creation order within its root group (0 = unknown)."""
    active = np.zeros(256, dtype=np.bool_)
    for r in RESULT_CODES:
        active[pr_code(Phase.QUEUED, r)] = active[pr_code(Phase.RUNNING, r)] = True
    n = index.span
    slots = np.flatnonzero(active[index.pr[:n]] & (index.gid[:n] != 0))
    names = index.groups.names
    ids = (slots + index.base).tolist()
    gids = index.gid[slots].tolist()
    codes = index.pr[slots].tolist()
    created = zip(index.counter[slots].tolist(), index.enq[slots].tolist(), strict=True)
    for run_id, g, c, made in zip(ids, gids, codes, created, strict=True):
        yield run_id, names[g], _PHASE_OF[c], made


def _pr_mask(
    phases: Collection[Phase] | None, results: Collection[Result] | None
) -> npt.NDArray[np.bool_] | None:
    if not phases and not results:
        return None
    ok = np.zeros(256, dtype=np.bool_)
    for p in phases or PHASE_CODES:
        for r in results or RESULT_CODES:
            ok[pr_code(Phase(p), Result(r))] = True
    return ok


def _slot_range(index: Columns, after: int | None, desc: bool) -> tuple[int, int]:
    """Candidate slots [lo, hi): after the cursor's run in the listing order."""
    if after is None:
        return 0, index.span
    rel = after - index.base
    if desc:
        return 0, min(max(rel, 0), index.span)
    return min(max(rel + 1, 0), index.span), index.span


def _use_postings(index: Columns, gids: npt.NDArray[np.uint32], width: int) -> bool:
    if len(gids) <= _MERGE_MAX_GROUPS:
        return True
    total = int(index.sizes[gids].sum())  # vectorized: a type level holds thousands of groups
    return total * 16 < width


def _take(
    cands: npt.NDArray[np.uint32],
    pr: npt.NDArray[np.uint8],
    ok: npt.NDArray[np.bool_] | None,
    need: int,
    desc: bool,
) -> Slots:
    """The first ``need`` of ascending ``cands`` (last ones if ``desc``) whose code is ok."""
    seq = cands[::-1] if desc else cands
    if ok is None:
        return seq[:need].astype(np.int64)
    out: list[npt.NDArray[np.uint32]] = []
    got, pos, step = 0, 0, max(64, need * 4)
    while got < need and pos < len(seq):
        chunk = seq[pos : pos + step]
        hit = chunk[ok[pr[chunk]]]
        out.append(hit)
        got += len(hit)
        pos += step
        step = min(step * 2, _MAX_STEP)
    if not out:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(out)[:need].astype(np.int64)


def _from_postings(
    index: Columns,
    gids: npt.NDArray[np.uint32],
    ok: npt.NDArray[np.bool_] | None,
    lo: int,
    hi: int,
    desc: bool,
    need: int,
) -> Slots:
    parts: list[Slots] = []
    for g in gids.tolist():
        p = index.postings[g].view()
        i, j = np.searchsorted(p, (lo, hi)).tolist()
        if i < j:
            parts.append(_take(p[i:j], index.pr, ok, need, desc))
    return _merge(parts, desc, need)


def _merge(parts: Sequence[Slots], desc: bool, need: int) -> Slots:
    if not parts:
        return np.zeros(0, dtype=np.int64)
    if len(parts) == 1:
        return parts[0][:need]
    allp = np.sort(np.concatenate(parts))
    return (allp[::-1] if desc else allp)[:need]


def _scan(
    index: Columns,
    gids: npt.NDArray[np.uint32] | None,
    ok: npt.NDArray[np.bool_] | None,
    lo: int,
    hi: int,
    desc: bool,
    need: int,
) -> Slots:
    member: npt.NDArray[np.bool_] | None = None
    if gids is not None:
        member = np.zeros(len(index.postings), dtype=np.bool_)
        member[gids] = True
    out: list[Slots] = []
    got, step = 0, max(1024, need * 16)
    pos = hi if desc else lo
    while got < need and lo <= pos <= hi and (pos > lo if desc else pos < hi):
        s, e = (max(lo, pos - step), pos) if desc else (pos, min(hi, pos + step))
        pos = s if desc else e
        g = index.gid[s:e]
        m = member[g] if member is not None else g != 0
        if ok is not None:
            m &= ok[index.pr[s:e]]
        idx = np.flatnonzero(m) + s
        out.append(idx[::-1] if desc else idx)
        got += len(idx)
        step = min(step * 2, _MAX_STEP)
    if not out:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(out)[:need].astype(np.int64)


def _last_runs(
    index: Columns,
    gids: npt.NDArray[np.uint32] | None,
    ok: npt.NDArray[np.bool_] | None,
    lo: int,
    hi: int,
    desc: bool,
) -> Slots:
    """Per group, its greatest matching slot; those within [lo, hi), in listing order."""
    every = gids if gids is not None else index.groups.sorted_gids()
    if ok is None:  # each group's greatest slot is kept: no loop over the groups
        held = every[index.sizes[every] > 0]
        arr = np.sort(index.lasts[held]).astype(np.int64)
        arr = arr[(arr >= lo) & (arr < hi)]
        return arr[::-1] if desc else arr
    lasts: list[int] = []
    for g in every.tolist():
        p = index.postings[g]
        if p.n == 0:
            continue
        if ok is None:
            lasts.append(p.last())
        else:
            hit = _take(p.view(), index.pr, ok, 1, True)
            if len(hit):
                lasts.append(int(hit[0]))
    arr = np.sort(np.array(lasts, dtype=np.int64))
    arr = arr[(arr >= lo) & (arr < hi)]
    return arr[::-1] if desc else arr


def _entries(index: Columns, slots: Slots) -> tuple[RunEntry, ...]:
    names = index.groups.names
    run_names = index.names.names
    codes = index.pr[slots].tolist()
    return tuple(
        map(
            RunEntry,
            map(format_id, (slots + index.base).tolist()),
            [names[g] for g in index.gid[slots].tolist()],
            [_PHASE_OF[c] for c in codes],
            [_RESULT_OF[c] for c in codes],
            [run_names[n] for n in index.nid[slots].tolist()],
            index.counter[slots].tolist(),
            _millis(index.enq[slots]),
            _millis(index.start[slots]),
            _millis(index.end[slots]),
        )
    )


def _millis(secs: npt.NDArray[np.uint32]) -> list[int | None]:
    """Stored seconds as milliseconds, None where unknown (0)."""
    return [s * 1000 if s else None for s in secs.tolist()]
