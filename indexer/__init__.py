"""The compact run index: run id → group path, phase, result, name, counter and times; listings;
dumps to object storage."""

from indexer.cursor import decode_cursor, encode_cursor
from indexer.dump import FORMAT_VERSION, DumpHeader, Snapshot, decode, encode, read_header, snapshot
from indexer.dumper import Dumper, DumpLock, DumpPolicy, DumpResult
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
from indexer.index import RunIndex
from indexer.model import DEFAULT_LIMIT, MAX_LIMIT, IndexStats, Order, Page, RunEntry
from indexer.query import page_size
from indexer.store import DumpStore, LoadedDump
from indexer.verify import IndexDiff, compare

__all__ = [
    "DEFAULT_LIMIT",
    "FORMAT_VERSION",
    "MAX_LIMIT",
    "BadCursor",
    "BadDump",
    "BadGroup",
    "BadLimit",
    "ConflictingGroup",
    "DumpHeader",
    "DumpLock",
    "DumpPolicy",
    "DumpResult",
    "DumpStore",
    "Dumper",
    "IndexDiff",
    "IndexStats",
    "IndexerError",
    "LoadedDump",
    "NoValidDump",
    "Order",
    "Page",
    "QueryError",
    "RunEntry",
    "RunIdOutOfRange",
    "RunIndex",
    "Snapshot",
    "compare",
    "decode",
    "decode_cursor",
    "encode",
    "encode_cursor",
    "page_size",
    "read_header",
    "snapshot",
]
