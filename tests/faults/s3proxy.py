"""A fault-injecting reverse proxy in front of the S3 server (runs in the test's event loop).

The worker's storage URL points at the proxy (``s3://bucket?endpoint=http://127.0.0.1:<port>``).
Requests are forwarded unchanged — method, path, query, body and every header, including the
SigV4 ``Authorization`` and the ``Host`` the client signed — so the S3 server accepts them.
A test installs ``proxy.hook``: an async function given the request and a ``forward`` coroutine
function, returning the response to send (or raising ``Drop`` to cut the connection). The
default hook forwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import yarl
from aiohttp import web

__all__ = ["Drop", "Request", "S3Proxy", "Upstream", "slow_down"]

_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "content-length",
}


class Drop(Exception):
    """Raised by a hook: close the client's connection without an answer."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    method: str
    path: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def is_put(self) -> bool:
        return self.method == "PUT"

    @property
    def is_manifest_put(self) -> bool:
        return self.method == "PUT" and "/manifests/" in self.path and self.path.endswith(".json")


@dataclass(frozen=True, slots=True, kw_only=True)
class Upstream:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def response(self) -> web.Response:
        resp = web.Response(status=self.status, body=self.body)
        for k, v in self.headers:
            if k.lower() not in _HOP and k.lower() != "content-encoding":
                resp.headers.add(k, v)
        return resp


Forward = Callable[[], Awaitable[Upstream]]
Hook = Callable[[Request, Forward], Awaitable[Upstream]]


def slow_down() -> Upstream:
    """What S3 answers when it throttles: 503 SlowDown (botocore retries it)."""
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message></Error>"
    )
    return Upstream(status=503, headers=[("Content-Type", "application/xml")], body=body)


async def _forward_only(req: Request, forward: Forward) -> Upstream:
    return await forward()


@dataclass
class S3Proxy:
    """``async with S3Proxy(upstream_url) as proxy:`` then point the worker at ``proxy.url``."""

    upstream: str
    hook: Hook = _forward_only
    requests: int = 0
    puts: int = 0
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    port: int = 0
    log: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def storage(self, bucket: str) -> str:
        return f"s3://{bucket}?endpoint={self.url}"

    async def __aenter__(self) -> S3Proxy:
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=120)
        )
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        req = Request(
            method=request.method,
            path=request.path,
            raw_path=request.raw_path,
            headers=[(k, v) for k, v in request.headers.items() if k.lower() not in _HOP],
            body=body,
        )
        self.requests += 1
        self.puts += req.is_put

        async def forward() -> Upstream:
            return await self._forward(req)

        try:
            up = await self.hook(req, forward)
        except Drop:
            assert request.transport is not None
            request.transport.abort()  # the client sees a reset connection, no answer
            raise asyncio.CancelledError from None
        return up.response()

    async def _forward(self, req: Request) -> Upstream:
        assert self._session is not None
        # The path as the client encoded it: SigV4 signs the encoded form.
        url = yarl.URL(self.upstream.rstrip("/") + req.raw_path, encoded=True)
        # The Host header is kept as the client signed it (SigV4 covers it).
        headers = dict(req.headers)
        async with self._session.request(
            req.method, url, headers=headers, data=req.body, skip_auto_headers=("Content-Type",)
        ) as resp:
            data = await resp.read()
            return Upstream(status=resp.status, headers=list(resp.headers.items()), body=data)
