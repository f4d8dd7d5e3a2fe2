"""The route handlers: parse (``api.bodies``), call the use case (``api.service``), render
(``api.views``). No business rules here."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.bodies import (
    CreateRequest,
    parse_body,
    parse_create,
    parse_expected_seq,
    parse_idempotency_key,
    parse_list_query,
    parse_run_action,
    parse_task_action,
    require_run_id,
)
from api.errors import Unavailable
from api.ports import ApiDeps
from api.service import RunService
from api.views import etag, json_response, page_view, run_view

__all__ = ["Handlers"]


class Handlers:
    def __init__(self, service: RunService, deps: ApiDeps) -> None:
        self.service = service
        self.deps = deps

    async def create_run(self, request: web.Request) -> web.Response:
        req = parse_create(parse_body(await request.read()))
        if isinstance(req, CreateRequest):
            state = await self.service.create(req)
        else:
            state = await self.service.recreate(req)
        headers = {"Location": f"/api/v1/runs/{state.run.id}", "ETag": etag(state)}
        return json_response(run_view(state), status=201, headers=headers)

    async def get_run(self, request: web.Request) -> web.Response:
        state = await self.service.get(require_run_id(request.match_info["run_id"]))
        return json_response(run_view(state), headers={"ETag": etag(state)})

    async def list_runs(self, request: web.Request) -> web.Response:
        page = self.service.list_runs(parse_list_query(request.query))
        return json_response(page_view(page))

    async def run_action(self, request: web.Request) -> web.Response:
        run_id = require_run_id(request.match_info["run_id"])
        expected = parse_expected_seq(request.headers.get("If-Match"))
        action = parse_run_action(parse_body(await request.read()))
        key = parse_idempotency_key(request.headers.get("Idempotency-Key"))
        await self.service.run_action(run_id, action, expected, key)
        return web.Response(status=204)

    async def task_action(self, request: web.Request) -> web.Response:
        run_id = require_run_id(request.match_info["run_id"])
        task_id = request.match_info["task_id"]
        expected = parse_expected_seq(request.headers.get("If-Match"))
        req = parse_task_action(parse_body(await request.read()))
        key = parse_idempotency_key(request.headers.get("Idempotency-Key"))
        await self.service.task_action(run_id, task_id, req, expected, key)
        return web.Response(status=204)

    async def healthz(self, request: web.Request) -> web.Response:
        if not self.deps.ready():
            raise Unavailable("not ready: the agents are catching up with the log")
        return json_response({"status": "ok"})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
