"""Serving the API: an ``AppRunner`` whose protocol errors are JSON too.

aiohttp answers a request it cannot parse (a request line or header above its limits, a broken
request) before any middleware runs, with a plain-text body and an ERROR traceback in the log.
``JsonRunner`` swaps in a request handler that answers those with ``{"message": ...}`` (status
kept, 400 for a malformed request) and logs one warning line without a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web, web_protocol, web_server
from aiohttp.http_exceptions import HttpProcessingError

from api.errors import INTERNAL_MESSAGE

__all__ = ["JsonRunner"]

log = logging.getLogger("runstream.api")


class _JsonErrorHandler(web_protocol.RequestHandler):
    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        text = exc.message if isinstance(exc.message, str) and exc.message else "bad request"
        log.warning("malformed HTTP request", extra={"status": status, "error": text[:200]})
        body = {"message": text[:500] if status < 500 else INTERNAL_MESSAGE}
        resp = web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
        resp.force_close()
        return resp


class _JsonErrorServer(web_server.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class JsonRunner(web.AppRunner):
    """``web.AppRunner`` with JSON answers to malformed requests."""

    async def _make_server(self) -> web_server.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer
        return server
