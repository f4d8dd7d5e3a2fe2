"""Errors of the HTTP API, shared by the server and the client; ``ApiError`` is the root.

Each class carries its HTTP status. The server raises them in handlers (and maps the errors of
``events`` and ``indexer`` to them in one place, ``api.middleware``); the client raises the class
of the status it received, carrying the server's message. ``message`` is always safe to show a
user: a 500 says only ``internal server error``, the real cause stays in the server's log.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "INTERNAL_MESSAGE",
    "ApiError",
    "BadRequest",
    "Conflict",
    "CursorExpired",
    "Forbidden",
    "Gone",
    "InvalidCursor",
    "NotFound",
    "PayloadTooLarge",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "error_for_status",
]

#: The only message a 500 ever carries.
INTERNAL_MESSAGE = "internal server error"


class ApiError(Exception):
    """An HTTP error: ``status`` and a user-facing ``message``.

    Retrying can help only for 409 (re-read, then retry), 503 and 5xx in general.
    """

    default_status: ClassVar[int] = 500

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = self.default_status if status is None else status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.message!r})"

    @property
    def retriable(self) -> bool:
        """True when the same request may succeed later (conflicts and server-side failures)."""
        return self.status == 409 or self.status >= 500


class BadRequest(ApiError):
    """400: the request is wrong (a field, a query parameter, an action the run refuses)."""

    default_status = 400


class InvalidCursor(BadRequest):
    """400: an event-stream cursor that is malformed (raised by a ``PhaseFeed``)."""


class Unauthorized(ApiError):
    """401: a write without the configured API token."""

    default_status = 401


class Forbidden(ApiError):
    """403: a token without the scope the route needs (the message names it; docs/api.md,
    "Tokens and scopes")."""

    default_status = 403


class NotFound(ApiError):
    """404: an unknown run, task or route."""

    default_status = 404


class Conflict(ApiError):
    """409: the run changed since the revision the caller expected (a concurrent change won),
    or a creation's run id is already used (``code`` ``run_id_taken``)."""

    default_status = 409

    def __init__(self, message: str, *, status: int | None = None, code: str = "") -> None:
        super().__init__(message, status=status)
        self.code = code


class Gone(ApiError):
    """410: what the caller asked for is no longer retained."""

    default_status = 410


class CursorExpired(Gone):
    """410: an event-stream cursor older than what the log retains (raised by a ``PhaseFeed``)."""


class PayloadTooLarge(ApiError):
    """413: a request body above the configured size."""

    default_status = 413


class ServerError(ApiError):
    """5xx: the server failed; the message is generic by design."""

    default_status = 500


class Unavailable(ServerError):
    """503: not now, retry after ``retry_after`` seconds (agents catching up, a partition without
    a settled owner, a write whose apply did not come in time). The answer carries
    ``Retry-After``."""

    default_status = 503

    def __init__(self, message: str, *, status: int | None = None, retry_after: int = 1) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class Unreachable(ApiError):
    """No HTTP answer at all (connection refused, reset, timed out); raised by the client only.
    ``status`` is 0."""

    default_status = 0

    @property
    def retriable(self) -> bool:
        return True


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    503: Unavailable,
}


def error_for_status(status: int, message: str) -> ApiError:
    """The error of the class that goes with ``status`` (``ServerError`` for any 5xx,
    ``ApiError`` for any other status)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else ApiError
    return cls(message, status=status)
