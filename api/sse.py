"""``GET /api/v1/runs/events``: the phase changes as server-sent events; ``GET
/api/v1/runs/tasks/events``: the ready tasks, the same way (each stream follows one topic,
``runs.phases`` or ``runs.tasks``, with cursors of its own).

Frames: ``id: <cursor>\\ndata: <run.phase_changed or task.ready envelope JSON>\\n\\n``; a
comment line ``: keepalive\\n\\n`` every ``heartbeat`` seconds without events, so proxies keep
the connection and clients notice a dead one. Resume with ``?after=<cursor>`` or the
``Last-Event-ID`` header (the query wins): the stream continues just after that event, with no
loss and no repetition. A cursor older than what the log retains gives 410 before any frame.
Any other query parameter, or ``after`` given twice, is 400 (``api.bodies.parse_events_query``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from api.bodies import parse_events_query
from api.errors import InvalidCursor, Unavailable
from api.ports import PhaseFeed
from events import Event, encode

__all__ = ["EventStream"]

log = logging.getLogger("runstream.api.sse")

KEEPALIVE = b": keepalive\n\n"


def frame(cursor: str, event: Event) -> bytes:
    return b"id: " + cursor.encode() + b"\ndata: " + encode(event) + b"\n\n"


#: Frames a stream holds for a slow socket before it stops reading its feed (which then lets it
#: go as too far behind: the client resumes from its cursor).
MAX_BUFFERED = 1000


class EventStream:
    """The handler. Each stream has a reader task that takes what the feed has into a buffer
    and a writer (the handler) that sends the whole buffer in one write: when the feed hands out
    a burst, every client gets it in one send, not one per event. The stream ends when the feed's
    iterator ends (the feed closing, or letting a lagging client go) or the client goes away."""

    def __init__(self, feed: PhaseFeed | None, heartbeat: float, *, what: str = "") -> None:
        self.feed = feed  # None: every request answers 503 (this worker does not serve it)
        self.what = what or "the event stream"
        self.heartbeat = heartbeat
        # Every stream gets the same event objects: encode each once, not once per client.
        self._encoded: dict[int, tuple[Event, bytes]] = {}

    def _data(self, event: Event) -> bytes:
        hit = self._encoded.get(id(event))
        if hit is not None and hit[0] is event:
            return hit[1]
        data = encode(event)
        if len(self._encoded) >= 4096:
            del self._encoded[next(iter(self._encoded))]  # the oldest: dicts keep insertion order
        self._encoded[id(event)] = (event, data)  # holding the event keeps its id unique
        return data

    def frame(self, cursor: str, event: Event) -> bytes:
        return b"id: " + cursor.encode() + b"\ndata: " + self._data(event) + b"\n\n"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        after = parse_events_query(request.query) or request.headers.get("Last-Event-ID") or None
        if after is not None and ("\n" in after or "\r" in after or len(after) > 1024):
            raise InvalidCursor("cursor must be one line of at most 1024 characters")
        if self.feed is None:
            raise Unavailable(f"{self.what} is not served by this worker")
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
        buffer: list[bytes] = []
        ready = asyncio.Event()  # the buffer has frames, or the reader ended
        room = asyncio.Event()  # the buffer has room again

        async def read() -> None:
            try:
                async for cursor, event in stream:
                    buffer.append(self.frame(cursor, event))
                    ready.set()
                    if len(buffer) >= MAX_BUFFERED:
                        room.clear()
                        await room.wait()
            finally:
                ready.set()

        reader = asyncio.create_task(read())
        try:
            while True:
                if not buffer and not reader.done():
                    try:
                        async with asyncio.timeout(self.heartbeat):
                            await ready.wait()  # cancelling this wait loses nothing
                    except TimeoutError:
                        await response.write(KEEPALIVE)
                        continue
                ready.clear()
                if buffer:
                    out = b"".join(buffer)
                    buffer.clear()
                    room.set()
                    await response.write(out)
                elif reader.done():
                    reader.result()  # re-raise what ended the feed, if anything did
                    return
        finally:
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
