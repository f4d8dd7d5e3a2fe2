"""The hop to a run's owner: any worker relays a request about a run to the worker that owns the
run's partition, and passes the owner's answer back unchanged (status, ``ETag``, ``Location``,
``Retry-After`` and the JSON body) — the gateway rule of docs/design.md ("The API: the owner
decides, any worker relays").

A relayed request carries ``RELAY_HEADER``; a worker that receives a relayed request for a run it
does not own answers 503 itself instead of relaying again, so a stale ownership map ends in one
503 and a retry, never in a cycle. The hop is signed with the cluster's secret
(``api.cluster``): the owner honours ``X-Runstream-*`` headers only with a valid signature, and
takes the caller's scopes from the signed ``X-Runstream-Scopes`` (the entry worker checked the
caller's token; the token itself does not travel). The hop never changes what the caller may
do: the owner masks secrets for those scopes exactly as the entry worker would.

What the hop costs is measured per request: the owner's answer says how long the owner took
(``Server-Timing: app;dur=…``, ``api.middleware``), and ``runstream_api_relay_seconds`` records
the rest of the relay's time — connection, sending, the owner's HTTP parsing and queueing,
reading the answer back. The answer passed on carries the owner's time as ``owner;dur=…``.
"""

from __future__ import annotations

import logging
import time

import aiohttp
import yarl
from aiohttp import web
from prometheus_client import Histogram

from api.cluster import RELAY_HEADER, RUN_ID_HEADER, ClusterKey
from api.errors import Unavailable
from api.middleware import RELAYED_KEY, SCOPES_KEY, SERVER_TIMING, server_timing

__all__ = ["RELAY_HEADER", "RUN_ID_HEADER", "STATE_TYPE", "Relay", "is_relayed"]

log = logging.getLogger("runstream.api.relay")

#: A relayed ``GET /runs/{id}`` asking for this media type gets the run's full state
#: (``events.encode_state``), which a recreation on another worker needs.
STATE_TYPE = "application/vnd.runstream.state+json"

_FORWARD = ("Content-Type", "If-Match", "Idempotency-Key", "Accept")
_BACK = ("ETag", "Location", "Retry-After", "Content-Type")

RELAY_SECONDS = Histogram(
    "runstream_api_relay_seconds",
    "Time a relayed request spent in the hop to the owner beyond the owner's own handling "
    "(the owner's Server-Timing): connection, sending, the owner's HTTP parsing and queueing, "
    "reading the answer",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)


def is_relayed(request: web.Request) -> bool:
    """True for a request another worker relayed, its signature checked (``api.middleware``);
    ``RELAY_HEADER`` from outside never makes a request relayed."""
    return bool(request.get(RELAYED_KEY, False))


class Relay:
    """Forwards requests to other workers over one pooled HTTP client (created on first use),
    signed with ``key``."""

    def __init__(self, self_url: str, *, timeout: float = 30.0, key: ClusterKey | None = None) -> None:  # fmt: skip
        self.self_url = self_url
        self.timeout = timeout
        self.key = key if key is not None else ClusterKey()
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch(
        self,
        request: web.Request,
        owner_url: str,
        *,
        method: str | None = None,
        path: str | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """``(status, headers that matter, body)`` of the owner's answer to ``request`` (or to
        ``method path`` with ``body`` when given). No answer: ``Unavailable`` (503)."""
        out = {h: request.headers[h] for h in _FORWARD if h in request.headers}
        out.setdefault("Accept", "application/json")  # sent as signed (aiohttp adds one else)
        out[RELAY_HEADER] = self.self_url or "unknown"
        out.update(headers or {})
        url = yarl.URL(owner_url.rstrip("/") + (path if path is not None else request.path_qs))
        # No body (a GET, most actions): no payload either, else aiohttp writes an empty one
        # after the headers, a second send per request (12 % of a relaying worker's CPU).
        data = (await request.read() if body is None else body) or None
        verb = method or request.method
        out = self.key.sign(verb, url.raw_path_qs, out, data or b"", scopes=request.get(SCOPES_KEY, ()))  # fmt: skip
        started = time.perf_counter()
        try:
            async with self._http().request(
                verb,
                url,
                data=data,
                headers=out,
                allow_redirects=False,
            ) as answer:
                content = await answer.read()
                back = {h: answer.headers[h] for h in _BACK if h in answer.headers}
                owner_took = server_timing(answer.headers.get(SERVER_TIMING, ""), "app")
                if owner_took is not None:
                    RELAY_SECONDS.observe(max(0.0, time.perf_counter() - started - owner_took))
                    back[SERVER_TIMING] = f"owner;dur={owner_took * 1000:.3f}"
                return answer.status, back, content
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("relay to the owner failed", extra={"owner": owner_url, "error": repr(exc)})
            raise Unavailable(
                "the worker that owns this run did not answer; retry (ownership may be moving)"
            ) from None

    async def forward(
        self, request: web.Request, owner_url: str, *, headers: dict[str, str] | None = None
    ) -> web.Response:
        """The owner's answer to ``request``, as this worker's answer."""
        status, back, content = await self.fetch(request, owner_url, headers=headers)
        content_type = back.pop("Content-Type", "application/json")
        response = web.Response(status=status, body=content if status != 204 else None)
        response.headers.update(back)
        if status != 204:
            response.headers["Content-Type"] = content_type
        return response
