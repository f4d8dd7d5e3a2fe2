"""Errors of the ``events`` package, all under one root, :class:`EventsError`.

Nothing here does I/O, so no error says whether a retry can help: retrying the same input gives the
same error. ``BadRequest`` is the user-error class the API maps to 400.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["BadRequest", "CannotRecreate", "DecodeError", "DecodeReason", "EventsError"]


class EventsError(Exception):
    """Root of every error raised by ``events``."""


class DecodeReason(StrEnum):
    """Why bytes could not become events; the agent puts it beside the bytes in the dead letters."""

    INVALID_JSON = "invalid_json"
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_VERSION = "unsupported_version"
    OVERSIZE = "oversize"
    SCHEMA = "schema"

    def is_permanent(self) -> bool:
        """Always true today: decoding is pure, the same bytes fail the same way after a retry.

        ``unknown_type`` and ``unsupported_version`` may succeed after a *deploy* of a newer
        runstream, which is why the dead letters keep the original bytes.
        """
        return True


class DecodeError(EventsError):
    """Bytes that are not a valid event or commit. ``reason`` is machine readable."""

    def __init__(self, reason: DecodeReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class BadRequest(EventsError):
    """A request that cannot even form a run (no group, relative group, nothing to run...).

    ``str(err)`` is a message meant for the user (the API's 400 body).
    """


class CannotRecreate(BadRequest):
    """A run that cannot be recreated; ``reason`` says why (setuperror, not finished, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"run cannot be restarted: {reason}")
        self.reason = reason
