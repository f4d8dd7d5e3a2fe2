"""The one place errors become responses, plus authentication (tokens and their scopes, the
workers' signed hop), the body limit and metrics.

Mapping (docs/api.md, the error conventions): ``api.errors.ApiError`` → its status;
``events.BadRequest`` (including ``CannotRecreate``) and ``indexer.QueryError`` → 400; aiohttp's
own HTTP errors (unknown route 404, wrong method 405, body too large 413) keep their status;
anything else → 500 ``internal server error``, with the traceback only in the log. Every error
body is ``{"message": ...}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import Counter, Histogram

import events
import indexer
from api.cluster import HEADER_PREFIX, ClusterKey, HopRefused
from api.console import is_console_path
from api.errors import (
    INTERNAL_MESSAGE,
    ApiError,
    BadRequest,
    Conflict,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from api.scopes import ALL_SCOPES, Scope, Tokens, required_scope, revealing
from api.views import json_response

__all__ = [
    "RELAYED_KEY",
    "REQUESTS",
    "REQUEST_SECONDS",
    "SCOPES_KEY",
    "SERVER_TIMING",
    "auth_middleware",
    "error_middleware",
    "server_timing",
]

log = logging.getLogger("runstream.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUESTS = Counter(
    "runstream_api_requests", "HTTP API requests answered", ["method", "route", "status"]
)
REQUEST_SECONDS = Histogram(
    "runstream_api_request_seconds",
    "HTTP API request handling time, relays to the owner included "
    "(event streams: their whole life)",
    ["method", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5),
)
#: Every answer says how long this worker took for it (W3C Server-Timing, ``app;dur=<ms>``); a
#: relayed answer also carries the owner's own time as ``owner;dur=<ms>`` (``api.relay``), so a
#: caller or a benchmark can tell the owner's decision from what the hop added, per request.
SERVER_TIMING = "Server-Timing"
#: Paths a probe or a scraper reads without the API token (they carry no run data).
OPEN_PATHS = frozenset({"/healthz", "/metrics"})
#: Request keys: the caller's scopes (``frozenset[Scope]``), and True on a hop whose signature
#: was checked (``api.relay.is_relayed``).
SCOPES_KEY = web.RequestKey("runstream_scopes", frozenset)
RELAYED_KEY = web.RequestKey("runstream_relayed", bool)
#: The code of a 403 (a token without the scope the route needs).
MISSING_SCOPE = "missing_scope"


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, code: str = ""
) -> web.Response:
    body = {"message": message, "code": code} if code else {"message": message}
    return json_response(body, status=status, headers=headers)


def api_error_response(exc: ApiError) -> web.Response:
    """The answer for an ``ApiError``: 503 carries ``Retry-After``, 409 its ``code``."""
    if isinstance(exc, Unavailable):
        return error_response(exc.status, exc.message, {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, Conflict) and exc.code:
        return error_response(exc.status, exc.message, code=exc.code)
    return error_response(exc.status, exc.message)


def _route(request: web.Request) -> str:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as JSON ``{"message"}``; a 500 never tells its cause. Counts requests."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except ApiError as exc:
        response = api_error_response(exc)
    except (events.BadRequest, indexer.QueryError) as exc:
        response = error_response(400, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        text = exc.text or ""
        # aiohttp's default text is "<status>: <reason>"; a specific one (413's sizes) is kept.
        message = exc.reason.lower() if not text or text.startswith(f"{exc.status}:") else text
        response = error_response(exc.status, message, headers)
    except Exception:
        log.exception("internal error in %s %s", request.method, request.path)
        response = error_response(500, INTERNAL_MESSAGE)
    elapsed = time.perf_counter() - started
    route = _route(request)
    REQUESTS.labels(request.method, route, str(response.status)).inc()
    REQUEST_SECONDS.labels(request.method, route).observe(elapsed)
    if not response.prepared:  # an event stream has sent its headers long ago
        mine = f"app;dur={elapsed * 1000:.3f}"
        given = response.headers.get(SERVER_TIMING)
        response.headers[SERVER_TIMING] = f"{given}, {mine}" if given else mine
    return response


def server_timing(value: str, name: str) -> float | None:
    """Seconds of metric ``name`` in a ``Server-Timing`` value (``None``: absent or malformed)."""
    for metric in value.split(","):
        parts = metric.strip().split(";")
        if parts[0] != name:
            continue
        for param in parts[1:]:
            key, _, dur = param.strip().partition("=")
            if key == "dur":
                try:
                    return float(dur) / 1000
                except ValueError:
                    return None
    return None


def auth_middleware(tokens: Tokens, key: ClusterKey, max_body_bytes: int) -> Callable[..., Awaitable[web.StreamResponse]]:  # fmt: skip
    """Who is asking, and may they (docs/api.md, "Tokens and scopes").

    * ``OPEN_PATHS`` and the console's static files: anyone.
    * A request with any ``X-Runstream-*`` header is a hop from another worker: honoured only
      with the cluster's valid signature (``api.cluster``), else 400. Its caller's scopes are
      the signed ones (the entry worker checked the token and the route's scope).
    * Otherwise, with ``tokens`` configured: ``Authorization: Bearer <token>`` of a known token
      (401), holding the scope the route needs (``api.scopes.ROUTE_SCOPES``; 403 naming it).
      With no token configured every caller holds every scope (the worker serves loopback
      only). A path no route matches needs a valid token only (then 404/405).

    The answer shows ``environment`` values only to a caller holding ``execute``
    (``api.scopes.revealing``). A body announced above ``max_body_bytes`` is refused at once
    (413; aiohttp refuses the rest while reading)."""

    def too_large(request: web.Request) -> None:
        length = request.content_length
        if length is not None and length > max_body_bytes:
            raise PayloadTooLarge(f"request body of {length} bytes is above {max_body_bytes}")

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or is_console_path(request.path):
            too_large(request)
            return await handler(request)
        scopes: frozenset[Scope]
        if any(name.lower().startswith(HEADER_PREFIX) for name in request.headers):
            too_large(request)
            body = await request.read()
            try:
                scopes = key.verify(request.method, request.raw_path, request.headers, body)
            except HopRefused as exc:
                log.warning(
                    "refused X-Runstream-* headers without the cluster's signature",
                    extra={"path": request.path, "peer": request.remote, "error": str(exc)},
                )
                raise BadRequest(str(exc)) from None
            request[RELAYED_KEY] = True
        else:
            if tokens:
                scheme, _, token = request.headers.get("Authorization", "").partition(" ")
                held = tokens.scopes_of(token.strip()) if scheme.lower() == "bearer" else None
                if held is None:
                    raise Unauthorized("this API needs 'Authorization: Bearer <token>'")
                scopes = held
            else:
                scopes = ALL_SCOPES
            route = _route(request)
            if route != "unmatched":
                need = required_scope(request.method, route)
                if need not in scopes:
                    holds = ", ".join(sorted(s.value for s in scopes)) or "none"
                    return error_response(
                        403,
                        f"{request.method} {route} needs the '{need.value}' scope; "
                        f"this token holds: {holds}",
                        code=MISSING_SCOPE,
                    )
            too_large(request)
        request[SCOPES_KEY] = scopes
        reset = revealing.set(Scope.EXECUTE in scopes)
        try:
            return await handler(request)
        finally:
            revealing.reset(reset)

    return middleware
