"""Strict queries (issue 21): on every route with query parameters, an integer in any form but
decimal digits, a parameter the route does not know, and one given twice that is not documented
as repeatable are 400 naming it; ``group``, ``phase`` and ``result`` of ``GET /runs`` repeat."""

from __future__ import annotations

import pytest
from multidict import MultiDict

from api.bodies import parse_events_query, parse_list_query, parse_stuck_query, query_values
from api.errors import BadRequest
from events import Phase, Result
from tests.unit.test_api_support import GROUP, served

RUNS = "/api/v1/runs"
EVENTS = "/api/v1/runs/events"
STUCK = "/api/v1/stuck"


def q(*pairs: tuple[str, str]) -> MultiDict[str]:
    return MultiDict(pairs)


async def refused(client: object, path: str, query: str) -> str:
    resp = await client.get(f"{path}?{query}")  # type: ignore[attr-defined]
    body = await resp.json()
    assert resp.status == 400, (path, query, body)
    assert set(body) == {"message"}
    return str(body["message"])


# -- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["1e0", "2.0", "+3", " 3", "3 ", "03", "0x3", "٣", "3_0", "", "-1", "1e9"])  # fmt: skip
def test_a_limit_not_in_decimal_digits_is_refused_naming_it(limit: str) -> None:
    with pytest.raises(BadRequest, match=r"limit must be between 1 and 100 \(decimal digits\)"):
        parse_list_query(q(("limit", limit)))


@pytest.mark.parametrize("limit", ["0", "101", "99999999999999999999999"])
def test_a_limit_out_of_range_gets_the_same_answer(limit: str) -> None:
    with pytest.raises(BadRequest, match="limit must be between 1 and 100"):
        parse_list_query(q(("limit", limit)))


def test_plain_digits_are_taken() -> None:
    assert parse_list_query(q(("limit", "1"))).limit == 1
    assert parse_list_query(q(("limit", "100"))).limit == 100
    assert parse_list_query(q()).limit == 25
    assert parse_stuck_query(q(("older_than", "0"))) == 0
    assert parse_stuck_query(q(("older_than", "60"))) == 60_000
    assert parse_stuck_query(q()) == 600_000


@pytest.mark.parametrize(
    "pairs",
    [
        [("limit", "5"), ("limit", "6")],
        [("limit", "5"), ("limit", "5")],  # even the same value twice
        [("order", "asc"), ("order", "desc")],
        [("lastrun", "true"), ("lastrun", "true")],
        [("cursor", "x"), ("cursor", "y")],
    ],
)
def test_a_repeated_parameter_that_does_not_repeat_is_refused_naming_it(
    pairs: list[tuple[str, str]],
) -> None:
    name = pairs[0][0]
    with pytest.raises(BadRequest) as err:
        parse_list_query(q(*pairs))
    message = str(err.value)
    assert f"'{name}' (2 times) given more than once" in message
    assert "only group, phase, result repeat" in message


def test_every_repeated_parameter_is_named() -> None:
    with pytest.raises(BadRequest) as err:
        parse_list_query(q(("order", "asc"), ("limit", "5"), ("order", "asc"), ("limit", "6")))
    assert "parameters 'limit' (2 times), 'order' (2 times)" in str(err.value)


def test_group_phase_and_result_repeat_as_documented() -> None:
    got = parse_list_query(
        q(
            ("group", "/project/a"),
            ("group", "/user"),
            ("phase", "queued"),
            ("phase", "running"),
            ("result", "unknown"),
            ("result", "success"),
        )
    )
    assert got.groups == ("/project/a", "/user")
    assert got.phases == (Phase.QUEUED, Phase.RUNNING)
    assert got.results == (Result.UNKNOWN, Result.SUCCESS)


def test_unknown_parameters_are_still_named_first() -> None:
    with pytest.raises(BadRequest, match="unknown query parameter 'colour'"):
        parse_list_query(q(("colour", "x"), ("limit", "5"), ("limit", "6")))


@pytest.mark.parametrize("value", ["1e0", "2.0", "+3", " 3", "-1", "60s"])
def test_stuck_older_than_must_be_decimal_digits(value: str) -> None:
    with pytest.raises(BadRequest, match="query parameter `older_than` must be a whole number"):
        parse_stuck_query(q(("older_than", value)))


def test_stuck_older_than_once() -> None:
    with pytest.raises(BadRequest, match="'older_than' \\(2 times\\) given more than once"):
        parse_stuck_query(q(("older_than", "1"), ("older_than", "2")))
    with pytest.raises(BadRequest, match="unknown query parameter 'older'; want older_than"):
        parse_stuck_query(q(("older", "1")))


def test_the_event_stream_takes_after_once_and_nothing_else() -> None:
    assert parse_events_query(q()) is None
    assert parse_events_query(q(("after", ""))) is None  # empty: as absent (Last-Event-ID then)
    assert parse_events_query(q(("after", "v1.0"))) == "v1.0"
    with pytest.raises(BadRequest, match="'after' \\(2 times\\) given more than once"):
        parse_events_query(q(("after", "v1.0"), ("after", "v1.1")))
    with pytest.raises(BadRequest, match="unknown query parameter 'from'; want after"):
        parse_events_query(q(("from", "start")))


def test_query_values_on_a_route_without_parameters() -> None:
    assert query_values(q(), ()) == {}
    with pytest.raises(BadRequest, match="unknown query parameter 'x'; want none"):
        query_values(q(("x", "1")), ())


# -- over HTTP -----------------------------------------------------------------------------------


async def test_every_route_with_query_parameters_refuses_over_http() -> None:
    async with served() as (client, _):
        for query, words in [
            ("limit=1e0", "limit must be between 1 and 100 (decimal digits), got '1e0'"),
            ("limit=2.0", "got '2.0'"),
            ("limit=%2B3", "got '+3'"),
            ("limit=%203", "got ' 3'"),
            ("limit=5&limit=6", "'limit' (2 times) given more than once"),
            ("order=asc&order=desc", "'order' (2 times)"),
            ("lastrun=true&lastrun=false", "'lastrun' (2 times)"),
        ]:
            assert words in await refused(client, RUNS, query), query
        assert "'older_than' (2 times)" in await refused(client, STUCK, "older_than=1&older_than=2")  # fmt: skip
        assert "`older_than` must be a whole number" in await refused(client, STUCK, "older_than=1e0")  # fmt: skip
        assert "'after' (2 times)" in await refused(client, EVENTS, "after=v1.0&after=v1.0")
        assert "unknown query parameter 'colour'" in await refused(client, EVENTS, "colour=red")


async def test_repeatable_parameters_still_list_over_http() -> None:
    async with served() as (client, fakes):
        fakes.index.apply(1, f"{GROUP}0", Phase.QUEUED, Result.UNKNOWN, 1)
        fakes.index.apply(2, f"{GROUP}1", Phase.RUNNING, Result.UNKNOWN, 1)
        fakes.index.apply(3, "/user/u/branch/main", Phase.FINISHED, Result.SUCCESS, 1)
        resp = await client.get(
            f"{RUNS}?group={GROUP}0&group=/user&phase=queued&phase=finished&limit=10"
        )
        body = await resp.json()
        assert resp.status == 200, body
        assert [r["id"][-1] for r in body["runs"]] == ["3", "1"]
