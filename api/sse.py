"""``GET /api/v1/runs/events``: the phase changes as server-sent events.

Frames: ``id: <cursor>\\ndata: <run.phase_changed envelope JSON>\\n\\n``; a comment line
``: keepalive\\n\\n`` every ``heartbeat`` seconds without events, so proxies keep the
connection and clients notice a dead one. Resume with ``?after=<cursor>`` or the
``Last-Event-ID`` header (the query wins): the stream continues just after that event, with no
loss and no repetition. A cursor older than what the log retains gives 410 before any frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from api.errors import InvalidCursor
from api.ports import PhaseFeed
from events import Event, encode

__all__ = ["EventStream"]

log = logging.getLogger("runstream.api.sse")

KEEPALIVE = b": keepalive\n\n"


def frame(cursor: str, event: Event) -> bytes:
    return b"id: " + cursor.encode() + b"\ndata: " + encode(event) + b"\n\n"


async def _next(it: AsyncIterator[tuple[str, Event]]) -> tuple[str, Event]:
    return await anext(it)


class EventStream:
    def __init__(self, feed: PhaseFeed, heartbeat: float) -> None:
        self.feed = feed
        self.heartbeat = heartbeat

    async def handle(self, request: web.Request) -> web.StreamResponse:
        after = request.query.get("after") or request.headers.get("Last-Event-ID") or None
        if after is not None and ("\n" in after or "\r" in after or len(after) > 1024):
            raise InvalidCursor("cursor must be one line of at most 1024 characters")
        stream = await self.feed.follow(after)  # raises 410 / 400 before any byte is sent
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
            }
        )
        try:
            await response.prepare(request)
            await response.write(b": stream open\n\n")  # headers out now, not at the first event
            await self._pump(stream, response)
        except ConnectionResetError:
            pass  # the client went away: nothing to answer
        except Exception:
            # Headers are out: no error status can be sent any more. Close; the client resumes.
            log.exception("event stream failed")
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
        return response

    async def _pump(self, stream: AsyncIterator[tuple[str, Event]], response: web.StreamResponse) -> None:  # fmt: skip
        it = aiter(stream)
        pending: asyncio.Future[tuple[str, Event]] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(_next(it))
                done, _ = await asyncio.wait({pending}, timeout=self.heartbeat)
                if not done:
                    await response.write(KEEPALIVE)
                    continue
                try:
                    cursor, event = pending.result()
                except StopAsyncIteration:
                    return
                pending = None
                await response.write(frame(cursor, event))
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
