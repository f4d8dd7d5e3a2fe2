"""Tokens and scopes (issue 21): the route → scope table, 401/403, environment values masked in
every answer but to the execute scope, X-Runstream-* headers honoured only when signed by the
cluster, the caller's scopes carried by the relay, and the loopback rule."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agents.access import api_tokens, check_exposure, cluster_secret, is_loopback
from agents.config import Settings
from api import create_api
from api.cluster import RELAY_HEADER, RUN_ID_HEADER, ClusterKey
from api.scopes import (
    MASK,
    PREFIX_SCOPES,
    ROUTE_SCOPES,
    Scope,
    parse_tokens_env,
    parse_tokens_file,
    required_scope,
)
from events import TaskStatus
from tests.fakes_api import Fakes
from tests.fakes_kv import MemoryKv
from tests.unit.test_api_relay import pair
from tests.unit.test_api_sse import read_frames
from tests.unit.test_api_support import GROUP, served, set_task_status, task

RUNS = "/api/v1/runs"
SECRET = "hunter2-the-secret-value"
TASK_SECRET = "task-secret-value-42"
TOKENS = {
    "t-read": {Scope.READ},
    "t-write": {Scope.WRITE},
    "t-rw": {Scope.READ, Scope.WRITE},
    "t-exec": {Scope.READ, Scope.EXECUTE},
    "t-admin": {Scope.ADMIN},
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def secret_run() -> dict[str, Any]:
    return {
        "name": "build",
        "group": GROUP,
        "environment": {"DB_PASSWORD": SECRET},
        "static_environment": {"COMMIT": "abc"},
        "tasks": [task("a", environment={"TASK_KEY": TASK_SECRET}), task("b", "a")],
    }


def assert_masked(body: dict[str, Any]) -> None:
    rc = body["run_config"]
    assert rc["environment"] == {"DB_PASSWORD": MASK}
    assert rc["tasks"][0]["environment"] == {"TASK_KEY": MASK}
    assert rc["static_environment"] == {"COMMIT": "abc"}  # not secret: the git event's facts


# -- the table -----------------------------------------------------------------------------------


def test_every_route_has_its_scope_and_the_table_names_only_routes() -> None:
    app = create_api(Fakes().deps(), asyncapi={})
    routed = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path in ("/healthz", "/metrics") or path == "/ui" or path.startswith("/ui/"):
            continue
        routed.add((route.method, path))
        listed = (route.method, path) in ROUTE_SCOPES or any(
            path.startswith(prefix) for prefix, _ in PREFIX_SCOPES
        )
        assert listed, f"{route.method} {path} has no scope in api.scopes.ROUTE_SCOPES"
    assert set(ROUTE_SCOPES) <= routed
    # The kinds of caller, in the table.
    assert required_scope("GET", "/api/v1/runs/{run_id}") is Scope.READ
    assert required_scope("POST", "/api/v1/runs") is Scope.WRITE
    assert required_scope("PUT", "/api/v1/runs/{run_id}/tasks/{task_id}/actions") is Scope.WRITE
    assert required_scope("POST", "/api/v1/runs/{run_id}/tasks/{task_id}/claim") is Scope.EXECUTE
    assert required_scope("PUT", "/api/v1/runs/{run_id}/tasks/{task_id}/status") is Scope.EXECUTE
    assert required_scope("POST", "/api/v1/executors/{executor_id}/heartbeat") is Scope.EXECUTE
    # Dead letters (another module's routes) and any route someone forgets: admin.
    assert required_scope("GET", "/api/v1/dlq") is Scope.ADMIN
    assert required_scope("POST", "/api/v1/dlq/redrive") is Scope.ADMIN
    assert required_scope("DELETE", "/api/v1/something-new") is Scope.ADMIN


def test_the_openapi_document_names_each_operations_scope_and_its_401_403() -> None:
    from api import openapi_document

    doc = openapi_document()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if not path.startswith("/api/v1/"):
                assert "403" not in op.get("responses", {}), path
                continue
            scope = required_scope(method.upper(), path).value
            assert op["security"] == [{"bearer": [scope]}, {}], (method, path)
            assert {"401", "403"} <= set(op["responses"]), (method, path)
            assert scope in op["responses"]["403"]["description"]


def test_tokens_from_the_environment_and_from_a_file(tmp_path: Path) -> None:
    assert parse_tokens_env("a:read+write; b:execute ;") == {
        "a": frozenset({Scope.READ, Scope.WRITE}),
        "b": frozenset({Scope.EXECUTE}),
    }
    text = "# the console\nc1 read\n\nx1 read, execute\nc1 write\n"
    assert parse_tokens_file(text) == {
        "c1": frozenset({Scope.READ, Scope.WRITE}),
        "x1": frozenset({Scope.READ, Scope.EXECUTE}),
    }
    with pytest.raises(ValueError, match="unknown scope 'god'"):
        parse_tokens_env("a:god")
    with pytest.raises(ValueError, match="line 1"):
        parse_tokens_file("lonely-token\n")
    f = tmp_path / "tokens"
    f.write_text("filetok admin\nboth read\n")
    s = Settings(api_tokens="envtok:read;both:write", api_tokens_file=str(f))
    assert api_tokens(s) == {
        "envtok": frozenset({Scope.READ}),
        "filetok": frozenset({Scope.ADMIN}),
        "both": frozenset({Scope.READ, Scope.WRITE}),
    }
    with pytest.raises(ValueError, match="--api-tokens-file"):
        api_tokens(Settings(api_tokens_file=str(tmp_path / "absent")))
    assert Settings(api_tokens="a:read", cluster_secret="k").public()["api_tokens"] == "***"
    assert Settings(cluster_secret="k").public()["cluster_secret"] == "***"


# -- 401 / 403 -----------------------------------------------------------------------------------


async def test_401_without_a_valid_token_403_naming_the_scope_without_the_scope() -> None:
    async with served(tokens=TOKENS) as (client, fakes):
        assert (await client.get(RUNS)).status == 401
        assert (await client.get(RUNS, headers=bearer("nope"))).status == 401
        assert (await client.get(RUNS, headers={"Authorization": "Basic t-read"})).status == 401
        assert (await client.get("/healthz")).status == 200  # probes stay open
        assert (await client.get("/metrics")).status == 200
        assert (await client.get("/ui/")).status == 200  # the console's files hold no data
        # A read token reads, and may do nothing else.
        assert (await client.get(RUNS, headers=bearer("t-read"))).status == 200
        resp = await client.post(RUNS, json=secret_run(), headers=bearer("t-read"))
        body = await resp.json()
        assert resp.status == 403
        assert "'write' scope" in body["message"]
        assert body["code"] == "missing_scope"
        assert fakes.owners.events == []
        # A write token acts on runs but does not read them.
        resp = await client.post(RUNS, json=secret_run(), headers=bearer("t-write"))
        assert resp.status == 201
        run_id = (await resp.json())["run"]["id"]
        resp = await client.get(f"{RUNS}/{run_id}", headers=bearer("t-write"))
        assert resp.status == 403
        assert "'read' scope" in (await resp.json())["message"]
        start = {"action_type": "start"}
        assert (await client.put(f"{RUNS}/{run_id}/actions", json=start, headers=bearer("t-write"))).status == 204  # fmt: skip
        # What an executor does needs execute.
        claim = {"executor_id": "runner-1"}
        path = f"{RUNS}/{run_id}/tasks/a/claim"
        resp = await client.post(path, json=claim, headers=bearer("t-rw"))
        assert resp.status == 403
        assert "'execute' scope" in (await resp.json())["message"]
        assert (await client.post(path, json=claim, headers=bearer("t-exec"))).status == 200
        hb = "/api/v1/executors/runner-1/heartbeat"
        assert (await client.post(hb, headers=bearer("t-rw"))).status == 403
        assert (await client.post(hb, headers=bearer("t-exec"))).status == 204
        status = {"status": "running", "executor_id": "runner-1"}
        spath = f"{RUNS}/{run_id}/tasks/a/status"
        assert (await client.put(spath, json=status, headers=bearer("t-write"))).status == 403
        assert (await client.put(spath, json=status, headers=bearer("t-exec"))).status == 204
        # Admin is operations only: it does not read runs either.
        assert (await client.get(RUNS, headers=bearer("t-admin"))).status == 403
        # An unknown path: a valid token, then 404.
        assert (await client.get("/api/v1/nothing")).status == 401
        assert (await client.get("/api/v1/nothing", headers=bearer("t-read"))).status == 404


async def test_the_single_api_token_still_holds_every_scope() -> None:
    async with served(api_token="legacy") as (client, _):
        resp = await client.post(RUNS, json=secret_run(), headers=bearer("legacy"))
        assert resp.status == 201
        run_id = (await resp.json())["run"]["id"]
        body = await (await client.get(f"{RUNS}/{run_id}", headers=bearer("legacy"))).json()
        assert body["run_config"]["environment"] == {"DB_PASSWORD": SECRET}  # it holds execute


# -- masking -------------------------------------------------------------------------------------


async def test_environment_values_are_masked_in_every_answer_but_to_execute() -> None:
    async with served(tokens=TOKENS) as (client, fakes):
        resp = await client.post(RUNS, json=secret_run(), headers=bearer("t-rw"))
        created = await resp.json()
        assert resp.status == 201
        assert_masked(created)
        run_id = created["run"]["id"]
        fakes.materialize()
        # GET: masked for read, in clear for execute.
        got = await (await client.get(f"{RUNS}/{run_id}", headers=bearer("t-read"))).json()
        assert_masked(got)
        clear = await (await client.get(f"{RUNS}/{run_id}", headers=bearer("t-exec"))).json()
        assert clear["run_config"]["environment"] == {"DB_PASSWORD": SECRET}
        assert clear["run_config"]["tasks"][0]["environment"] == {"TASK_KEY": TASK_SECRET}
        # The log keeps the values (the executor's source), the answers do not.
        assert fakes.owners.states[run_id].config.environment == {"DB_PASSWORD": SECRET}
        # Listing, history, an error answer: no value anywhere.
        for path in (RUNS, f"{RUNS}?group={GROUP}", f"{RUNS}/{run_id}/history"):
            text = await (await client.get(path, headers=bearer("t-read"))).text()
            assert SECRET not in text, path
            assert TASK_SECRET not in text, path
        bad = {**secret_run(), "tasks": [task("a", environment={"K": TASK_SECRET}, skip="x")]}
        resp = await client.post(RUNS, json=bad, headers=bearer("t-rw"))
        assert resp.status == 400
        assert TASK_SECRET not in await resp.text()
        # A recreation's 201 (environment replaced) is masked too.
        await client.put(f"{RUNS}/{run_id}/actions", json={"action_type": "start"}, headers=bearer("t-rw"))  # fmt: skip
        set_task_status(fakes, run_id, "a", TaskStatus.SUCCESS)
        set_task_status(fakes, run_id, "b", TaskStatus.FAILED)
        again = {"run_id": run_id, "environment": {"DB_PASSWORD": SECRET + "-2"}}
        resp = await client.post(RUNS, json=again, headers=bearer("t-rw"))
        body = await resp.json()
        assert resp.status == 201, body
        assert body["run_config"]["environment"] == {"DB_PASSWORD": MASK}
        assert SECRET not in await resp.text()


async def test_the_phase_stream_carries_no_environment_value() -> None:
    async with served(tokens=TOKENS) as (client, fakes):
        stream = await client.get(f"{RUNS}/events", params={"after": "-1"}, headers=bearer("t-read"))  # fmt: skip
        # "-1" is malformed for the fake feed: 400, and the message does not echo a secret.
        assert stream.status == 400
        stream = await client.get(f"{RUNS}/events", headers=bearer("t-read"))
        assert stream.status == 200
        resp = await client.post(RUNS, json=secret_run(), headers=bearer("t-rw"))
        assert resp.status == 201
        fakes.materialize()
        frames, _ = await read_frames(stream, 1)
        assert '"phase":"queued"' in frames[0][1]
        assert all(SECRET not in d and TASK_SECRET not in d for _, d in frames)
        stream.close()


async def test_with_no_token_configured_every_caller_holds_every_scope() -> None:
    async with served() as (client, _):
        resp = await client.post(RUNS, json=secret_run())
        assert (await resp.json())["run_config"]["environment"] == {"DB_PASSWORD": SECRET}


# -- the hop -------------------------------------------------------------------------------------


async def test_relay_only_headers_from_outside_are_refused() -> None:
    async with served(tokens=TOKENS, cluster_secret="the-cluster") as (client, fakes):
        chosen = {RUN_ID_HEADER: "0000000000000777", **bearer("t-rw")}
        resp = await client.post(RUNS, json=secret_run(), headers=chosen)
        assert resp.status == 400
        assert "X-Runstream-*" in (await resp.json())["message"]
        # Pretending to be a relay to read a run's full state, or to claim scopes: the same.
        forged = {RELAY_HEADER: "http://evil", "X-Runstream-Scopes": "execute", **bearer("t-read")}
        assert (await client.get(RUNS, headers=forged)).status == 400
        # Signed with another secret (another deployment, an attacker's guess): refused.
        other = ClusterKey("not-the-cluster").sign("POST", RUNS, {RUN_ID_HEADER: "0000000000000777", "Content-Type": "application/json"}, b"{}")  # fmt: skip
        assert (await client.post(RUNS, data=b"{}", headers=other)).status == 400
        # The right secret, but the body changed after signing: refused.
        right = ClusterKey("the-cluster")
        signed = right.sign("POST", RUNS, {RUN_ID_HEADER: "0000000000000777", "Content-Type": "application/json"}, b"{}", scopes=[Scope.WRITE])  # fmt: skip
        assert (await client.post(RUNS, data=b'{"x": 1}', headers=signed)).status == 400
        # Too old a signature: refused.
        old = right.sign("GET", RUNS, {RELAY_HEADER: "w"}, scopes=[Scope.READ], now_ms=1)
        assert (await client.get(RUNS, headers=old)).status == 400
        assert fakes.owners.events == []
        # A worker's own hop, correctly signed: honoured (the run id it allocated is kept).
        msg = b'{"name": "n", "group": "' + GROUP.encode() + b'", "tasks": [{"id": "a", "name": "a"}]}'  # fmt: skip
        signed = right.sign("POST", RUNS, {RUN_ID_HEADER: "0000000000000777", RELAY_HEADER: "w", "Content-Type": "application/json"}, msg, scopes=[Scope.WRITE])  # fmt: skip
        resp = await client.post(RUNS, data=msg, headers=signed)
        assert resp.status == 201, await resp.text()
        assert (await resp.json())["run"]["id"] == "0000000000000777"


async def test_the_relay_signs_the_hop_and_carries_the_callers_scopes() -> None:
    """Two workers (A owns odd ids, B even): a request through the non-owner is answered by the
    owner with the masking of the caller's scopes; the token itself does not travel."""
    async with pair(tokens=TOKENS) as p, aiohttp.ClientSession() as http:
        ids = []
        for _ in range(2):  # 1 at A, 2 at B, both created through A
            async with http.post(p.url_a + RUNS, json=secret_run(), headers=bearer("t-rw")) as r:
                assert r.status == 201
                assert_masked(await r.json())
                ids.append((await r.json())["run"]["id"])
        at_b = ids[1]
        assert at_b in p.b.owners.states
        async with http.get(f"{p.url_a}{RUNS}/{at_b}", headers=bearer("t-read")) as r:
            assert r.status == 200
            assert_masked(await r.json())
        async with http.get(f"{p.url_a}{RUNS}/{at_b}", headers=bearer("t-exec")) as r:
            assert (await r.json())["run_config"]["environment"] == {"DB_PASSWORD": SECRET}
        async with http.get(f"{p.url_a}{RUNS}/{at_b}", headers=bearer("t-write")) as r:
            assert r.status == 403  # checked at the entry worker, never relayed


# -- the loopback rule and the cluster secret ----------------------------------------------------


def test_no_token_means_loopback_only(caplog: pytest.LogCaptureFixture) -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("")
    assert not is_loopback("10.0.0.7")
    with pytest.raises(ValueError, match="RUNSTREAM_API_TOKEN") as refused:
        check_exposure(Settings(web_host="0.0.0.0"), {})
    assert "\n" not in str(refused.value)
    check_exposure(Settings(web_host="0.0.0.0", api_token="t"), {})
    check_exposure(Settings(web_host="0.0.0.0"), {"t": frozenset({Scope.READ})})
    with caplog.at_level(logging.WARNING, logger="runstream.web"):
        check_exposure(Settings(web_host="127.0.0.1"), {})
    assert "without authentication, on loopback only" in caplog.text


async def test_the_cluster_secret_is_the_setting_else_one_generated_once_in_etcd() -> None:
    kv = MemoryKv()
    first = await cluster_secret(Settings(), kv)
    second = await cluster_secret(Settings(), kv)
    assert first == second
    assert len(first) == 64
    assert await cluster_secret(Settings(cluster_secret="given"), kv) == b"given"
