"""The executors' routes over fakes: ``POST /api/v1/executors/{id}/heartbeat`` (204 once the
heartbeat is appended, 400 naming what is wrong) and ``GET /api/v1/executors/{id}``."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from api import Unavailable
from api.bodies import parse_heartbeat, require_executor_id
from api.errors import BadRequest
from events import Heartbeat
from events.executors import DEFAULT_LEASE_MS
from tests.fakes_api import Fakes
from tests.unit.test_api import error_of, json_of
from tests.unit.test_api_support import served

EXECUTORS = "/api/v1/executors"


def beat(executor_id: str) -> str:
    return f"{EXECUTORS}/{quote(executor_id, safe='')}/heartbeat"


async def test_a_heartbeat_is_appended_with_its_lease_and_the_clock_and_answered_204() -> None:
    fakes = Fakes(now=1764292659000)
    async with served(fakes) as (client, _):
        resp = await client.post(beat("runner-7"), json={"lease_ms": 5000})
        assert resp.status == 204, await resp.text()
        assert await resp.read() == b""
    assert fakes.executors.heartbeats == [
        Heartbeat(executor_id="runner-7", lease_ms=5000, at=1764292659000)
    ]


@pytest.mark.parametrize("body", [None, b"", b"  \n", b"{}"])
async def test_without_a_lease_the_default_lease(body: bytes | None) -> None:
    async with served() as (client, fakes):
        resp = await client.post(beat("runner-7"), data=body)
        assert resp.status == 204, await resp.text()
    [hb] = fakes.executors.heartbeats
    assert hb.lease_ms == DEFAULT_LEASE_MS == 30_000


@pytest.mark.parametrize(
    "executor_id", ["runner/7", "a%b", "x?y#z", "~!\"$&'()*+,;=:@[]", "r" * 200]
)
async def test_any_printable_ascii_id_travels_percent_encoded(executor_id: str) -> None:
    async with served() as (client, fakes):
        resp = await client.post(beat(executor_id))
        assert resp.status == 204, await resp.text()
        assert [h.executor_id for h in fakes.executors.heartbeats] == [executor_id]
        body = await json_of(await client.get(f"{EXECUTORS}/{quote(executor_id, safe='')}"), 200)
        assert body["executor_id"] == executor_id


@pytest.mark.parametrize(
    ("executor_id", "wanted"),
    [
        ("a b", "invalid executor id 'a b'"),
        ("é", "invalid executor id 'é'"),
        ("r" * 201, "want 1 to 200 printable ASCII characters without spaces"),
        ("tab\there", "invalid executor id"),
    ],
)
async def test_a_bad_executor_id_is_400_naming_it(executor_id: str, wanted: str) -> None:
    async with served() as (client, fakes):
        message = await error_of(await client.post(beat(executor_id)), 400)
        assert wanted in message
        message = await error_of(await client.get(f"{EXECUTORS}/{quote(executor_id)}"), 400)
        assert wanted in message
    assert fakes.executors.heartbeats == []


@pytest.mark.parametrize(
    ("body", "wanted"),
    [
        ({"lease_ms": 999}, "Expected `int` >= 1000 - at `$.lease_ms`"),
        ({"lease_ms": 3_600_001}, "Expected `int` <= 3600000 - at `$.lease_ms`"),
        ({"lease_ms": 30000.0}, "Expected `int`, got `float` - at `$.lease_ms`"),
        ({"lease_ms": "30000"}, "Expected `int`, got `str` - at `$.lease_ms`"),
        ({"lease": 30000}, "unknown field `lease` - at `$` (known: lease_ms)"),
        ([], "Expected `object`, got `array`"),
        (b"{", "request body is not valid JSON"),
    ],
)
async def test_a_bad_lease_or_body_is_400_naming_what_is_wrong(body: Any, wanted: str) -> None:
    async with served() as (client, fakes):
        resp = await (
            client.post(beat("runner-7"), data=body)
            if isinstance(body, bytes)
            else client.post(beat("runner-7"), json=body)
        )
        assert wanted in await error_of(resp, 400)
    assert fakes.executors.heartbeats == []


async def test_kafka_not_acknowledging_is_503_with_retry_after() -> None:
    async with served() as (client, fakes):
        fakes.executors.fail = Unavailable("Kafka did not acknowledge the heartbeat within 10 s")
        resp = await client.post(beat("runner-7"))
        assert "did not acknowledge" in await error_of(resp, 503)
        assert resp.headers["Retry-After"]


async def test_a_worker_without_executors_answers_503() -> None:
    fakes = Fakes()
    deps = fakes.deps()
    from dataclasses import replace

    from aiohttp.test_utils import TestClient, TestServer

    from api import create_api

    app = create_api(replace(deps, executors=None))
    async with TestClient(TestServer(app)) as client:
        await error_of(await client.post(beat("runner-7")), 503)
        await error_of(await client.get(f"{EXECUTORS}/runner-7"), 503)


async def test_get_shows_the_last_heartbeat_heard_and_404_before_any() -> None:
    fakes = Fakes(now=1000)
    async with served(fakes) as (client, _):
        message = await error_of(await client.get(f"{EXECUTORS}/runner-7"), 404)
        assert "runner-7" in message
        await client.post(beat("runner-7"), json={"lease_ms": 2000})
        fakes.now = 2000
        await client.post(beat("runner-7"), json={"lease_ms": 4000})
        body = await json_of(await client.get(f"{EXECUTORS}/runner-7"), 200)
    assert body == {
        "executor_id": "runner-7",
        "lease_ms": 4000,
        "at": 2000,
        "seen_ms_ago": 0,
        "lapsed": False,
    }


async def test_the_token_guards_the_executor_routes() -> None:
    async with served(api_token="s3cret") as (client, fakes):
        await error_of(await client.post(beat("runner-7")), 401)
        ok = await client.post(beat("runner-7"), headers={"Authorization": "Bearer s3cret"})
        assert ok.status == 204
    assert len(fakes.executors.heartbeats) == 1


def test_parsers_directly() -> None:
    assert parse_heartbeat(b'{"lease_ms": 1000}') == 1000
    assert parse_heartbeat(b"") == DEFAULT_LEASE_MS
    assert require_executor_id("!~") == "!~"
    with pytest.raises(BadRequest):
        require_executor_id("")
