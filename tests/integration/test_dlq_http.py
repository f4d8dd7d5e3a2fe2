"""Dead letters over HTTP on the real stack (issue 21): a worker's ``/api/v1/dlq`` lists what
``runs.dlq`` holds with the CLI's filters, a limit and a cursor; shows one decoded; redrives by
ids or filters with a dry run first, and the redriven event reaches its run's owner. The routes
want the ``admin`` scope when the worker has tokens."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from api.client import AsyncClient
from events.catalogue import TaskStatusChanged, make_event
from events.codec import encode
from events.model import TaskStatus
from partition.placement import partition_for
from tests.harness import Worker, make_settings, prepare_topics, wait_healthy, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(240)]

ADMIN = {"Authorization": "Bearer admin-token"}
READ = {"Authorization": "Bearer read-token"}
WAIT = 60  # a deadline for a hung system, not a performance assertion


async def test_dead_letters_over_http(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(
        unique,
        kafka_bootstrap,
        etcd_endpoint,
        f"file://{tmp_path}/objects",
        api_tokens="admin-token:admin+read+write;read-token:read",
    )
    await prepare_topics(s)
    worker = Worker(s, tmp_path / "w.log").start()
    url = f"http://127.0.0.1:{s.web_port}"
    try:
        await wait_healthy(url)
        async with AsyncClient(url, token="admin-token") as client:
            run = (await client.create_run(group=f"/project/{unique}/branch/main", name="r", tasks=[{"id": "a", "name": "a"}])).run  # fmt: skip
        run_id = run.id
        home = partition_for(run_id, s.partitions)
        producer = AIOKafkaProducer(bootstrap_servers=s.kafka, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(s.topic_events, b"\xff\xfe not json", partition=home)
            await producer.send_and_wait(s.topic_events, b'{"type": "run.created", oops', partition=home)  # fmt: skip
            stray = make_event(TaskStatusChanged(task_id="a", status=TaskStatus.RUNNING), id="http-redrive-me", run_id=run_id, at=1_780_000_000_001)  # fmt: skip
            await producer.send_and_wait(s.topic_events, encode(stray), partition=(home + 1) % s.partitions)  # fmt: skip
        finally:
            await producer.stop()

        async with httpx.AsyncClient(base_url=url, headers=ADMIN) as http:

            async def three() -> bool:
                got = await http.get("/api/v1/dlq")
                return got.status_code == 200 and len(got.json()["dead_letters"]) == 3

            await wait_until(three, within=WAIT, what="three dead letters listed")

            # Only an admin token reads them.
            assert (await http.get("/api/v1/dlq", headers=READ)).status_code == 403
            assert (await http.get("/api/v1/dlq", headers={"Authorization": ""})).status_code == 401

            page = (await http.get("/api/v1/dlq")).json()
            rows = page["dead_letters"]
            # Newest first; the three may carry the same millisecond, so pick them by content.
            assert sorted(r["reason"] for r in rows) == ["invalid_json", "invalid_json", "no_key"], rows  # fmt: skip
            assert page.get("next_cursor") is None
            times = [r["time"] for r in rows]
            assert times == sorted(times, reverse=True)
            no_key = next(r for r in rows if r["reason"] == "no_key")
            # The binary one was sent first: the lower offset in the source partition.
            binary = min((r for r in rows if r["reason"] == "invalid_json"), key=lambda r: r["source_offset"])  # fmt: skip
            assert no_key["source_topic"] == s.topic_events
            assert no_key["source_partition"] == (home + 1) % s.partitions

            # limit and cursor walk the same records, newest first, each once.
            first = (await http.get("/api/v1/dlq", params={"limit": "2"})).json()
            assert len(first["dead_letters"]) == 2
            rest = (await http.get("/api/v1/dlq", params={"limit": "2", "cursor": first["next_cursor"]})).json()  # fmt: skip
            assert [r["id"] for r in first["dead_letters"] + rest["dead_letters"]] == [r["id"] for r in rows]  # fmt: skip
            assert rest.get("next_cursor") is None

            # Filters as the CLI's: reason, source partition, time, ids.
            only = (await http.get("/api/v1/dlq", params={"reason": "no_key"})).json()
            assert [r["id"] for r in only["dead_letters"]] == [no_key["id"]]
            here = (await http.get("/api/v1/dlq", params={"source_partition": str(home)})).json()
            assert no_key["id"] not in [r["id"] for r in here["dead_letters"]]
            assert len(here["dead_letters"]) == 2
            assert (await http.get("/api/v1/dlq", params={"until": "2000-01-01T00:00:00Z"})).json()["dead_letters"] == []  # fmt: skip
            assert len((await http.get("/api/v1/dlq", params={"since": "1h"})).json()["dead_letters"]) == 3  # fmt: skip
            by_id = (await http.get("/api/v1/dlq", params={"id": no_key["id"]})).json()
            assert [r["id"] for r in by_id["dead_letters"]] == [no_key["id"]]
            assert (await http.get("/api/v1/dlq", params={"since": "soon"})).status_code == 400

            # One shown: JSON as text, anything else as base64.
            p, o = no_key["id"].split(":")
            shown = (await http.get(f"/api/v1/dlq/{p}/{o}")).json()
            assert shown["value"]["encoding"] == "json"
            assert "http-redrive-me" in shown["value"]["text"]
            assert shown["decoded"][0]["id"] == "http-redrive-me"
            assert shown["headers"]["runstream-error"] == "no_key"
            assert shown["truncated"] is False
            bp, bo = binary["id"].split(":")
            raw = (await http.get(f"/api/v1/dlq/{bp}/{bo}")).json()
            assert raw["value"]["encoding"] == "base64"
            assert base64.b64decode(raw["value"]["text"]) == b"\xff\xfe not json"
            assert raw["decode_error"]
            assert (await http.get(f"/api/v1/dlq/{p}/999999")).status_code == 404

            async def history_ids() -> list[str]:
                got = await http.get(f"/api/v1/runs/{run_id}/history")
                return [e["event_id"] for e in got.json()["events"]]

            # Redrive: a dry run sends nothing; by filter, the fixable one goes home.
            dry = (await http.post("/api/v1/dlq/redrive", json={"all": True, "dry_run": True})).json()  # fmt: skip
            assert (dry["dry_run"], dry["redriven"], dry["skipped"]) == (True, 1, 2)
            outcome = {i["id"]: i["outcome"] for i in dry["items"]}
            assert outcome[no_key["id"]] == "would_redrive"
            assert "http-redrive-me" not in await history_ids()
            assert (await http.post("/api/v1/dlq/redrive", json={})).status_code == 400
            done = (await http.post("/api/v1/dlq/redrive", json={"reasons": ["no_key"]})).json()
            assert (done["redriven"], done["skipped"]) == (1, 0)
            assert done["items"] == [
                {
                    "id": no_key["id"],
                    "outcome": "redriven",
                    "topic": s.topic_events,
                    "partition": home,
                    "why": None,
                }
            ]
            assert done["by_topic"] == {s.topic_events: 1}

            async def arrived() -> bool:
                return "http-redrive-me" in await history_ids()

            await wait_until(arrived, within=WAIT, what="the redriven event at its run's owner")
    finally:
        worker.stop()
