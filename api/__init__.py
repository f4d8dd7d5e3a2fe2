"""runstream's HTTP API: ``create_api`` (aiohttp), its ports, its errors and its OpenAPI document.

The Python client is ``api.client`` (httpx), imported on demand so the server does not load it;
the ``runstream runs`` commands built on it are ``agents.cli.runs``.
"""

from api.app import PREFIX, create_api
from api.errors import (
    INTERNAL_MESSAGE,
    ApiError,
    BadRequest,
    Conflict,
    CursorExpired,
    Forbidden,
    Gone,
    InvalidCursor,
    NotFound,
    PayloadTooLarge,
    ServerError,
    Unauthorized,
    Unavailable,
    Unreachable,
    error_for_status,
)
from api.openapi import openapi_document
from api.ports import (
    ApiDeps,
    IdSource,
    Local,
    Owners,
    PhaseFeed,
    Refused,
    Remote,
    Route,
    Unsettled,
    Written,
)
from api.server import JsonRunner

__all__ = [
    "INTERNAL_MESSAGE",
    "PREFIX",
    "ApiDeps",
    "ApiError",
    "BadRequest",
    "Conflict",
    "CursorExpired",
    "Forbidden",
    "Gone",
    "IdSource",
    "InvalidCursor",
    "JsonRunner",
    "Local",
    "NotFound",
    "Owners",
    "PayloadTooLarge",
    "PhaseFeed",
    "Refused",
    "Remote",
    "Route",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "Unsettled",
    "Written",
    "create_api",
    "error_for_status",
    "openapi_document",
]
