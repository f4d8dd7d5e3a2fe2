"""Errors of the object storage port.

Adapters translate vendor errors (``OSError``, botocore) into these at the boundary, so no
caller ever sees a boto3 or OS exception. Every error says whether a retry can help.
"""

from __future__ import annotations

__all__ = ["InvalidKey", "NotExist", "OstError", "StorageUnavailable"]


class OstError(Exception):
    """Root of every object storage error. ``retriable`` tells whether retrying may succeed."""

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class NotExist(OstError):
    """The object does not exist (never retriable: it will not appear by itself)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"object {key!r} does not exist")
        self.key = key


class InvalidKey(OstError, ValueError):
    """The key or prefix is not acceptable (escapes the root, empty segment, NUL, ...)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"invalid object key {key!r}: {reason}")
        self.key = key
        self.reason = reason


class StorageUnavailable(OstError):
    """A transient I/O failure (network, throttling, 5xx, disk busy): a retry may succeed."""

    retriable = True
