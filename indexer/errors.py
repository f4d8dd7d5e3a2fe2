"""Errors of the indexer. ``IndexerError`` is the root; ``QueryError`` marks a caller's mistake.

The API maps every ``QueryError`` to 400 Bad Request with the error's message.
"""

from __future__ import annotations

__all__ = [
    "BadCursor",
    "BadDump",
    "BadGroup",
    "BadLimit",
    "ConflictingGroup",
    "IndexerError",
    "NoValidDump",
    "QueryError",
    "RunIdOutOfRange",
]


class IndexerError(Exception):
    """Root of every error raised by ``indexer``."""


class QueryError(IndexerError):
    """A query the caller got wrong (HTTP 400). Retrying the same query cannot help."""


class BadCursor(QueryError):
    """A pagination cursor that is not one this indexer produced, or was made for another order."""


class BadGroup(QueryError):
    """A group path that is not absolute, has an empty segment or a control character."""


class BadLimit(QueryError):
    """A negative page size."""


class ConflictingGroup(IndexerError):
    """An update names another group than the one the run was indexed under (a run never moves).

    Nothing is changed. It signals a producer bug; the agent should dead-letter the event.
    """


class RunIdOutOfRange(IndexerError):
    """A run id too far from the others for the dense columnar layout (span over 2**32 - 2)."""


class BadDump(IndexerError):
    """A dump that cannot be decoded: wrong magic, unknown version, truncated, checksum mismatch.

    Retrying the same bytes cannot help; a loader falls back to the previous dump.
    """


class NoValidDump(IndexerError):
    """Dumps exist but none of them is valid (each failure was logged)."""
