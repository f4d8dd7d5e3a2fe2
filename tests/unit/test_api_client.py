"""The client against the real app on a loopback port: results, error parsing, watch with
resume; and the ``runstream runs`` commands."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from agents.cli.runs import add_runs_commands
from api import (
    INTERNAL_MESSAGE,
    ApiError,
    BadRequest,
    Conflict,
    Gone,
    NotFound,
    PayloadTooLarge,
    ServerError,
    Unauthorized,
    Unavailable,
    Unreachable,
)
from api.client import AsyncClient, Client
from api.wire import RETRIES, retry_delay
from events import Phase, PhaseChanged, Result, make_event
from tests.unit.test_api_support import GROUP, new_run, served, task


def url_of(client: Any) -> str:
    return str(client.server.make_url("")).rstrip("/")


class SyncInAThread:
    """``Client`` (the blocking facade) driven from a test's event loop: every call in a worker
    thread, so the loop keeps serving the requests."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url, self.options = url, options

    async def __aenter__(self) -> SyncInAThread:
        self.client = await asyncio.to_thread(Client, self.url, **self.options)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.client.close)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(method, *args, **kwargs)

        return call


def open_client(kind: str, url: str, **options: Any) -> Any:
    return AsyncClient(url, **options) if kind == "async" else SyncInAThread(url, **options)


both = pytest.mark.parametrize("kind", ["async", "sync"])


@both
async def test_client_round_trip_and_each_error_class_with_the_server_message(kind: str) -> None:
    async with served(api_token="tok", max_body_bytes=4096) as (tc, fakes):
        async with open_client(kind, url_of(tc), token="tok") as c:
            body = await c.create_run(name="b", group=GROUP, tasks=[task("a")])
            run_id = body.run.id
            assert (await c.get_run(run_id)).run.phase == "queued"
            await c.start(run_id, expected_seq=body.seq)
            with pytest.raises(Conflict) as conflict:
                await c.stop(run_id, expected_seq=body.seq)
            assert conflict.value.status == 409
            assert "changed meanwhile" in conflict.value.message
            with pytest.raises(BadRequest, match="only a queued run starts") as bad:
                await c.start(run_id)
            assert bad.value.status == 400
            with pytest.raises(NotFound, match="not found"):
                await c.get_run("0000000000000999")
            with pytest.raises(PayloadTooLarge):
                await c.create_run(group=GROUP, name="x", tasks=[task("a")], annotations={"k": "v" * 5000})  # fmt: skip
            fakes.materialize()
            page = await c.list_runs(groups=[GROUP], phases=["running"])
            assert [r.id for r in page.runs] == [run_id]
            fakes.owners.fail_with = RuntimeError("boom")
            with pytest.raises(ServerError) as err:
                await c.get_run(run_id)
            assert (err.value.status, err.value.message) == (500, INTERNAL_MESSAGE)
        async with open_client(kind, url_of(tc)) as anonymous:
            with pytest.raises(Unauthorized):
                await anonymous.cancel(run_id)


async def test_sync_client_errors_carry_status_and_message() -> None:
    async with served() as (tc, _):

        def calls() -> tuple[str, ApiError]:
            with Client(url_of(tc)) as c:
                run_id = c.create_run(group=GROUP, setup_errors=["broken"]).run.id
                try:
                    c.recreate_run(run_id)
                except ApiError as exc:
                    return run_id, exc
            raise AssertionError("recreating a setuperror run must fail")

        _, exc = await asyncio.to_thread(calls)
        assert isinstance(exc, BadRequest)
        assert exc.message == "run cannot be restarted: run has setup errors"


@both
async def test_a_body_that_is_not_json_gives_the_status_and_the_start_of_the_body(
    kind: str,
) -> None:
    async def html(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>bad gateway " + "x" * 1000, content_type="text/html")  # fmt: skip

    async def plain404(request: web.Request) -> web.Response:
        return web.Response(status=404, text="nope")

    app = web.Application()
    app.router.add_get("/api/v1/runs/{run_id}", html)
    app.router.add_post("/api/v1/runs", plain404)
    async with (
        TestServer(app) as server,
        open_client(kind, str(server.make_url("")).rstrip("/")) as c,
    ):
        with pytest.raises(ServerError) as err:
            await c.get_run("0000000000000001")
        assert err.value.status == 502
        assert "status 502" in err.value.message
        assert "<html>bad gateway" in err.value.message
        assert len(err.value.message) < 300
        with pytest.raises(NotFound, match="nope"):
            await c.create_run(group=GROUP, name="x")


@both
async def test_no_answer_at_all_is_unreachable(kind: str) -> None:
    async with open_client(kind, "http://127.0.0.1:9", timeout=2) as c:
        with pytest.raises(Unreachable) as err:
            await c.get_run("0000000000000001")
    assert err.value.retriable


def phase(n: int) -> Any:
    data = PhaseChanged(group=GROUP, phase=Phase.RUNNING, result=Result.UNKNOWN, seq=2)
    return make_event(data, id=f"{n:016d}.phase.2", run_id=f"{n:016d}", at=n)


async def test_watch_resumes_across_dropped_connections_without_loss_or_repetition() -> None:
    async with served() as (tc, fakes):
        fakes.feed.end_after = 2  # the server drops every stream after two events
        for n in range(1, 8):
            fakes.feed.publish(phase(n))
        async with AsyncClient(url_of(tc)) as c:
            got = []
            async for item in c.watch("0", retry_delay=0):
                got.append(item)
                if len(got) == 6:
                    break
        assert [i.cursor for i in got] == ["1", "2", "3", "4", "5", "6"]
        assert [i.event.run_id[-1] for i in got] == ["2", "3", "4", "5", "6", "7"]
        fakes.feed.truncate(5)
        async with AsyncClient(url_of(tc)) as c:
            with pytest.raises(Gone):
                async for _ in c.watch("1"):
                    pass


async def test_sync_watch_resumes_too() -> None:
    async with served() as (tc, fakes):
        fakes.feed.end_after = 1
        for n in range(1, 5):
            fakes.feed.publish(phase(n))

        def follow() -> list[str]:
            out = []
            with Client(url_of(tc)) as c:
                for item in c.watch("0", retry_delay=0):
                    out.append(item.cursor)
                    if len(out) == 3:
                        return out
            return out

        assert await asyncio.to_thread(follow) == ["1", "2", "3"]
        fakes.feed.truncate(3)

        def expired() -> None:
            with Client(url_of(tc)) as c:
                for _ in c.watch("1"):
                    pass

        with pytest.raises(Gone):
            await asyncio.to_thread(expired)


def test_retry_delay_backs_off_within_bounds_and_honours_retry_after() -> None:
    assert [retry_delay(a, None) for a in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert retry_delay(40, None) == 2.0
    assert retry_delay(0, "3") == 3.0
    assert retry_delay(0, "60") == 4.0  # a server's wish is capped
    assert retry_delay(3, "soon") == 0.8


@both
async def test_503_is_retried_with_the_same_idempotency_key_then_given_up(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("api.client.retry_delay", lambda attempt, after: 0.0)  # count, not wait
    seen: list[tuple[str, str | None]] = []

    async def busy(request: web.Request) -> web.Response:
        seen.append((request.method, request.headers.get("Idempotency-Key")))
        if len(seen) % 3 and request.match_info["run_id"] != "0000000000000009":
            return web.json_response({"message": "no owner"}, status=503, headers={"Retry-After": "0"})  # fmt: skip
        if request.match_info["run_id"] == "0000000000000009":
            return web.json_response({"message": "rebalance, for good"}, status=503)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_put("/api/v1/runs/{run_id}/actions", busy)
    app.router.add_get("/api/v1/runs/{run_id}", busy)
    async with TestServer(app) as server, open_client(kind, str(server.make_url(""))) as c:
        await c.start("0000000000000001")  # two 503s, then 204
        assert [m for m, _ in seen] == ["PUT"] * 3
        keys = {k for _, k in seen}
        assert len(keys) == 1
        assert None not in keys  # an action carries a key, the same one on every retry
        seen.clear()
        with pytest.raises(Unavailable, match="for good"):
            await c.get_run("0000000000000009")
        assert len(seen) == RETRIES + 1  # bounded


# -- CLI -----------------------------------------------------------------------------------------


def cli(url: str, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="runstream")
    add_runs_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["runs", *argv, "--url", url])
    out = io.StringIO()
    code = args.func(args, out)
    return code, out.getvalue()


async def test_cli_create_get_list_start_recreate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    spec = tmp_path / "run.json"
    spec.write_text(json.dumps(new_run(task("a"), task("b", "a"))))
    async with served() as (tc, fakes):
        url = url_of(tc)
        code, out = await asyncio.to_thread(cli, url, "create", "--file", str(spec), "--env", "A=1", "--json")  # fmt: skip
        assert code == 0
        created = json.loads(out)
        run_id = created["run"]["id"]
        assert created["run_config"]["environment"] == {"A": "1"}
        code, out = await asyncio.to_thread(cli, url, "get", run_id)
        assert code == 0
        assert "phase queued" in out
        assert "notstarted" in out
        assert (await asyncio.to_thread(cli, url, "start", run_id))[0] == 0
        fakes.materialize()
        code, out = await asyncio.to_thread(cli, url, "list", "--group", GROUP)
        head = ["ID", "#", "NAME", "PHASE", "RESULT", "GROUP", "ENQUEUED", "STARTED", "ENDED"]
        assert out.splitlines()[0].split() == head
        row = out.splitlines()[1]
        assert row.startswith(run_id)
        assert "  build  running  unknown  " in row
        assert row.count(":") == 4  # enqueue and start times, HH:MM:SS; no end yet
        code, _ = await asyncio.to_thread(cli, url, "recreate", run_id)
        assert code == 1
        assert "run cannot be restarted: run is running, not finished" in capsys.readouterr().err
        code, _ = await asyncio.to_thread(cli, url, "cancel", "0000000000000099")
        assert code == 1
        assert "error (404)" in capsys.readouterr().err


def test_every_runs_command_has_help() -> None:
    parser = argparse.ArgumentParser(prog="runstream")
    add_runs_commands(parser.add_subparsers(dest="command"))
    for name in ("create", "get", "list", "watch", "start", "cancel", "stop", "recreate"):
        with pytest.raises(SystemExit) as done:
            parser.parse_args(["runs", name, "--help"])
        assert done.value.code == 0


@both
async def test_client_retry_with_an_idempotency_key_is_applied_once(kind: str) -> None:
    async with served() as (tc, fakes), open_client(kind, url_of(tc)) as c:
        run_id = (await c.create_run(name="b", group=GROUP, tasks=[task("a")])).run.id
        await c.start(run_id, idempotency_key="attempt-1")
        await c.start(run_id, idempotency_key="attempt-1")  # a retry after a lost answer
        starts = [e for e in fakes.owners.events if e.type.value == "run.start_requested"]
        assert len(starts) == 1
        with pytest.raises(BadRequest, match="only a queued run starts"):
            await c.start(run_id, idempotency_key="attempt-2")


async def test_a_creation_with_the_same_idempotency_key_is_one_run() -> None:
    """The client's ``idempotency_key``: sent twice, the same run (and a key the caller did not
    give is made per call: two calls without one are two runs)."""
    from tests.fakes_api import Fakes
    from tests.unit.test_api_relay import free_port, worker
    from tests.unit.test_api_support import new_run

    fakes = Fakes()
    async with worker(fakes, free_port()) as url, AsyncClient(url) as c:
        first = await c.create_run(**new_run(), idempotency_key="hook-1")
        again = await c.create_run(**new_run(), idempotency_key="hook-1")
        other = await c.create_run(**new_run())
    assert first.run.id == again.run.id
    assert other.run.id != first.run.id
    assert set(fakes.creation_keys.records) >= {"hook-1"}


def test_a_403_is_a_forbidden_error_with_the_servers_message() -> None:
    from api import Forbidden
    from api.wire import error_from_response

    err = error_from_response(403, b'{"message": "POST /api/v1/runs needs the \'write\' scope"}')
    assert isinstance(err, Forbidden)
    assert (err.status, err.message) == (403, "POST /api/v1/runs needs the 'write' scope")
    assert not err.retriable
