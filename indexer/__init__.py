"""The compact run index: run id → group path, phase, result; listings; dumps to object storage."""

from indexer.cursor import decode_cursor, encode_cursor
from indexer.errors import (
    BadCursor,
    BadDump,
    BadGroup,
    BadLimit,
    ConflictingGroup,
    IndexerError,
    NoValidDump,
    QueryError,
    RunIdOutOfRange,
)
from indexer.groups import normalize_query_group, validate_group
from indexer.index import RunIndex
from indexer.model import DEFAULT_LIMIT, MAX_LIMIT, IndexStats, Order, Page, RunEntry

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "BadCursor",
    "BadDump",
    "BadGroup",
    "BadLimit",
    "ConflictingGroup",
    "IndexStats",
    "IndexerError",
    "NoValidDump",
    "Order",
    "Page",
    "QueryError",
    "RunEntry",
    "RunIdOutOfRange",
    "RunIndex",
    "decode_cursor",
    "encode_cursor",
    "normalize_query_group",
    "validate_group",
]
