"""``create_api``: the aiohttp application of the HTTP API (docs/api.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from api.cluster import ClusterKey
from api.console import add_console_routes
from api.dlq import DeadLetterHandlers
from api.handlers import Handlers
from api.middleware import auth_middleware, error_middleware
from api.openapi import openapi_document
from api.ports import ApiDeps
from api.relay import Relay
from api.scopes import ALL_SCOPES, Scope, Tokens
from api.service import RunService
from api.sse import EventStream
from api.views import json_response

__all__ = ["CLUSTER_KEY", "PREFIX", "create_api"]

PREFIX = "/api/v1"
#: The application's :class:`api.cluster.ClusterKey` (the worker sets its secret before serving).
CLUSTER_KEY = web.AppKey("runstream_cluster_key", ClusterKey)


def create_api(
    deps: ApiDeps,
    *,
    api_token: str = "",
    tokens: Mapping[str, Iterable[Scope]] | None = None,
    cluster_secret: bytes | str = b"",
    max_body_bytes: int = 1 << 20,
    heartbeat: float = 15.0,
    relay_timeout: float = 30.0,
    asyncapi: Mapping[str, Any] | None = None,
) -> web.Application:
    """The application serving ``/api/v1/...``, ``/healthz``, ``/metrics`` and the OpenAPI
    document at ``/api/v1/openapi.json``.

    ``tokens``: token → its scopes (``api.scopes``); ``api_token``, when non-empty, is one more
    token holding every scope. With any token, every request but /healthz, /metrics and the
    console's files needs ``Authorization: Bearer <token>`` (401) of a token holding the
    route's scope (403); with none, every caller holds every scope. ``cluster_secret``: what the
    workers sign their hops with (``api.cluster``; empty: this process's own, settable later
    through ``app[CLUSTER_KEY].secret``). ``max_body_bytes``: larger request bodies get
    413. ``heartbeat``: seconds between SSE keepalives. ``relay_timeout``: seconds a relayed
    request may take at the run's owner. ``asyncapi``: the AsyncAPI document of the topics,
    served at ``/api/v1/asyncapi.json`` (the agents build it from their settings).
    """
    table: dict[str, frozenset[Scope]] = {t: frozenset(s) for t, s in (tokens or {}).items()}
    if api_token:
        table[api_token] = ALL_SCOPES
    key = ClusterKey(cluster_secret)
    app = web.Application(
        client_max_size=max_body_bytes,
        middlewares=[error_middleware, auth_middleware(Tokens(table), key, max_body_bytes)],
    )
    app[CLUSTER_KEY] = key
    relay = Relay(deps.self_url, timeout=relay_timeout, key=key)
    h = Handlers(RunService(deps), deps, relay)

    async def close_relay(app: web.Application) -> None:
        await relay.close()

    app.on_cleanup.append(close_relay)
    events = EventStream(deps.feed, heartbeat)
    ready_tasks = EventStream(deps.task_feed, heartbeat, what="the ready-task stream")
    doc = openapi_document()

    async def openapi(request: web.Request) -> web.Response:
        return json_response(doc)

    r = app.router
    # /runs/events before /runs/{run_id}: routes match in the order they are added.
    r.add_get(f"{PREFIX}/runs/events", events.handle, allow_head=False)
    r.add_get(f"{PREFIX}/runs/tasks/events", ready_tasks.handle, allow_head=False)
    r.add_get(f"{PREFIX}/runs", h.list_runs, allow_head=False)
    r.add_post(f"{PREFIX}/runs", h.create_run)
    r.add_get(f"{PREFIX}/runs/{{run_id}}", h.get_run, allow_head=False)
    r.add_get(f"{PREFIX}/runs/{{run_id}}/history", h.history, allow_head=False)
    r.add_put(f"{PREFIX}/runs/{{run_id}}/actions", h.run_action)
    r.add_put(f"{PREFIX}/runs/{{run_id}}/tasks/{{task_id}}/actions", h.task_action)
    r.add_post(f"{PREFIX}/runs/{{run_id}}/tasks/{{task_id}}/claim", h.claim_task)
    r.add_put(f"{PREFIX}/runs/{{run_id}}/tasks/{{task_id}}/status", h.report_status)
    r.add_get(f"{PREFIX}/stuck", h.stuck, allow_head=False)
    r.add_post(f"{PREFIX}/executors/{{executor_id}}/heartbeat", h.heartbeat)
    r.add_get(f"{PREFIX}/executors/{{executor_id}}", h.get_executor, allow_head=False)
    # Dead letters: operator routes, all under /api/v1/dlq (api.dlq).
    dlq = DeadLetterHandlers(deps.dead_letters)
    r.add_get(f"{PREFIX}/dlq", dlq.list, allow_head=False)
    r.add_post(f"{PREFIX}/dlq/redrive", dlq.redrive)
    r.add_get(f"{PREFIX}/dlq/{{partition}}/{{offset}}", dlq.show, allow_head=False)
    r.add_get(f"{PREFIX}/openapi.json", openapi, allow_head=False)
    if asyncapi is not None:  # the topics' document (agents.asyncapi: api does not know them)
        topics = dict(asyncapi)

        async def asyncapi_json(request: web.Request) -> web.Response:
            return json_response(topics)

        r.add_get(f"{PREFIX}/asyncapi.json", asyncapi_json, allow_head=False)
    r.add_get("/healthz", h.healthz, allow_head=False)
    r.add_get("/metrics", h.metrics, allow_head=False)
    add_console_routes(r)  # /ui/: the console, static files (no run data, no token needed)
    return app
