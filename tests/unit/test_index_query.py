"""Queries of the run index against a naive reference (filter and sort over plain dicts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import Phase, Result, format_run_id
from indexer import (
    BadCursor,
    BadGroup,
    BadLimit,
    ConflictingGroup,
    Order,
    RunEntry,
    RunIdOutOfRange,
    RunIndex,
    decode,
    encode,
    encode_cursor,
    snapshot,
)
from indexer import query as query_mod
from indexer.model import make_entry

SEGMENTS = ["a", "b", "ab", "a-b", "a.b", "x"]
segment = st.sampled_from(SEGMENTS)
pair = st.tuples(st.sampled_from(["branch", "tag", "pr"]), segment)
group_path = st.builds(
    lambda root, name, pairs: "/" + "/".join([root, name, *(e for p in pairs for e in p)]),
    st.sampled_from(["project", "user"]),
    segment,
    st.lists(pair, max_size=2),
)
# A listing prefix is a valid group path (events.validate_group), by whole segments.
query_path = st.one_of(group_path, st.sampled_from(["/project/a", "/user/x"]))
phase = st.sampled_from(list(Phase))
result = st.sampled_from(list(Result))


Update = tuple[
    int, str, Phase, Result, int, int, str, int
]  # id, group, phase, result, seq, at, name, counter
FINAL = {Phase.SETUPERROR, Phase.CANCELLED, Phase.FINISHED}


@dataclass
class Facts:
    """What a listing shows beyond phase and result; each written once, when first known."""

    name: str = ""
    counter: int = 0
    enqueue_time: int | None = None
    start_time: int | None = None
    end_time: int | None = None


@dataclass
class Reference:
    """The obvious implementation: one dict entry per run."""

    runs: dict[int, tuple[str, Phase, Result, int]] = field(default_factory=dict)
    facts: dict[int, Facts] = field(default_factory=dict)

    def apply(self, run_id: int, group: str, ph: Phase, rs: Result, seq: int, at: int = 0, name: str = "", counter: int = 0) -> bool:  # fmt: skip
        cur = self.runs.get(run_id)
        if cur is not None and seq <= cur[3]:
            return cur[0] == group and self._learn(run_id, ph, seq, at, name, counter)
        if cur is not None and cur[0] != group:
            raise ConflictingGroup(group)
        self.runs[run_id] = (group, ph, rs, seq)
        self._learn(run_id, ph, seq, at, name, counter)
        return True

    def _learn(self, run_id: int, ph: Phase, seq: int, at: int, name: str, counter: int) -> bool:
        f = self.facts.setdefault(run_id, Facts())
        before = Facts(**vars(f))
        second = at // 1000 * 1000 or None  # the index keeps seconds; 0 s means unknown
        f.name = f.name or name
        f.counter = f.counter or counter
        if seq == 1:
            f.enqueue_time = f.enqueue_time or second
        if ph is Phase.RUNNING:
            f.start_time = f.start_time or second
        if ph in FINAL:
            f.end_time = f.end_time or second
        return f != before

    def entry(self, rid: int, *, facts: bool = True) -> RunEntry:
        g, p, r, _ = self.runs[rid]
        more = vars(self.facts[rid]) if facts else {}
        return make_entry(run_id=rid, group=g, phase=p, result=r, **more)

    def list(
        self,
        groups: list[str],
        phases: list[Phase],
        results: list[Result],
        last_run: bool,
        order: Order,
        *,
        facts: bool = True,
    ) -> list[RunEntry]:
        prefixes = [q.rstrip("/") for q in groups]

        def under(g: str) -> bool:
            return not prefixes or any(q == "" or g == q or g.startswith(q + "/") for q in prefixes)

        rows = [
            (rid, g, p, r)
            for rid, (g, p, r, _) in self.runs.items()
            if under(g) and (not phases or p in phases) and (not results or r in results)
        ]
        if last_run:
            best: dict[str, tuple[int, str, Phase, Result]] = {}
            for row in rows:
                if row[1] not in best or row[0] > best[row[1]][0]:
                    best[row[1]] = row
            rows = list(best.values())
        rows.sort(reverse=order is Order.DESC)
        return [self.entry(i, facts=facts) for i, *_ in rows]


NAMES = ["build", "deploy", "línea\n2", "x"]


@st.composite
def histories(draw: st.DrawFn) -> list[Update]:
    """Updates of random runs in random order; a run keeps its group, seqs may repeat. Each
    carries a time (sometimes under a second: unknown), and some a name and a counter (the
    seq-1 change carries them; a random one may too)."""
    ids = draw(st.lists(st.integers(1, 400), max_size=60, unique=True))
    far = draw(st.lists(st.integers(5000, 9000), max_size=3, unique=True))
    updates = []
    for rid in ids + far:
        g = draw(group_path)
        name, counter = draw(st.sampled_from(NAMES)), draw(st.integers(0, 2**32 - 1))
        for _ in range(draw(st.integers(1, 3))):
            seq = draw(st.integers(0, 4))
            at = draw(st.one_of(st.integers(0, 999), st.integers(1000, 2**32 * 1000 - 1)))
            told = seq == 1 or draw(st.booleans())
            updates.append((rid, g, draw(phase), draw(result), seq, at, *((name, counter) if told else ("", 0))))  # fmt: skip
    return draw(st.permutations(updates))


def build(history: list[Update]) -> tuple[RunIndex, Reference]:
    ix, ref = RunIndex(), Reference()
    for rid, g, p, r, s, at, name, counter in history:
        got = ix.apply(rid, g, p, r, s, at=at, name=name, counter=counter)
        assert got == ref.apply(rid, g, p, r, s, at, name, counter)
    return ix, ref


def page_all(ix: RunIndex, limit: int, **query: object) -> list[RunEntry]:
    """Every page of a listing, following cursors; checks page sizes on the way."""
    got: list[RunEntry] = []
    cursor = None
    for _ in range(1000):
        page = ix.list_runs(limit=limit, cursor=cursor, **query)  # type: ignore[arg-type]
        got.extend(page.runs)
        if page.next_cursor is None:
            return got
        assert len(page.runs) == limit
        cursor = page.next_cursor
    raise AssertionError("pagination does not end")


@settings(max_examples=200, deadline=None)
@given(
    history=histories(),
    groups=st.lists(query_path, max_size=3),
    phases=st.lists(phase, max_size=3, unique=True),
    results=st.lists(result, max_size=2, unique=True),
    last_run=st.booleans(),
    order=st.sampled_from(list(Order)),
    limit=st.integers(1, 7),
    plan=st.sampled_from(["auto", "postings", "scan"]),
    reload=st.sampled_from([0, 1, 2]),
)
def test_listing_matches_reference(
    history: list[Update],
    groups: list[str],
    phases: list[Phase],
    results: list[Result],
    last_run: bool,
    order: Order,
    limit: int,
    plan: str,
    reload: int,
) -> None:
    """Listings, with every field of an entry, equal the reference's: as applied, after a
    dump of format version 2, and after one of version 1 (which holds no names, counters or
    times)."""
    ix, ref = build(history)
    if reload:
        ix, _ = decode(encode(snapshot(ix), version=reload))
    want = ref.list(groups, phases, results, last_run, order, facts=reload != 1)
    query = {"groups": groups, "phases": phases, "results": results}
    with mock.patch.object(query_mod, "_use_postings", _forced(plan)):
        got = page_all(ix, limit, **query, last_run=last_run, order=order)
    assert got == want


def _forced(plan: str) -> object:
    real = query_mod._use_postings
    if plan == "auto":
        return real
    return lambda *_a: plan == "postings"


@settings(max_examples=100, deadline=None)
@given(history=histories(), order=st.sampled_from(list(Order)))
def test_lookup_and_counts_match_reference(history: list[Update], order: Order) -> None:
    ix, ref = build(history)
    assert len(ix) == len(ref.runs) == ix.stats().runs
    for rid in range(0, 9100, 7):
        entry = ix.get(rid)
        if rid in ref.runs:
            assert entry == ref.entry(rid)
            assert ix.get_seq(rid) == ref.runs[rid][3]
        else:
            assert entry is None
    assert [e.run_id for e in page_all(ix, 100, order=order)] == sorted(
        ref.runs, reverse=order is Order.DESC
    )


def test_prefix_is_by_whole_segments() -> None:
    ix = RunIndex()
    groups = [
        "/project/x/branch/a",
        "/project/x/branch/ab",
        "/project/x/tag/v1",
        "/project/x/pr/3",
        "/project/xy/branch/a",
        "/project/x-y/branch/a",
    ]
    for i, g in enumerate(groups, start=1):
        ix.apply(i, g, Phase.QUEUED, Result.UNKNOWN, 1)

    def ids(*qs: str) -> list[int]:
        return [e.run_id for e in ix.list_runs(groups=qs, order=Order.ASC).runs]

    assert ids("/project/x") == [1, 2, 3, 4]
    assert ids("/project/x/branch/a") == [1]
    assert ids("/project/x/branch/a", "/project/xy") == [1, 5]
    assert ids("/project/x-y", "/project/x/tag/v1") == [3, 6]
    assert ids() == [1, 2, 3, 4, 5, 6]
    assert ids("/project/z") == []
    # A prefix (events.group.validate_group_prefix): no empty or relative element, known types.
    for bad in ["/project//x", "//", "/project/x/bar", "/project/../x", "project/x", ""]:
        with pytest.raises(BadGroup):
            ids(bad)


times = st.one_of(st.none(), st.integers(0, 2**42))


@given(
    rid=st.integers(1, 10**15),
    g=group_path,
    p=phase,
    r=result,
    name=st.sampled_from(["", *NAMES]),
    counter=st.integers(0, 2**32),
    t=st.tuples(times, times, times),
)
def test_make_entry_equals_the_constructor(
    rid: int, g: str, p: Phase, r: Result, name: str, counter: int, t: tuple[int | None, ...]
) -> None:
    fast = make_entry(rid, g, p, r, name, counter, *t)
    real = RunEntry(
        id=format_run_id(rid),
        group=g,
        phase=p,
        result=r,
        name=name,
        counter=counter,
        enqueue_time=t[0],
        start_time=t[1],
        end_time=t[2],
    )
    assert fast == real
    assert hash(fast) == hash(real)
    assert make_entry(rid, g, p, r) == RunEntry(
        id=format_run_id(rid), group=g, phase=p, result=r, name="", counter=0,
        enqueue_time=None, start_time=None, end_time=None,
    )  # fmt: skip
    with pytest.raises(AttributeError):
        fast.group = "/other"  # type: ignore[misc]


def test_update_rules() -> None:
    ix = RunIndex()
    assert ix.apply(7, "/project/a", Phase.RUNNING, Result.UNKNOWN, 2)
    assert not ix.apply(7, "/project/a", Phase.QUEUED, Result.UNKNOWN, 1)  # older: ignored
    assert not ix.apply(7, "/project/a", Phase.FINISHED, Result.SUCCESS, 2)  # same seq: ignored
    assert ix.apply(7, "/project/a", Phase.FINISHED, Result.FAILED, 3)
    assert ix.get(7) == make_entry(
        run_id=7, group="/project/a", phase=Phase.FINISHED, result=Result.FAILED
    )
    with pytest.raises(ConflictingGroup):
        ix.apply(7, "/project/b", Phase.FINISHED, Result.SUCCESS, 4)
    assert ix.get_seq(7) == 3
    assert len(ix.groups) == 1
    for bad in ["p/a", "/project//a", "/project/a/", "", "/project/\x00", "/p/a"]:
        with pytest.raises(BadGroup):
            ix.apply(8, bad, Phase.QUEUED, Result.UNKNOWN, 1)
    assert ix.get(8) is None
    assert ix.changes == 2


def test_facts_come_from_the_phase_changes_once_each() -> None:
    ix, at = RunIndex(), 1_780_000_000_250
    ix.apply(7, "/project/a", Phase.QUEUED, Result.UNKNOWN, 1, at=at, name="ci", counter=42)
    ix.apply(7, "/project/a", Phase.RUNNING, Result.UNKNOWN, 2, at=at + 5_000)
    assert ix.get(7) == make_entry(
        run_id=7,
        group="/project/a",
        phase=Phase.RUNNING,
        result=Result.UNKNOWN,
        name="ci",
        counter=42,
        enqueue_time=1_780_000_000_000,  # to the second
        start_time=1_780_000_005_000,
    )
    # A redelivered seq 1 changes nothing; the final change sets the end; facts stay put.
    assert not ix.apply(7, "/project/a", Phase.QUEUED, Result.UNKNOWN, 1, at=at, name="ci", counter=42)  # fmt: skip
    assert ix.apply(7, "/project/a", Phase.FINISHED, Result.SUCCESS, 3, at=at + 9_000, name="x")
    e = ix.get(7)
    assert e is not None
    assert (e.name, e.counter, e.end_time) == ("ci", 42, 1_780_000_009_000)
    # A run created in setuperror is enqueued and ended at once; a run seen first at seq 3 (its
    # first changes still to come, on replay) gets its enqueue time and name when they arrive.
    ix.apply(8, "/project/a", Phase.SETUPERROR, Result.UNKNOWN, 1, at=at, name="bad")
    e = ix.get(8)
    assert e is not None
    assert (e.enqueue_time, e.start_time, e.end_time) == (1_780_000_000_000, None, 1_780_000_000_000)  # fmt: skip
    ix.apply(9, "/project/a", Phase.FINISHED, Result.FAILED, 3, at=at + 2_000)
    assert ix.apply(9, "/project/a", Phase.QUEUED, Result.UNKNOWN, 1, at=at, name="late", counter=1)  # fmt: skip
    e = ix.get(9)
    assert e is not None
    assert (e.phase, e.name, e.counter, e.enqueue_time) == (Phase.FINISHED, "late", 1, 1_780_000_000_000)  # fmt: skip
    for bad in ({"counter": 2**32}, {"counter": -1}, {"at": 2**32 * 1000}, {"at": -1000}):
        with pytest.raises(ValueError, match="out of range"):
            ix.apply(10, "/project/a", Phase.QUEUED, Result.UNKNOWN, 1, **bad)  # type: ignore[arg-type]
    assert ix.get(10) is None


def test_ids_below_the_first_seen_move_the_base() -> None:
    ix = RunIndex()
    ix.apply(1_000_000, "/project/a", Phase.QUEUED, Result.UNKNOWN, 1)
    ix.apply(10, "/project/a", Phase.QUEUED, Result.UNKNOWN, 1)
    ix.apply(500, "/project/b", Phase.QUEUED, Result.UNKNOWN, 1)
    assert [e.run_id for e in ix.list_runs(order=Order.ASC).runs] == [10, 500, 1_000_000]
    assert [e.run_id for e in ix.list_runs(groups=["/project/a"]).runs] == [1_000_000, 10]


def test_far_run_id_is_refused_without_allocating() -> None:
    ix = RunIndex(max_gap=1000)
    ix.apply(100_000, "/project/a", Phase.QUEUED, Result.UNKNOWN, 1)
    low = ix.base  # a little below the first id seen, since partitions arrive in any order
    for far in (100_000 + 1001, 10**15, low - 1000):
        with pytest.raises(RunIdOutOfRange):
            ix.apply(far, "/project/a", Phase.QUEUED, Result.UNKNOWN, 1)
    assert ix.apply(100_999, "/project/a", Phase.QUEUED, Result.UNKNOWN, 1)
    assert ix.apply(low - 999, "/project/a", Phase.QUEUED, Result.UNKNOWN, 1)
    assert len(ix) == 3
    assert ix.span < 20_000  # nothing allocated for the refused ids


def test_page_size_defaults_and_caps() -> None:
    ix = RunIndex()
    for i in range(1, 301):
        ix.apply(i, "/project/a", Phase.QUEUED, Result.UNKNOWN, 1)
    assert len(ix.list_runs().runs) == 25
    assert len(ix.list_runs(limit=0).runs) == 25
    assert len(ix.list_runs(limit=1000).runs) == 100
    with pytest.raises(BadLimit):
        ix.list_runs(limit=-1)


@pytest.mark.parametrize(
    "cursor",
    ["", "not a cursor", "AQAAAAAAAAAABQ==x", "AgAAAAAAAAAABQ", "AQAAAAAAAAAAAA", "AQ", "é"],
)
def test_malformed_cursor_is_a_bad_cursor(cursor: str) -> None:
    ix = RunIndex()
    ix.apply(1, "/project/a", Phase.QUEUED, Result.UNKNOWN, 1)
    with pytest.raises(BadCursor):
        ix.list_runs(order=Order.ASC, cursor=cursor)


def test_cursor_of_the_other_order_is_refused() -> None:
    ix = RunIndex()
    ix.apply(1, "/project/a", Phase.QUEUED, Result.UNKNOWN, 1)
    with pytest.raises(BadCursor, match="other sort order"):
        ix.list_runs(order=Order.DESC, cursor=encode_cursor(1, Order.ASC))
