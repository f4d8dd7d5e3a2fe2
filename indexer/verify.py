"""Comparing two indexes entry by entry (``runstream index verify``: a dump vs a rebuild)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from indexer.index import COLUMNS, RunIndex

__all__ = ["IndexDiff", "compare"]


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexDiff:
    """How two indexes differ. ``examples`` are human-readable lines, at most ``max_examples``."""

    runs_a: int
    runs_b: int
    only_in_a: int
    only_in_b: int
    differing: int
    examples: tuple[str, ...]

    @property
    def equal(self) -> bool:
        return self.only_in_a == 0 and self.only_in_b == 0 and self.differing == 0


_FACTS = COLUMNS[3:]


def _columns(
    ix: RunIndex, ranks: dict[str, int], name_ranks: dict[str, int]
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.uint8],
    npt.NDArray[np.uint32],
    npt.NDArray[np.int64],
]:
    """Ids, group ranks, pr codes, seqs and the facts (one row per run; names by rank)."""
    slots = np.flatnonzero(ix.gid[: ix.span])
    rank_of = np.array([-1] + [ranks[n] for n in ix.groups.names[1:]], dtype=np.int64)
    name_of = np.array([-1] + [name_ranks[n] for n in ix.names.names[1:]], dtype=np.int64)
    facts = np.stack(
        [
            name_of[ix.nid[slots]] if col == "nid" else getattr(ix, col)[slots].astype(np.int64)
            for col in _FACTS
        ],
        axis=1,
    )
    return (
        slots.astype(np.int64) + ix.base,
        rank_of[ix.gid[slots]],
        ix.pr[slots],
        ix.seq[slots],
        facts,
    )


def compare(
    a: RunIndex, b: RunIndex, *, with_seq: bool = True, max_examples: int = 10
) -> IndexDiff:
    """Differences between ``a`` and ``b``: runs only in one, and runs whose group, phase,
    result, name, counter, times (and seq, unless ``with_seq`` is False) differ. Bulk work,
    fine at millions of runs."""
    names = sorted(set(a.groups.names[1:]) | set(b.groups.names[1:]))
    ranks = {n: i for i, n in enumerate(names)}
    run_names = sorted(set(a.names.names[1:]) | set(b.names.names[1:]))
    name_ranks = {n: i for i, n in enumerate(run_names)}
    ida, ga, pa, sa, fa = _columns(a, ranks, name_ranks)
    idb, gb, pb, sb, fb = _columns(b, ranks, name_ranks)
    _, ia, ib = np.intersect1d(ida, idb, assume_unique=True, return_indices=True)
    bad = (ga[ia] != gb[ib]) | (pa[ia] != pb[ib]) | (fa[ia] != fb[ib]).any(axis=1)
    if with_seq:
        bad |= sa[ia] != sb[ib]
    only_a = np.setdiff1d(ida, idb, assume_unique=True)
    only_b = np.setdiff1d(idb, ida, assume_unique=True)
    examples = [f"run {r} only in a: {a.get(r)}" for r in only_a[:max_examples].tolist()]
    examples += [f"run {r} only in b: {b.get(r)}" for r in only_b[:max_examples].tolist()]
    for r in ida[ia[bad]][:max_examples].tolist():
        examples.append(
            f"run {r}: a={a.get(r)} seq {a.get_seq(r)}, b={b.get(r)} seq {b.get_seq(r)}"
        )
    return IndexDiff(
        runs_a=len(ida),
        runs_b=len(idb),
        only_in_a=len(only_a),
        only_in_b=len(only_b),
        differing=int(np.count_nonzero(bad)),
        examples=tuple(examples[:max_examples]),
    )
