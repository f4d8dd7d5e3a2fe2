"""The HTTP API over in-memory fakes: every status code, each convention and each refusal."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import pytest

from api import INTERNAL_MESSAGE
from events import EventType, TaskStatus
from tests.fakes_api import Fakes
from tests.unit.test_api_support import GROUP, new_run, served, set_task_status, task

RUNS = "/api/v1/runs"


async def json_of(resp: Any, status: int) -> Any:
    body = await resp.json()
    assert resp.status == status, body
    return body


async def error_of(resp: Any, status: int) -> str:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"message"}
    assert isinstance(body["message"], str)
    assert body["message"]
    return str(body["message"])


async def create(client: Any, body: dict[str, Any] | None = None) -> dict[str, Any]:
    resp = await client.post(RUNS, json=body or new_run())
    out: dict[str, Any] = await json_of(resp, 201)
    return out


# -- creation ------------------------------------------------------------------------------------


async def test_create_gives_201_with_run_and_config_and_event_in_log() -> None:
    async with served() as (client, fakes):
        resp = await client.post(
            RUNS, json=new_run(task("a"), task("b", "a"), annotations={"k": "v"})
        )
        body = await json_of(resp, 201)
        run, rc = body["run"], body["run_config"]
        assert run["id"] == rc["id"] == "0000000000000001"
        assert (run["phase"], run["result"], run["group"]) == ("queued", "unknown", GROUP)
        assert [t["level"] for t in rc["tasks"]] == [0, 1]
        assert run["annotations"] == {"k": "v"}
        assert resp.headers["Location"] == f"{RUNS}/{run['id']}"
        assert resp.headers["ETag"] == '"1"'
        assert body["seq"] == 1
        [event] = fakes.owners.events
        assert (event.type, event.id, event.run_id) == (EventType.RUN_CREATED, f"{run['id']}.created", run["id"])  # fmt: skip


async def test_a_write_answers_only_once_the_owner_applied_it_and_reads_show_it() -> None:
    fakes = Fakes()
    fakes.owners.apply_writes = False  # the owner's materializer applies when the test says
    async with served(fakes) as (client, _):
        pending = asyncio.ensure_future(client.post(RUNS, json=new_run()))
        for _ in range(50):
            if fakes.owners.events:
                break
            await asyncio.sleep(0.01)
        [event] = fakes.owners.events  # in the log ...
        assert not pending.done()  # ... but no answer before the apply
        await error_of(await client.get(f"{RUNS}/{event.run_id}"), 404)  # not applied: not there
        fakes.materialize()
        created = await json_of(await pending, 201)
        got = await json_of(await client.get(f"{RUNS}/{created['run']['id']}"), 200)
        assert got == created


async def test_a_write_the_owner_refuses_at_apply_is_400_with_its_reason_never_2xx() -> None:
    fakes = Fakes()
    async with served(fakes) as (client, _):
        run_id = (await create(client))["run"]["id"]
        fakes.owners.apply_writes = False
        pending = asyncio.ensure_future(act(client, run_id, "start"))
        for _ in range(50):
            if len(fakes.owners.events) == 2:
                break
            await asyncio.sleep(0.01)
        # Before the owner applies our start, another producer's cancel lands first.
        from events import CancelRequested, make_event

        fakes.owners.apply(make_event(CancelRequested(), id="other", run_id=run_id, at=1))
        fakes.materialize()  # the owner applies our start now, and refuses it
        assert "a final phase never changes" in await error_of(await pending, 400)
        got = await json_of(await client.get(f"{RUNS}/{run_id}"), 200)
        assert got["run"]["phase"] == "cancelled"


async def test_a_creation_whose_id_is_taken_takes_the_next_id() -> None:
    fakes = Fakes()
    async with served(fakes) as (client, _):
        # Runs 1 and 2 exist; then the id source hands out 1 and 2 again (as if a producer
        # writing straight to the log had used them).
        first = await create(client, new_run(name="direct"))
        await create(client)
        fakes.ids._next = itertools.count(1)
        created = await create(client)
        assert created["run"]["id"] == "0000000000000003"
        assert fakes.owners.states[first["run"]["id"]].run.name == "direct"  # untouched
        # The two creations with taken ids reached the log and were refused by the owner.
        assert len(fakes.owners.events) == 5
        assert fakes.owners.states["0000000000000002"].run.name == "build"


async def test_an_event_larger_than_the_log_accepts_is_413_before_the_append() -> None:
    fakes = Fakes()
    fakes.owners.max_event_bytes = 2_000
    async with served(fakes) as (client, _):
        big = new_run(task("a"), environment={"BIG": "x" * 3_000})
        message = await error_of(await client.post(RUNS, json=big), 413)
        assert "bytes" in message
        assert str(fakes.owners.max_event_bytes) in message
        assert fakes.owners.events == []


async def test_no_settled_owner_is_503_with_retry_after_and_a_json_message() -> None:
    from api import Unsettled

    fakes = Fakes()
    async with served(fakes) as (client, _):
        run_id = "0000000000000007"
        fakes.owners.routes[run_id] = Unsettled("partition 3 has no owner right now (rebalance)")
        resp = await client.get(f"{RUNS}/{run_id}")
        assert "rebalance" in await error_of(resp, 503)
        assert resp.headers["Retry-After"] == "1"
        resp = await act(client, run_id, "start")
        assert "rebalance" in await error_of(resp, 503)
        assert fakes.owners.events == []


async def test_a_relayed_request_for_a_partition_owned_elsewhere_is_503_never_relayed_again() -> (
    None
):
    from api import Remote
    from api.cluster import ClusterKey
    from api.relay import RELAY_HEADER

    fakes = Fakes()
    async with served(fakes) as (client, _):
        run_id = "0000000000000007"
        fakes.owners.routes[run_id] = Remote("http://127.0.0.1:9")  # nothing listens there
        # Signed as a worker of this process signs its hop (api.cluster); unsigned: 400.
        relayed = ClusterKey().sign("GET", f"{RUNS}/{run_id}", {RELAY_HEADER: "http://127.0.0.1:1"})  # fmt: skip
        resp = await client.get(f"{RUNS}/{run_id}", headers=relayed)
        assert "does not own" in await error_of(resp, 503)
        # Not relayed: the owner is tried, and its silence is a 503 too.
        resp = await client.get(f"{RUNS}/{run_id}")
        assert "did not answer" in await error_of(resp, 503)


async def test_inconsistent_tasks_give_a_setuperror_run_still_201() -> None:
    async with served() as (client, _):
        body = await create(client, new_run(task("a", "zz"), task("b", "b")))
        assert body["run"]["phase"] == "setuperror"
        messages = [e["message"] for e in body["run_config"]["setup_errors"]]
        assert any("missing task 'zz'" in m for m in messages)
        assert any("depends on itself" in m for m in messages)


async def test_supplied_setup_errors_give_a_setuperror_run_named_setup_error() -> None:
    async with served() as (client, _):
        body = await create(client, {"group": GROUP, "setup_errors": ["config does not parse", {"message": "m2", "task_ids": ["t"]}]})  # fmt: skip
        assert (body["run"]["phase"], body["run"]["name"]) == ("setuperror", "Setup Error")
        assert body["run_config"]["setup_errors"][0] == {"message": "config does not parse", "task_ids": []}  # fmt: skip


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1]", "Expected `object`, got `array` - at `$`"),
        (b'{"name": "x", "tasks": []}', "missing required field `group`"),
        (
            b'{"name": "x", "group": "project/p", "tasks": [{"id": "a", "name": "a"}]}',
            "not an absolute path",
        ),
        (
            b'{"name": "x", "group": "/project/p\\u0001", "tasks": [{"id": "a", "name": "a"}]}',
            "control",
        ),
        (b'{"name": "x", "group": "/project/p"}', "neither tasks nor setup errors"),
        (
            b'{"name": "x", "group": "/project/p", "colour": 1}',
            "unknown field `colour` - at `$` (known: annotations,",
        ),
        (b'{"name": 3, "group": "/project/p"}', "Expected `str`, got `int` - at `$.name`"),
        (b'{"group": "/project/p", "tasks": [{"id": "a", "name": "a"}]}', "'name' is required"),
        (
            b'{"name": "x", "group": "/project/p", "tasks": [{"id": "a", "name": "a"}, 5]}',
            "tasks[1]",
        ),
        (
            b'{"name": "x", "group": "/project/p", "tasks": [{"id": "a", "name": "a", "skip": 1}]}',
            "tasks[0]",
        ),
        (
            b'{"name": "x", "group": "/project/p", "tasks": [{"id": "a", "name": "a"}], "environment": {"A": 1}}',
            "Expected `str`, got `int` - at `$.environment[...]`",
        ),
        (b'{"name": "x", "group": "/project/p", "setup_errors": [3]}', "setup_errors[0]"),
    ],
)
async def test_a_request_that_cannot_form_a_run_is_400_naming_the_problem_and_spends_nothing(
    body: bytes, needle: str
) -> None:
    async with served() as (client, fakes):
        resp = await client.post(RUNS, data=body, headers={"Content-Type": "application/json"})
        assert needle in await error_of(resp, 400)
        assert fakes.owners.events == []
        assert await fakes.ids.next() == 1  # no id was spent


# -- recreation ----------------------------------------------------------------------------------


async def failed_run(client: Any, fakes: Fakes) -> str:
    run_id: str = (await create(client, new_run(task("a"), task("b", "a"), task("c"))))["run"]["id"]
    assert (
        await client.put(f"{RUNS}/{run_id}/actions", json={"action_type": "start"})
    ).status == 204
    set_task_status(fakes, run_id, "a", TaskStatus.SUCCESS)
    set_task_status(fakes, run_id, "c", TaskStatus.FAILED)
    set_task_status(fakes, run_id, "b", TaskStatus.SUCCESS)
    return run_id


async def test_recreate_a_failed_run_keeps_successful_tasks_and_replaces_environment() -> None:
    async with served() as (client, fakes):
        old = await failed_run(client, fakes)
        assert fakes.owners.states[old].run.phase == "finished"
        body = await create(client, {"run_id": old, "environment": {"E": "2"}})
        run, rc = body["run"], body["run_config"]
        assert run["id"] != old
        assert rc["recreated_from"] == old
        assert run["phase"] == "queued"
        ids = [t["id"] for t in rc["tasks"]]
        assert ids[:2] == ["a", "b"]
        assert ids[2] != "c"
        assert [t["status"] for t in run["tasks"]] == ["success", "success", "notstarted"]
        assert rc["environment"] == {"E": "2"}


async def test_recreate_refusals_are_400_with_the_reason_and_unknown_run_is_404() -> None:
    async with served() as (client, _fakes):
        queued = (await create(client))["run"]["id"]
        msg = await error_of(await client.post(RUNS, json={"run_id": queued}), 400)
        assert msg == "run cannot be restarted: run is queued, not finished"
        broken = (await create(client, {"group": GROUP, "setup_errors": ["x"]}))["run"]["id"]
        msg = await error_of(await client.post(RUNS, json={"run_id": broken}), 400)
        assert msg == "run cannot be restarted: run has setup errors"
        await error_of(await client.post(RUNS, json={"run_id": "0000000000000999"}), 404)
        await error_of(await client.post(RUNS, json={"run_id": "12"}), 400)
        await error_of(await client.post(RUNS, json={"run_id": queued, "name": "x"}), 400)


async def test_recreate_a_successful_run_needs_from_start() -> None:
    async with served() as (client, fakes):
        run_id = (await create(client, new_run(task("a"))))["run"]["id"]
        await client.put(f"{RUNS}/{run_id}/actions", json={"action_type": "start"})
        set_task_status(fakes, run_id, "a", TaskStatus.SUCCESS)
        msg = await error_of(await client.post(RUNS, json={"run_id": run_id}), 400)
        assert "succeeded" in msg
        body = await create(client, {"run_id": run_id, "from_start": True})
        assert body["run_config"]["tasks"][0]["id"] != "a"


# -- reads ---------------------------------------------------------------------------------------


async def test_get_unknown_run_is_404_and_malformed_id_400() -> None:
    async with served() as (client, _):
        assert "not found" in await error_of(await client.get(f"{RUNS}/0000000000000042"), 404)
        assert "invalid run id" in await error_of(await client.get(f"{RUNS}/42"), 400)


async def test_get_returns_the_source_once_it_caught_up() -> None:
    async with served() as (client, fakes):
        run_id = (await create(client))["run"]["id"]
        await client.put(f"{RUNS}/{run_id}/actions", json={"action_type": "start"})
        set_task_status(fakes, run_id, "a", TaskStatus.RUNNING)  # materializes, then moves on
        got = await json_of(await client.get(f"{RUNS}/{run_id}"), 200)
        assert got["run"]["tasks"][0]["status"] == "running"


async def test_list_runs_filters_pages_and_refuses_bad_queries() -> None:
    async with served() as (client, fakes):
        fakes.now = 1_780_000_000_000
        for i in range(5):
            await create(client, new_run(group=f"{GROUP}{i % 2}", name=f"build-{i}"))
            fakes.now += 1_500  # the index keeps seconds: 1.5 s apart shows as 1 or 2
        fakes.materialize()
        await client.put(f"{RUNS}/0000000000000005/actions", json={"action_type": "start"})
        fakes.materialize()
        page = await json_of(await client.get(RUNS, params={"group": f"{GROUP}0", "limit": "2"}), 200)  # fmt: skip
        assert [r["id"][-1] for r in page["runs"]] == ["5", "3"]
        assert page["next_cursor"]
        rest = await json_of(await client.get(RUNS, params={"group": f"{GROUP}0", "limit": "2", "cursor": page["next_cursor"]}), 200)  # fmt: skip
        assert [r["id"][-1] for r in rest["runs"]] == ["1"]
        assert rest["next_cursor"] is None
        running = await json_of(await client.get(RUNS, params={"phase": "running"}), 200)
        assert running["runs"] == [
            {
                "id": "0000000000000005",
                "group": f"{GROUP}0",
                "phase": "running",
                "result": "unknown",
                "name": "build-4",
                "counter": 0,  # no run numbers in these fakes (tests/unit/test_counters.py)
                "enqueue_time": 1_780_000_006_000,  # created at ...006.000
                "start_time": 1_780_000_007_000,  # started at ...007.500, to the second
                "end_time": None,
            }
        ]
        last = await json_of(await client.get(RUNS, params={"lastrun": "true", "order": "asc"}), 200)  # fmt: skip
        assert [r["id"][-1] for r in last["runs"]] == ["4", "5"]
        for params, needle in [
            ({"cursor": "!!"}, "cursor"),
            ({"cursor": ""}, "`cursor`"),
            ({"limit": "x"}, "limit must be between 1 and 100"),
            ({"limit": "-1"}, "limit must be between 1 and 100"),
            ({"limit": "0"}, "limit must be between 1 and 100"),
            ({"limit": "101"}, "limit must be between 1 and 100"),
            ({"phase": "done"}, "`phase[0]` (want one of: setuperror, queued,"),
            ({"result": "meh"}, "`result[0]` (want one of: unknown,"),
            ({"order": "up"}, "`order` (want one of: asc, desc)"),
            ({"lastrun": "maybe"}, "Expected `bool`, got `str` - at query parameter `lastrun`"),
            ({"group": "relative"}, "group 'relative' is not an absolute path"),
            # A prefix (events.group.validate_group_prefix): no empty or relative element.
            ({"group": "/project/../x"}, "empty or relative element"),
            ({"group": "/project/p/branch/.."}, "empty or relative element"),
            ({"group": "/project/p\x01"}, "control character"),
            ({"group": "//"}, "empty or relative element"),
            ({"colour": "x"}, "unknown query parameter 'colour'"),
            ({"cursor": page["next_cursor"], "order": "asc"}, "other sort order"),
        ]:
            assert needle in await error_of(await client.get(RUNS, params=params), 400), params


# -- run and task actions ------------------------------------------------------------------------


async def act(client: Any, run_id: str, action: str, **kw: Any) -> Any:
    return await client.put(f"{RUNS}/{run_id}/actions", json={"action_type": action}, **kw)


async def task_act(client: Any, run_id: str, task_id: str, body: dict[str, Any]) -> Any:
    return await client.put(f"{RUNS}/{run_id}/tasks/{task_id}/actions", json=body)


async def test_run_actions_are_204_and_refused_ones_400_with_the_reason() -> None:
    async with served() as (client, fakes):
        run_id = (await create(client))["run"]["id"]
        assert (await act(client, run_id, "start")).status == 204
        got = await json_of(await client.get(f"{RUNS}/{run_id}"), 200)
        assert got["run"]["phase"] == "running"  # read-your-writes for actions too
        assert "only a queued run starts" in await error_of(await act(client, run_id, "start"), 400)
        assert "only a queued run is cancelled" in await error_of(await act(client, run_id, "cancel"), 400)  # fmt: skip
        assert (await act(client, run_id, "stop")).status == 204
        assert "final phase" in await error_of(await act(client, run_id, "stop"), 400)
        other = (await create(client))["run"]["id"]
        assert (await act(client, other, "cancel")).status == 204
        assert "final phase" in await error_of(await act(client, other, "start"), 400)
        types = [e.type for e in fakes.owners.events]
        assert types.count(EventType.START_REQUESTED) == 1
        assert len(types) == 5
        assert len({e.id for e in fakes.owners.events}) == 5


async def test_actions_on_unknown_runs_404_and_bad_bodies_400() -> None:
    async with served() as (client, _):
        await error_of(await act(client, "0000000000000077", "start"), 404)
        run_id = (await create(client))["run"]["id"]
        msg = await error_of(await act(client, run_id, "launch"), 400)
        assert "Invalid enum value 'launch' - at `$.action_type` (want one of: start," in msg
        resp = await client.put(f"{RUNS}/{run_id}/actions", json={"action_type": "start", "x": 1})
        assert "unknown field `x` - at `$` (known: action_type)" in await error_of(resp, 400)


async def test_if_match_gives_409_when_a_concurrent_change_won() -> None:
    async with served() as (client, _):
        created = await client.post(RUNS, json=new_run())
        run_id, tag = (await created.json())["run"]["id"], created.headers["ETag"]
        assert (await act(client, run_id, "start", headers={"If-Match": tag})).status == 204
        msg = await error_of(await act(client, run_id, "stop", headers={"If-Match": tag}), 409)
        assert "changed meanwhile" in msg
        now = (await client.get(f"{RUNS}/{run_id}")).headers["ETag"]
        assert now != tag
        assert (await act(client, run_id, "stop", headers={"If-Match": now})).status == 204
        await error_of(await act(client, run_id, "stop", headers={"If-Match": "soon"}), 400)


async def test_concurrent_actions_on_one_run_are_serialized() -> None:
    async with served() as (client, _):
        run_id = (await create(client))["run"]["id"]
        statuses = sorted([r.status for r in await asyncio.gather(*(act(client, run_id, "start") for _ in range(5)))])  # fmt: skip
        assert statuses == [204, 400, 400, 400, 400]


async def test_task_actions_approve_and_annotations() -> None:
    async with served() as (client, fakes):
        body = new_run(task("a", needs_approval=True), task("b"))
        run_id = (await create(client, body))["run"]["id"]
        msg = await error_of(await task_act(client, run_id, "a", {"action_type": "approve"}), 400)
        assert "not waiting for approval" in msg
        await act(client, run_id, "start")
        assert (await task_act(client, run_id, "a", {"action_type": "approve"})).status == 204
        msg = await error_of(await task_act(client, run_id, "a", {"action_type": "approve"}), 400)
        assert "already approved" in msg
        resp = await task_act(client, run_id, "b", {"action_type": "setannotations", "annotations": {"approvers": "ann"}})  # fmt: skip
        assert resp.status == 204
        tasks = (await json_of(await client.get(f"{RUNS}/{run_id}"), 200))["run"]["tasks"]
        assert tasks[0]["approved"]
        assert tasks[1]["annotations"] == {"approvers": "ann"}
        assert "no task 'zz'" in await error_of(await task_act(client, run_id, "zz", {"action_type": "approve"}), 404)  # fmt: skip
        await error_of(await task_act(client, "0000000000000077", "a", {"action_type": "approve"}), 404)  # fmt: skip
        await error_of(await task_act(client, run_id, "b", {"action_type": "setannotations"}), 400)
        await error_of(await task_act(client, run_id, "b", {"action_type": "approve", "annotations": {}}), 400)  # fmt: skip
        assert [e.type for e in fakes.owners.events][-2:] == [EventType.TASK_APPROVED, EventType.TASK_ANNOTATIONS_SET]  # fmt: skip


# -- conventions ---------------------------------------------------------------------------------


async def test_unknown_routes_and_methods_are_json_404_and_405() -> None:
    async with served() as (client, _):
        assert await error_of(await client.get("/api/v1/nothing"), 404) == "not found"
        resp = await client.delete(RUNS)
        assert await error_of(resp, 405) == "method not allowed"
        assert "POST" in resp.headers["Allow"]


async def test_bodies_above_the_limit_are_413_announced_or_streamed() -> None:
    async with served(max_body_bytes=1000) as (client, fakes):
        big = new_run(annotations={"k": "x" * 2000})
        assert "above 1000" in await error_of(await client.post(RUNS, json=big), 413)

        async def chunks() -> Any:  # no Content-Length: aiohttp stops reading at the limit
            for _ in range(4):
                yield b" " * 500

        resp = await client.post(RUNS, data=chunks(), headers={"Content-Type": "application/json"})
        await error_of(resp, 413)
        assert fakes.owners.events == []


async def test_every_request_but_the_probes_needs_the_token_when_one_is_configured() -> None:
    async with served(api_token="s3cret") as (client, fakes):
        assert "Bearer" in await error_of(await client.post(RUNS, json=new_run()), 401)
        wrong = {"Authorization": "Bearer nope"}
        await error_of(await client.post(RUNS, json=new_run(), headers=wrong), 401)
        await error_of(await client.put(f"{RUNS}/0000000000000001/actions", json={"action_type": "start"}), 401)  # fmt: skip
        good = {"Authorization": "Bearer s3cret"}
        resp = await client.post(RUNS, json=new_run(), headers=good)
        run_id = (await json_of(resp, 201))["run"]["id"]
        # Reads too: a run's environment may hold secrets.
        await error_of(await client.get(f"{RUNS}/{run_id}"), 401)
        await error_of(await client.get(RUNS), 401)
        await error_of(await client.get(f"{RUNS}/events"), 401)
        assert (await client.get(f"{RUNS}/{run_id}", headers=good)).status == 200
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/metrics")).status == 200
        assert len(fakes.owners.events) == 1


async def test_an_internal_failure_is_500_with_the_generic_message_and_the_cause_only_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with served() as (client, fakes):
        fakes.owners.fail_with = RuntimeError("etcd password hunter2 leaked")
        with caplog.at_level(logging.ERROR, logger="runstream.api"):
            resp = await client.get(f"{RUNS}/0000000000000001")
            text = await resp.text()
        assert await error_of(resp, 500) == INTERNAL_MESSAGE
        assert "hunter2" not in text
        assert "RuntimeError" not in text
        assert "hunter2" in caplog.text
        fakes.owners.fail_with = None
        fakes.owners.append_fails_with = ConnectionError("kafka down at 10.0.0.7")
        resp = await client.post(RUNS, json=new_run())
        assert await error_of(resp, 500) == INTERNAL_MESSAGE
        # The failed write is not remembered: nobody reads a run the log never got.
        await error_of(await client.get(f"{RUNS}/0000000000000001"), 404)


async def test_healthz_follows_readiness_and_metrics_are_prometheus_text() -> None:
    async with served() as (client, fakes):
        assert await json_of(await client.get("/healthz"), 200) == {
            "status": "ok",
            "ready": True,
            "not_ready": [],
        }
        fakes.ready_flag = False
        resp = await client.get("/healthz")
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        body = await resp.json()
        assert body["message"] == "not ready: the fake says so"
        assert (body["ready"], body["not_ready"]) == (False, ["the fake says so"])
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        assert 'runstream_api_requests_total{method="GET",route="/healthz",status="503"}' in await resp.text()  # fmt: skip


async def test_openapi_document_is_served() -> None:
    async with served() as (client, _):
        doc = await json_of(await client.get("/api/v1/openapi.json"), 200)
        assert doc["openapi"].startswith("3.1")
        assert "/api/v1/runs" in doc["paths"]


async def test_a_retried_action_with_the_same_idempotency_key_is_applied_once() -> None:
    async with served() as (client, fakes):
        run_id = (await create(client))["run"]["id"]
        key = {"Idempotency-Key": "deploy-42/start"}
        assert (await act(client, run_id, "start", headers=key)).status == 204
        assert (await act(client, run_id, "start", headers=key)).status == 204  # the retry
        starts = [e for e in fakes.owners.events if e.type is EventType.START_REQUESTED]
        assert len(starts) == 1
        # Another key is another request, refused by the state as usual.
        other = {"Idempotency-Key": "deploy-43/start"}
        assert "only a queued run starts" in await error_of(await act(client, run_id, "start", headers=other), 400)  # fmt: skip
        # The same key on another run or for another action is a different event.
        second = (await create(client))["run"]["id"]
        assert (await act(client, second, "start", headers=key)).status == 204
        ids = [e.id for e in fakes.owners.events if e.type is EventType.START_REQUESTED]
        assert len(ids) == len(set(ids)) == 2
        assert "Idempotency-Key" in await error_of(
            await act(client, run_id, "stop", headers={"Idempotency-Key": "é"}), 400
        )
