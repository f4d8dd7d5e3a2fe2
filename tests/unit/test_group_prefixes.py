"""Every group prefix lists (issue 21): the root ``/``, a type (``/project``, ``/user``), a group
path, a group path then a type (``/project/p1/branch``), each with or without one trailing ``/``;
with and without ``lastrun``, paged by keyset cursors; ``/a/b`` never matches ``/a/bc``. Against
the index (a naive reference) and over HTTP (the API over fakes)."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import BadRequest, Phase, Result, is_group_prefix
from events.group import GroupPrefix, validate_group_prefix
from indexer import BadGroup, Order, RunIndex
from tests.unit.test_api_support import served

RUNS = "/api/v1/runs"

GROUPS = [
    "/project/x/branch/a",
    "/project/x/branch/ab",
    "/project/x/branch/a/pr/1",
    "/project/x/tag/v1",
    "/project/x/pr/3",
    "/project/x",
    "/project/xy/branch/a",
    "/project/x-y/branch/a",
    "/user/x/branch/a",
    "/user/u/tag/t",
]

# Every form of prefix over GROUPS, and what it is the same as.
PREFIXES = [
    "/",
    "/project",
    "/project/",
    "/user",
    "/user/",
    "/project/x",
    "/project/x/",
    "/project/x/branch",
    "/project/x/branch/",
    "/project/x/branch/a",
    "/project/x/branch/a/",
    "/project/x/branch/a/pr",
    "/project/x/tag",
    "/project/xy",
    "/project/z",
    "/user/x/branch",
]


def reference(prefixes: list[str]) -> set[str]:
    """The groups under any of ``prefixes``, by plain string work on whole elements."""

    def under(g: str, q: str) -> bool:
        q = q[:-1] if len(q) > 1 and q.endswith("/") else q
        return q == "/" or g == q or g.startswith(q + "/")

    return {g for g in GROUPS if not prefixes or any(under(g, q) for q in prefixes)}


# -- the check -----------------------------------------------------------------------------------


def test_every_prefix_form_is_valid_and_a_trailing_slash_is_dropped() -> None:
    assert validate_group_prefix("/") == "/"
    for q in PREFIXES:
        canonical = validate_group_prefix(q)
        assert canonical == (q[:-1] if len(q) > 1 and q.endswith("/") else q)
        assert validate_group_prefix(canonical) == canonical


@pytest.mark.parametrize(
    ("prefix", "words"),
    [
        ("", "group is empty"),
        ("project/x", "not an absolute path"),
        ("//", "empty or relative element"),
        ("/project//", "empty or relative element"),
        ("/project/x//", "empty or relative element"),
        ("/project//x", "empty or relative element"),
        ("/project/../x", "empty or relative element"),
        ("/project/x/branch/.", "empty or relative element"),
        ("/projects", "'projects' is not one of ['project', 'user']"),
        ("/project/x/branches", "'branches' is not one of ['branch', 'pr', 'tag']"),
        ("/project/x/project/y", "'project' is not one of"),
        ("/project/x\x01", "control character"),
        ("/project/" + "x" * 1020, "above 1024"),
    ],
)
def test_a_bad_prefix_is_refused_saying_what_is_wrong(prefix: str, words: str) -> None:
    with pytest.raises(BadRequest, match="group") as err:
        validate_group_prefix(prefix)
    assert words in str(err.value)


_element = st.sampled_from(["project", "user", "branch", "tag", "pr", "p1", ".", "..", ".x", "", "a\x01", "é"])  # fmt: skip
_paths = st.one_of(
    st.lists(_element, max_size=6).map(lambda e: "/" + "/".join(e)),
    st.lists(_element, max_size=6).map(lambda e: "/" + "/".join(e) + "/"),
    st.lists(_element, max_size=6).map("/".join),
    st.text(max_size=30),
)
_prefix_schema = jsonschema_rs.validator_for(msgspec.json.schema(GroupPrefix))


@given(path=_paths)
def test_validate_group_prefix_and_the_documented_pattern_judge_alike(path: str) -> None:
    if _prefix_schema.is_valid(path):
        validate_group_prefix(path)
    else:
        with pytest.raises(BadRequest, match="group"):
            validate_group_prefix(path)


def test_is_group_prefix_agrees_with_every_form() -> None:
    for q in PREFIXES:
        assert {g for g in GROUPS if is_group_prefix(q, g)} == reference([q]), q


# -- the index -----------------------------------------------------------------------------------


def make_index() -> tuple[RunIndex, dict[int, str]]:
    """Three runs per group, ids interleaved across groups; every third one finished."""
    ix = RunIndex()
    group_of: dict[int, str] = {}
    run_id = 0
    for _ in range(3):
        for g in GROUPS:
            run_id += 1
            phase = Phase.FINISHED if run_id % 3 == 0 else Phase.QUEUED
            result = Result.SUCCESS if phase is Phase.FINISHED else Result.UNKNOWN
            ix.apply(run_id, g, phase, result, 1)
            group_of[run_id] = g
    return ix, group_of


def paged(ix: RunIndex, limit: int, **query: Any) -> list[int]:
    """Every run of a listing, page after page by cursor."""
    out: list[int] = []
    cursor = None
    for _ in range(100):
        page = ix.list_runs(limit=limit, cursor=cursor, **query)
        out += [e.run_id for e in page.runs]
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor
    raise AssertionError("the pages never ended")


def expected(group_of: dict[int, str], prefixes: list[str], last_run: bool, phases: list[Phase], ix: RunIndex, order: Order) -> list[int]:  # fmt: skip
    wanted = reference(prefixes)
    ids = [
        r
        for r, g in group_of.items()
        if g in wanted and (not phases or ix.get(r).phase in phases)  # type: ignore[union-attr]
    ]
    if last_run:
        best: dict[str, int] = {}
        for r in ids:
            best[group_of[r]] = max(r, best.get(group_of[r], 0))
        ids = list(best.values())
    return sorted(ids, reverse=order is Order.DESC)


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("last_run", [False, True])
def test_every_prefix_lists_with_and_without_lastrun_paged(prefix: str, last_run: bool) -> None:
    ix, group_of = make_index()
    for order in Order:
        want = expected(group_of, [prefix], last_run, [], ix, order)
        for limit in (1, 2, 7, 100):
            got = paged(ix, limit, groups=[prefix], last_run=last_run, order=order)
            assert got == want, (prefix, last_run, order, limit)


def test_the_root_and_no_group_list_the_same() -> None:
    ix, _ = make_index()
    for last_run in (False, True):
        assert paged(ix, 4, groups=["/"], last_run=last_run) == paged(ix, 4, last_run=last_run)
    assert len(paged(ix, 4, groups=["/"])) == 3 * len(GROUPS)


def test_a_trailing_slash_is_the_same_as_none_at_every_level() -> None:
    ix, _ = make_index()
    for q in ["/project", "/project/x", "/project/x/branch", "/project/x/branch/a"]:
        for last_run in (False, True):
            assert paged(ix, 3, groups=[q + "/"], last_run=last_run) == paged(ix, 3, groups=[q], last_run=last_run)  # fmt: skip


def test_whole_elements_only() -> None:
    ix, group_of = make_index()
    got = {group_of[r] for r in paged(ix, 100, groups=["/project/x/"])}
    assert "/project/xy/branch/a" not in got
    assert "/project/x-y/branch/a" not in got
    got = {group_of[r] for r in paged(ix, 100, groups=["/project/x/branch/a"])}
    assert got == {"/project/x/branch/a", "/project/x/branch/a/pr/1"}  # not .../branch/ab
    assert {group_of[r] for r in paged(ix, 100, groups=["/project/x/branch"])} == {
        "/project/x/branch/a",
        "/project/x/branch/ab",
        "/project/x/branch/a/pr/1",
    }
    assert {group_of[r] for r in paged(ix, 100, groups=["/user"])} == {"/user/x/branch/a", "/user/u/tag/t"}  # fmt: skip


def test_a_bad_prefix_is_bad_group_for_the_index() -> None:
    ix, _ = make_index()
    for bad in ["", "//", "/project//x", "/projects", "/project/x/bar"]:
        with pytest.raises(BadGroup):
            ix.list_runs(groups=[bad])


@settings(max_examples=150, deadline=None)
@given(
    prefixes=st.lists(st.sampled_from(PREFIXES), max_size=3),
    last_run=st.booleans(),
    phases=st.lists(st.sampled_from([Phase.QUEUED, Phase.FINISHED]), max_size=1),
    order=st.sampled_from(list(Order)),
    limit=st.integers(1, 8),
)
def test_any_mix_of_prefixes_filters_and_pages_matches_the_reference(
    prefixes: list[str], last_run: bool, phases: list[Phase], order: Order, limit: int
) -> None:
    ix, group_of = make_index()
    got = paged(ix, limit, groups=prefixes, last_run=last_run, phases=phases, order=order)
    assert got == expected(group_of, prefixes, last_run, phases, ix, order)


# -- over HTTP -----------------------------------------------------------------------------------


async def test_every_prefix_lists_over_http_paged_with_and_without_lastrun() -> None:
    async with served() as (client, fakes):
        _, group_of = make_index()
        for run_id, g in group_of.items():  # the listing comes from the worker's index
            fakes.index.apply(run_id, g, Phase.QUEUED, Result.UNKNOWN, 1)

        async def listed(params: dict[str, str]) -> list[str]:
            out: list[str] = []
            cursor = None
            while True:
                query = dict(params, limit="2", **({"cursor": cursor} if cursor else {}))
                resp = await client.get(RUNS, params=query)
                body = await resp.json()
                assert resp.status == 200, (params, body)
                out += [r["group"] for r in body["runs"]]
                cursor = body["next_cursor"]
                if cursor is None:
                    return out

        for q in ["/", "/project", "/project/", "/user", "/project/x/", "/project/x/branch"]:
            assert set(await listed({"group": q})) == reference([q]), q
            last = await listed({"group": q, "lastrun": "true"})
            assert sorted(last) == sorted(reference([q])), q  # one run per group
        assert len(await listed({"group": "/"})) == 3 * len(GROUPS)
        both = await listed({"group": "/user", "lastrun": "true"})
        assert len(both) == 2


# -- the per-group figures the broad plans use ---------------------------------------------------


def assert_figures_match_postings(ix: RunIndex) -> None:
    for g in range(1, len(ix.postings)):
        p = ix.postings[g]
        assert int(ix.sizes[g]) == p.n, g
        if p.n:
            assert int(ix.lasts[g]) == p.last(), g


@settings(max_examples=60, deadline=None)
@given(
    updates=st.lists(
        st.tuples(st.integers(1, 20_000), st.sampled_from(GROUPS)), min_size=1, max_size=60
    )
)
def test_sizes_and_lasts_follow_the_postings_through_rebases_and_dumps(
    updates: list[tuple[int, str]],
) -> None:
    from indexer import decode, encode, snapshot

    ix = RunIndex()
    groups: dict[int, str] = {}
    for run_id, g in updates:  # any order: lower ids rebase the columns
        g = groups.setdefault(run_id, g)  # a run never moves
        ix.apply(run_id, g, Phase.QUEUED, Result.UNKNOWN, 1)
        assert_figures_match_postings(ix)
    back, _ = decode(encode(snapshot(ix)))
    assert_figures_match_postings(back)
    for q in ["/", "/project", "/user/", "/project/x/branch"]:
        want = paged(ix, 5, groups=[q], last_run=True)
        assert paged(back, 5, groups=[q], last_run=True) == want
        best: dict[str, int] = {}
        for run_id, g in groups.items():
            if g in reference([q]):
                best[g] = max(run_id, best.get(g, 0))
        assert want == sorted(best.values(), reverse=True)
