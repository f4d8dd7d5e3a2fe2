"""The console: static pages at ``/ui/`` that drive the public HTTP API from a browser (issue 15).

The files live in ``api/ui/`` (package data), are read once when the application is built and
served from memory: no build step, nothing fetched at run time, no file system path taken from
a request. They hold no run data, so they are served without the API token (``api.middleware``
opens ``/ui`` and ``/ui/...``); every data call the page makes carries the token the user typed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from api.errors import NotFound

__all__ = ["UI_DIR", "UI_PREFIX", "add_console_routes", "console_paths", "is_console_path"]

UI_DIR = Path(__file__).resolve().parent / "ui"
UI_PREFIX = "/ui"

_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
# The page may talk to this worker only: no script, style or request goes anywhere else.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def is_console_path(path: str) -> bool:
    """True for ``/ui`` and everything under ``/ui/``."""
    return path == UI_PREFIX or path.startswith(UI_PREFIX + "/")


def _load() -> dict[str, tuple[bytes, str]]:
    files = {}
    for p in sorted(UI_DIR.iterdir()) if UI_DIR.is_dir() else ():
        kind = _TYPES.get(p.suffix)
        if p.is_file() and kind is not None:
            files[p.name] = (p.read_bytes(), kind)
    return files


def add_console_routes(router: web.UrlDispatcher) -> None:
    """``GET /ui`` → 308 to ``/ui/``; ``GET /ui/`` the page; ``GET /ui/{name}`` its files (404
    JSON for any other name)."""
    files = _load()

    def serve(name: str) -> web.Response:
        found = files.get(name)
        if found is None:
            raise NotFound(f"no console file {name[:80]!r}")
        body, kind = found
        return web.Response(body=body, content_type=kind, charset="utf-8", headers=_HEADERS)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect(f"{UI_PREFIX}/")

    async def index(request: web.Request) -> web.Response:
        return serve("index.html")

    async def file(request: web.Request) -> web.Response:
        return serve(request.match_info["name"])

    router.add_get(UI_PREFIX, redirect, allow_head=False)
    router.add_get(f"{UI_PREFIX}/", index, allow_head=False)
    router.add_get(f"{UI_PREFIX}/{{name}}", file, allow_head=False)


def console_paths() -> dict[str, Any]:
    """The console's operations, for the OpenAPI document."""
    page = {"description": "the file", "content": {"text/html": {"schema": {"type": "string"}}}}
    missing = {
        "description": "no such console file",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    return {
        UI_PREFIX: {
            "get": {
                "operationId": "consoleRedirect",
                "summary": "Redirect to the console at /ui/",
                "responses": {"308": {"description": "to /ui/"}},
            }
        },
        f"{UI_PREFIX}/": {
            "get": {
                "operationId": "console",
                "summary": "The console (static page; its data calls carry the API token)",
                "responses": {"200": page},
            }
        },
        f"{UI_PREFIX}/{{name}}": {
            "get": {
                "operationId": "consoleFile",
                "summary": "A static file of the console (script, style sheet)",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": page, "404": missing},
            }
        },
    }
