"""``GET /api/v1/runs/events``: frames, heartbeats, resume without loss or repetition, 410/400;
``GET /api/v1/runs/tasks/events``: the ready tasks the same way, never mixed with phase changes."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from api import create_api
from events import Phase, PhaseChanged, Result, make_event
from tests.fakes_api import Fakes
from tests.unit.test_api_support import GROUP, new_run, served

EVENTS = "/api/v1/runs/events"
READY = "/api/v1/runs/tasks/events"


def phase_event(n: int) -> Any:
    data = PhaseChanged(group=GROUP, phase=Phase.QUEUED, result=Result.UNKNOWN, seq=1)
    return make_event(data, id=f"{n:016d}.phase.1", run_id=f"{n:016d}", at=n)


async def read_frames(resp: Any, count: int) -> tuple[list[tuple[str, str]], int]:
    """``count`` (id, data) frames from an open stream, and how many keepalives came between."""
    frames: list[tuple[str, str]] = []
    keepalives = 0
    fields: dict[str, str] = {}
    while len(frames) < count:
        line = (await resp.content.readline()).decode()
        assert line, "stream ended early"
        line = line.rstrip("\n")
        if line == ": keepalive":
            keepalives += 1
        elif line.startswith(("id: ", "data: ")):
            name, _, value = line.partition(": ")
            fields[name] = value
        elif line == "" and fields:
            frames.append((fields["id"], fields["data"]))
            fields = {}
    return frames, keepalives


async def test_stream_frames_then_resume_from_the_last_cursor_without_loss_or_repetition() -> None:
    async with served() as (client, fakes):
        feed = fakes.feed
        for n in range(1, 4):
            feed.publish(phase_event(n))
        resp = await client.get(EVENTS, params={"after": "0"})  # everything after the first
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        first, _ = await read_frames(resp, 2)
        assert [c for c, _ in first] == ["1", "2"]
        assert '"run_id":"0000000000000003"' in first[1][1]
        resp.close()  # the client goes away mid-stream
        for n in range(4, 7):
            feed.publish(phase_event(n))  # published while nobody listens
        again = await client.get(EVENTS, headers={"Last-Event-ID": first[-1][0]})
        rest, _ = await read_frames(again, 3)
        assert [c for c, _ in rest] == ["3", "4", "5"]  # no gap, no repeat
        seen = [d for _, d in first + rest]
        assert len(set(seen)) == 5
        again.close()


async def test_stream_sends_keepalives_while_idle_and_live_events_after() -> None:
    async with served(heartbeat=0.01) as (client, fakes):
        resp = await client.get(EVENTS)  # from now on
        assert (await resp.content.readline()).startswith(b": stream open")
        while (await resp.content.readline()) != b": keepalive\n":
            pass
        fakes.feed.publish(phase_event(9))
        frames, _ = await read_frames(resp, 1)
        assert frames[0][0] == "0"
        resp.close()


async def test_expired_cursor_is_410_and_malformed_cursor_400_as_json() -> None:
    async with served() as (client, fakes):
        for n in range(1, 6):
            fakes.feed.publish(phase_event(n))
        fakes.feed.truncate(3)
        resp = await client.get(EVENTS, params={"after": "0"})
        assert resp.status == 410
        assert "older than" in (await resp.json())["message"]
        resp = await client.get(EVENTS, params={"after": "x"})
        assert resp.status == 400
        assert "malformed" in (await resp.json())["message"]
        resp = await client.get(EVENTS, params={"after": "2"})  # still retained: fine
        frames, _ = await read_frames(resp, 2)
        assert [c for c, _ in frames] == ["3", "4"]
        resp.close()


async def test_ready_tasks_have_a_stream_of_their_own_and_phase_changes_keep_theirs() -> None:
    async with served() as (client, fakes):
        phases = await client.get(EVENTS)
        ready = await client.get(READY)
        assert ready.status == 200
        assert ready.headers["Content-Type"] == "text/event-stream"
        body = new_run({"id": "a", "name": "a"}, {"id": "b", "name": "b"})
        created = await client.post("/api/v1/runs", json=body)
        run_id = (await created.json())["run"]["id"]
        await client.put(f"/api/v1/runs/{run_id}/actions", json={"action_type": "start"})
        fakes.materialize()
        got, _ = await read_frames(ready, 2)
        assert [c for c, _ in got] == ["0", "1"]  # cursors of its own
        events = [json.loads(d) for _, d in got]
        assert {e["type"] for e in events} == {"task.ready"}
        assert {(e["run_id"], e["data"]["task_id"]) for e in events} == {
            (run_id, "a"),
            (run_id, "b"),
        }
        changes, _ = await read_frames(phases, 2)  # queued, running: no ready task among them
        assert {json.loads(d)["type"] for _, d in changes} == {"run.phase_changed"}
        for resp in (phases, ready):
            resp.close()
        # Resumed from its last cursor, like the phase stream.
        again = await client.get(READY, params={"after": "0"})
        frames, _ = await read_frames(again, 1)
        assert frames == got[1:]
        again.close()
        assert (await client.get(READY, params={"after": "x"})).status == 400


async def test_a_worker_without_a_ready_task_feed_answers_503() -> None:
    deps = replace(Fakes().deps(), task_feed=None)
    async with TestClient(TestServer(create_api(deps))) as client:
        resp = await client.get(READY)
        assert resp.status == 503
        assert "ready-task stream" in (await resp.json())["message"]
        assert (await client.get(EVENTS, params={"after": "x"})).status == 400
