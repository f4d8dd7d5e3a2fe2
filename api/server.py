"""Serving the API: an ``AppRunner`` whose protocol errors are JSON too.

aiohttp answers a request it cannot parse (a request line or header above its limits, a broken
request) before any middleware runs, with a plain-text body and an ERROR traceback in the log.
``JsonRunner`` swaps in a request handler that answers those with ``{"message": ...}`` (status
kept, 400 for a malformed request) and logs one warning line without a traceback.

aiohttp offers no hook for that answer, so this is the API's one aiohttp quirk:
:func:`json_errors_for_unparsed_requests`, kept here because ``api`` imports nothing of
``agents`` (where Faust's and aiokafka's quirks live, ``agents.quirks``).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web, web_protocol, web_server
from aiohttp.http_exceptions import HttpProcessingError

from api.errors import INTERNAL_MESSAGE

__all__ = ["AIOHTTP_VERIFIED", "JsonRunner", "json_errors_for_unparsed_requests"]

log = logging.getLogger("runstream.api")


#: (lowest aiohttp version verified, first major version not verified) for
#: :func:`json_errors_for_unparsed_requests`: verified on 3.14.5; ``tests/unit/test_quirks.py``
#: fails outside the range, and its behaviour tests fail when a minor version breaks the quirk.
AIOHTTP_VERIFIED = ("3.14", "4")


class _JsonErrorHandler(web_protocol.RequestHandler):
    # Nothing added to aiohttp's slots: a handler aiohttp made can take this class.
    __slots__ = ()

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
        handler = super().__call__()  # aiohttp's, with the application's handler arguments
        handler.__class__ = _JsonErrorHandler
        return handler


def json_errors_for_unparsed_requests(server: web_server.Server) -> web_server.Server:
    """Works around aiohttp answering a request it cannot parse (a request line or header
    above its limits, a broken request) before any middleware runs, in plain text and with an
    ERROR traceback in the log, with no hook to change that: makes ``server`` (the one an
    ``AppRunner`` made for the application) hand each connection a request handler whose
    ``handle_error`` answers those in JSON (``_JsonErrorHandler``). Returns ``server``.

    Swaps classes rather than building aiohttp's objects itself: the server and its handlers
    are made by aiohttp, with its own arguments; only ``handle_error`` (public, undocumented)
    is overridden. The caller must reach the server through ``AppRunner._make_server``
    (:class:`JsonRunner`), the one private name used.

    Issue: https://github.com/aio-libs/aiohttp/issues/3287 (open). Code (the installed 3.14.5
    has the same two files as v3.14.3):
    https://github.com/aio-libs/aiohttp/blob/v3.14.3/aiohttp/web_runner.py#L415-L422
    (``AppRunner._make_server``), https://github.com/aio-libs/aiohttp/blob/v3.14.3/aiohttp/web_server.py#L74-L91
    (``Server.__call__``); ``RequestHandler.handle_error`` in aiohttp/web_protocol.py.
    """
    server.__class__ = _JsonErrorServer
    return server


class JsonRunner(web.AppRunner):
    """``web.AppRunner`` with JSON answers to malformed requests."""

    async def _make_server(self) -> web_server.Server:
        # aiohttp's only way to the server it makes for the application (private, see above).
        return json_errors_for_unparsed_requests(await super()._make_server())
