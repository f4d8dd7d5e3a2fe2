"""Two API processes in one test: any worker relays a request about a run to its owner and passes
the answer back unchanged; malformed HTTP gets JSON; the client retries 503."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from api import JsonRunner, Remote, Unsettled, create_api
from api.client import AsyncClient
from api.errors import BadRequest, Unavailable
from tests.fakes_api import FakeIds, Fakes
from tests.unit.test_api_support import new_run, task

RUNS = "/api/v1/runs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def worker(fakes: Fakes, port: int, **options: Any) -> AsyncIterator[str]:
    url = f"http://127.0.0.1:{port}"
    deps = fakes.deps()
    app = create_api(
        type(deps)(**{**{f: getattr(deps, f) for f in deps.__dataclass_fields__}, "self_url": url}),
        **options,
    )
    runner = JsonRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield url
    finally:
        await runner.cleanup()


class Pair:
    """Worker A owns odd run ids, worker B even ones; both hand out ids from one sequence."""

    def __init__(self) -> None:
        ids = FakeIds()
        self.a, self.b = Fakes(ids=ids), Fakes(ids=ids)
        self.url_a = self.url_b = ""

    def route(self, run_id: str) -> None:
        owner_b = int(run_id) % 2 == 0
        (self.a if owner_b else self.b).owners.routes[run_id] = Remote(
            self.url_b if owner_b else self.url_a
        )


@asynccontextmanager
async def pair(**options: Any) -> AsyncIterator[Pair]:
    p = Pair()
    pa, pb = free_port(), free_port()
    p.url_a, p.url_b = f"http://127.0.0.1:{pa}", f"http://127.0.0.1:{pb}"
    for n in range(1, 40):
        p.route(f"{n:016d}")
    async with worker(p.a, pa, **options), worker(p.b, pb, **options):
        yield p


async def test_any_worker_answers_any_request_through_the_owner() -> None:
    async with pair() as p, AsyncClient(p.url_a) as ca, AsyncClient(p.url_b) as cb:
        created = [await (ca if i % 2 else cb).create_run(**new_run(task("a"))) for i in range(6)]
        for body in created:
            run_id = body.run.id
            owner = p.b if int(run_id) % 2 == 0 else p.a
            other = p.a if owner is p.b else p.b
            assert run_id in owner.owners.states  # applied by the owner ...
            assert run_id not in other.owners.states  # ... and only there
            for c in (ca, cb):  # read from either worker: the owner's live state
                assert await c.get_run(run_id) == body
        # Actions through the non-owner: the owner's refusal comes back unchanged.
        run_id = created[0].run.id
        non_owner = ca if int(run_id) % 2 == 0 else cb
        await non_owner.start(run_id)
        with pytest.raises(BadRequest, match="only a queued run starts"):
            await non_owner.start(run_id)
        got = await non_owner.get_run(run_id)
        assert got.run.phase == "running"


async def test_the_relay_passes_status_headers_and_body_back_unchanged() -> None:
    async with pair() as p:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async with http.post(p.url_a + RUNS, json=new_run()) as r:  # id 1: A's own
                assert r.status == 201
            async with http.post(p.url_a + RUNS, json=new_run()) as r:  # id 2: created at B
                assert r.status == 201
                assert r.headers["Location"] == f"{RUNS}/0000000000000002"
                assert r.headers["ETag"] == '"1"'
                created = await r.json()
            assert "0000000000000002" in p.b.owners.states
            async with http.get(p.url_a + f"{RUNS}/0000000000000002") as r:
                assert (r.status, r.headers["ETag"], await r.json()) == (200, '"1"', created)
            async with http.get(p.url_a + f"{RUNS}/0000000000000004") as r:
                assert (r.status, await r.json()) == (404, {"message": "run 0000000000000004 not found"})  # fmt: skip
            p.b.owners.routes["0000000000000002"] = Unsettled("partition 1 is loading on this worker")  # fmt: skip
            async with http.get(p.url_a + f"{RUNS}/0000000000000002") as r:
                assert r.status == 503
                assert r.headers["Retry-After"] == "1"
                assert "loading" in (await r.json())["message"]


async def test_a_recreation_reads_the_old_run_from_its_owner() -> None:
    async with pair() as p, AsyncClient(p.url_a) as ca:
        old = (await ca.create_run(**new_run(task("a")))).run.id  # id 1, at A
        await ca.cancel(old)
        new = await ca.create_run(**new_run(task("a")))  # id 2 at B, so the next one is 3 at A
        assert new.run.id == "0000000000000002"
        await ca.start("0000000000000002")
        await ca.stop("0000000000000002")
        # Recreate run 2 (owned by B) through A: the new run gets id 3 (A), A reads 2 from B.
        body = await ca.recreate_run("0000000000000002", from_start=True)
        assert body.run.id == "0000000000000003"
        assert "0000000000000003" in p.a.owners.states


async def test_the_token_is_forwarded_and_never_upgraded_by_the_hop() -> None:
    async with pair(api_token="s3cret") as p:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async with http.post(p.url_a + RUNS, json=new_run(), headers={"Authorization": "Bearer s3cret"}) as r:  # fmt: skip
                assert r.status == 201
            async with http.post(p.url_a + RUNS, json=new_run(), headers={"Authorization": "Bearer s3cret"}) as r:  # fmt: skip
                assert r.status == 201  # created at B with the caller's token
            async with http.get(p.url_a + f"{RUNS}/0000000000000002") as r:
                assert r.status == 401  # no token: refused here, never relayed
            assert len(p.b.owners.events) == 1


async def test_unknown_list_parameters_are_400_naming_them() -> None:
    fakes = Fakes()
    async with worker(fakes, port := free_port()) as url:
        async with AsyncClient(url) as c:
            with pytest.raises(BadRequest, match="'asc'"):
                await c._do(_call("GET", RUNS, [("asc", "1")]))
        import aiohttp

        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}{RUNS}?start=5&order=asc") as r,
        ):
            body = await r.json()
            assert r.status == 400
            assert "'start'" in body["message"]


def _call(method: str, path: str, params: list[tuple[str, Any]]) -> Any:
    from api.wire import Call

    return Call(method, path, params=params)


async def raw_http(port: int, request: bytes) -> tuple[int, bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head, body


async def test_a_request_line_or_header_too_long_gets_a_json_400(caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    fakes = Fakes()
    port = free_port()
    async with worker(fakes, port):
        long_line = b"GET /api/v1/runs?group=" + b"x" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        status, head, body = await raw_http(port, long_line)
        assert status == 400
        assert b"application/json" in head
        import orjson

        assert "message" in orjson.loads(body)
        long_header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 20_000 + b"\r\n\r\n"
        status, head, body = await raw_http(port, long_header)
        assert status == 400
        assert set(orjson.loads(body)) == {"message"}
    assert "Traceback" not in caplog.text


async def test_the_client_retries_503_then_succeeds() -> None:
    fakes = Fakes()
    async with worker(fakes, port := free_port()) as url:
        run_id = "0000000000000001"
        fakes.owners.routes[run_id] = Unsettled("partition 0 is loading on this worker")

        async def settle() -> None:
            await asyncio.sleep(0.3)
            del fakes.owners.routes[run_id]

        settling = asyncio.ensure_future(settle())
        async with AsyncClient(url) as c:
            # Retried with the Idempotency-Key the client adds: the key's record keeps id 1, so
            # the retry creates that run once its owner settles, never a second one.
            created = await c.create_run(**new_run())
            assert created.run.id == "0000000000000001"
            assert len(fakes.creation_keys.records) == 1
            await settling
            run_id = created.run.id
            # Actions carry an Idempotency-Key, so a retried action is applied once.
            fakes.owners.routes[run_id] = Unsettled("rebalance")
            settling = asyncio.ensure_future(settle())
            await c.start(run_id)
            await settling
            assert sum(e.type == "run.start_requested" for e in fakes.owners.events) == 1
            fakes.owners.routes[run_id] = Unsettled("rebalance, for good")
            with pytest.raises(Unavailable):
                await c.get_run(run_id)  # bounded: it gives up
        assert port


async def test_answers_say_how_long_the_owner_and_the_hop_took() -> None:
    from api.middleware import server_timing

    async with pair() as p:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async with http.post(p.url_a + RUNS, json=new_run()) as r:  # id 1: decided at A
                timing = r.headers["Server-Timing"]
                assert r.status == 201
                assert timing.startswith("app;dur=")
                assert server_timing(timing, "owner") is None
            async with http.post(p.url_a + RUNS, json=new_run()) as r:  # id 2: relayed to B
                timing = r.headers["Server-Timing"]
                owner, here = server_timing(timing, "owner"), server_timing(timing, "app")
                assert r.status == 201
                assert owner is not None
                assert here is not None
                assert 0 <= owner <= here  # B's time is inside A's


def test_server_timing_values_are_read_leniently() -> None:
    from api.middleware import server_timing

    assert server_timing("owner;dur=2.5, app;dur=4", "owner") == 0.0025
    assert server_timing("owner;dur=2.5, app;dur=4", "app") == 0.004
    assert server_timing("app;desc=x", "app") is None
    assert server_timing("app;dur=x", "app") is None
    assert server_timing("", "app") is None
