"""The OpenAPI document: in step with the routes, and a property-based fuzz of the running
service from it (schemathesis): no 500 for any generated input, every error JSON with a message."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.core import NOT_SET

from api import JsonRunner, create_api, openapi_document
from api.bodies import CURSOR_PATTERN
from indexer import BadCursor, Order, decode_cursor, encode_cursor
from tests.fakes_api import Fakes
from tests.unit.test_api_support import new_run


def routed_operations(app: web.Application) -> set[tuple[str, str]]:
    ops = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        ops.add((route.method.lower(), path))
    return ops


def documented_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in doc["paths"].items() for method in item}


def test_every_route_is_documented_and_every_documented_operation_routed() -> None:
    app = create_api(Fakes().deps())
    assert routed_operations(app) == documented_operations(openapi_document())


def test_every_operation_documents_its_errors_as_the_error_schema() -> None:
    for path, item in openapi_document()["paths"].items():
        for method, op in item.items():
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)  # fmt: skip


class _Server:
    """The API over fakes on a loopback port, in a thread with its own event loop (schemathesis
    calls are blocking)."""

    def __init__(self) -> None:
        self.fakes = Fakes()
        self.loop = asyncio.new_event_loop()
        self.url = ""
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = create_api(self.fakes.deps(), max_body_bytes=64 * 1024)
        self.runner = JsonRunner(app)  # as served: malformed requests get JSON too
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        ready.set()
        self.loop.run_forever()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    srv = _Server()
    # Some runs in several phases, so generated ids and actions sometimes hit real ones.
    import httpx

    with httpx.Client(base_url=srv.url) as http:
        for i in range(4):
            run_id = http.post("/api/v1/runs", json=new_run()).json()["run"]["id"]
            if i % 2:
                http.put(f"/api/v1/runs/{run_id}/actions", json={"action_type": "start"})
    srv.fakes.materialize()
    yield srv
    srv.close()


def _all_checks() -> SchemathesisConfig:
    """``--checks all``: every built-in check, on positive and negative data (the default
    generation modes)."""
    config = SchemathesisConfig()
    config.projects.default.checks.update(included_check_names=["all"])
    return config


schema = schemathesis.openapi.from_dict(openapi_document(), config=_all_checks()).exclude(
    path_regex=r"^/api/v1/runs(/tasks)?/events$"  # endless streams: tested in test_api_sse.py
)


@schema.hook
def map_case(context: Any, case: Any) -> Any:
    """A cursor continues a listing in the order it was made for, after a run id (the
    ``next_cursor`` of a page): a relation between two parameters that JSON Schema cannot
    state. A positive case with a cursor of the documented shape is made to keep it; negative
    cases are left as generated."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return case
    # JSON Schema's "integer" also matches 78.0, which this API refuses for an integer field
    # (docs/api.md: a number with a fraction is not an integer): a positive case writes every
    # whole number without one. Steps are opaque JSON, where 78 and 78.0 are both valid.
    # (Never reassign a body left out: schemathesis then judges the absent body again, as a
    # negative one, and the case with it: an optional body, as a heartbeat's, would fail.)
    if (
        case.body is not NOT_SET
        and case.body is not None
        and not isinstance(case.body, (str, bytes))
    ):
        case.body = _whole(case.body)
    query = case.query
    if not query:
        return case
    cursor = query.get("cursor")
    if not isinstance(cursor, str) or re.fullmatch(CURSOR_PATTERN, cursor) is None:
        return case
    made_for = next((o for o in Order if _usable(cursor, o)), None)
    if made_for is None:  # of the shape, but after run id 0, which the pattern cannot exclude
        made_for = Order.DESC if cursor[2] in "EFGH" else Order.ASC  # the order byte
        cursor = encode_cursor(1, made_for)
    case.query = {**query, "cursor": cursor, "order": made_for.value}
    return case


def _whole(value: Any) -> Any:
    """``value`` with every float that is a whole number written as an int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value


def _usable(cursor: str, order: Order) -> bool:
    try:
        decode_cursor(cursor, order)
    except BadCursor:
        return False
    return True


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_fuzz_every_check_passes(case: Any, server: _Server) -> None:
    """Every schemathesis check, positive and negative data: valid requests are accepted,
    invalid ones refused with a 4xx, answers conform to the document, no 500."""
    response = case.call_and_validate(base_url=server.url, timeout=10)
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body.get("message"), str)
        assert body["message"]
