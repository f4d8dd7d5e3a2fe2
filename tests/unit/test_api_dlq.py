"""The dead-letter routes over fakes (``api.dlq``): listing with filters, limit and cursor, one
dead letter decoded, redrive by ids or filters with dry_run, and what is refused."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from api.dlq import DlqCursor, parse_time
from tests.fakes_api import Fakes
from tests.fakes_dlq import FakeDeadLetters, dead_letter
from tests.unit.test_api_support import served

DLQ = "/api/v1/dlq"
T0 = 1_700_000_000_000


def fakes_with(n: int = 5) -> Fakes:
    records = [
        dead_letter(
            i % 2,
            i,
            reason="undecodable" if i % 3 else "no_key",
            timestamp_ms=T0 + i * 1000,
            source_partition=i % 4,
        )
        for i in range(n)
    ]
    return Fakes(dead_letters=FakeDeadLetters.with_records(*records))


async def ok(resp: Any, status: int = 200) -> Any:
    assert resp.status == status, await resp.text()
    return await resp.json()


async def refused(resp: Any, status: int = 400) -> str:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert isinstance(body["message"], str)
    assert body["message"]
    return str(body["message"])


async def test_list_is_newest_first_and_pages_with_the_cursor() -> None:
    async with served(fakes_with(5)) as (client, _):
        first = await ok(await client.get(DLQ, params={"limit": "2"}))
        assert [r["id"] for r in first["dead_letters"]] == ["0:4", "1:3"]
        assert first["next_cursor"] == DlqCursor(T0 + 3000, 1, 3).encode()
        second = await ok(await client.get(DLQ, params={"limit": "2", "cursor": first["next_cursor"]}))  # fmt: skip
        assert [r["id"] for r in second["dead_letters"]] == ["0:2", "1:1"]
        third = await ok(await client.get(DLQ, params={"limit": "2", "cursor": second["next_cursor"]}))  # fmt: skip
        assert [r["id"] for r in third["dead_letters"]] == ["0:0"]
        assert third.get("next_cursor") is None
        row = third["dead_letters"][0]
        assert row["reason"] == "no_key"
        assert row["source_topic"] == "runs.events"


async def test_list_filters_as_the_cli_does() -> None:
    async with served(fakes_with(6)) as (client, _):
        by_reason = await ok(await client.get(DLQ, params={"reason": "no_key"}))
        assert [r["id"] for r in by_reason["dead_letters"]] == ["1:3", "0:0"]
        by_source = await ok(
            await client.get(DLQ, params=[("source_partition", "1"), ("source_partition", "2")])
        )
        assert [r["id"] for r in by_source["dead_letters"]] == ["1:5", "0:2", "1:1"]
        by_id = await ok(await client.get(DLQ, params=[("id", "1:5"), ("id", "0:0")]))
        assert [r["id"] for r in by_id["dead_letters"]] == ["1:5", "0:0"]
        since = "2023-11-14T22:13:23Z"  # T0 + 3 s, in ISO 8601
        assert parse_time(since).timestamp() * 1000 == T0 + 3000
        recent = await ok(await client.get(DLQ, params={"since": since}))
        assert [r["id"] for r in recent["dead_letters"]] == ["1:5", "0:4", "1:3"]
        until = await ok(await client.get(DLQ, params={"until": since}))
        assert [r["id"] for r in until["dead_letters"]] == ["0:2", "1:1", "0:0"]
        assert (await ok(await client.get(DLQ, params={"since": "10m"})))["dead_letters"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "x"},
        {"cursor": "nope"},
        {"since": "yesterday"},
        {"id": "3"},
        {"source_partition": "-1"},
        {"reason": ""},
        {"order": "asc"},
    ],
)
async def test_list_refuses_bad_parameters(params: dict[str, str]) -> None:
    async with served(fakes_with(1)) as (client, _):
        await refused(await client.get(DLQ, params=params))


async def test_show_decodes_one_with_its_value_as_text_or_base64() -> None:
    fakes = Fakes(
        dead_letters=FakeDeadLetters.with_records(
            dead_letter(0, 7, value=b'{"id": "e1"}'),
            dead_letter(2, 9, value=b"\xff\x00binary", truncated_from=9000),
        )
    )
    async with served(fakes) as (client, _):
        text = await ok(await client.get(f"{DLQ}/0/7"))
        assert text["value"] == {"encoding": "json", "text": '{"id": "e1"}'}
        assert text["truncated"] is False
        assert text["headers"]["runstream-error"] == "undecodable"
        raw = await ok(await client.get(f"{DLQ}/2/9"))
        assert raw["value"]["encoding"] == "base64"
        assert base64.b64decode(raw["value"]["text"]) == b"\xff\x00binary"
        assert raw["truncated"] is True
        assert raw["truncated_from"] == 9000
        await refused(await client.get(f"{DLQ}/2/10"), 404)
        await refused(await client.get(f"{DLQ}/x/1"), 400)


async def test_redrive_by_ids_or_filters_and_dry_run() -> None:
    fakes = fakes_with(4)
    fakes.dead_letters.records.append(dead_letter(1, 11, truncated_from=99, timestamp_ms=T0))
    async with served(fakes) as (client, f):
        dry = await ok(await client.post(f"{DLQ}/redrive", json={"ids": ["0:2"], "dry_run": True}))
        assert dry["dry_run"] is True
        assert dry["redriven"] == 1
        assert dry["items"] == [
            {
                "id": "0:2",
                "outcome": "would_redrive",
                "topic": "runs.events",
                "partition": None,
                "why": None,
            }
        ]
        assert f.dead_letters.redriven == []
        done = await ok(await client.post(f"{DLQ}/redrive", json={"reasons": ["undecodable"]}))
        assert done["redriven"] == 2
        assert done["skipped"] == 1
        assert {i["id"]: i["outcome"] for i in done["items"]} == {
            "1:1": "redriven",
            "0:2": "redriven",
            "1:11": "skipped",
        }
        assert sorted(f.dead_letters.redriven) == ["0:2", "1:1"]
        everything = await ok(await client.post(f"{DLQ}/redrive", json={"all": True, "dry_run": True}))  # fmt: skip
        assert everything["redriven"] + everything["skipped"] == 5


@pytest.mark.parametrize(
    "body",
    [{}, {"dry_run": True}, {"ids": ["7"]}, {"since": "soon", "all": True}, {"what": 1}, [1]],
)
async def test_redrive_refuses_a_body_selecting_nothing_or_malformed(body: Any) -> None:
    async with served(fakes_with(2)) as (client, f):
        await refused(await client.post(f"{DLQ}/redrive", json=body))
        assert f.dead_letters.redriven == []


async def test_without_a_port_the_routes_answer_503_after_checking_the_request() -> None:
    fakes = fakes_with(1)
    deps = fakes.deps()
    from dataclasses import replace

    from aiohttp.test_utils import TestClient, TestServer

    from api import create_api

    app = create_api(replace(deps, dead_letters=None))
    async with TestClient(TestServer(app)) as client:
        await refused(await client.get(DLQ, params={"limit": "0"}), 400)
        await refused(await client.get(DLQ), 503)
        await refused(await client.post(f"{DLQ}/redrive", json={"all": True}), 503)
