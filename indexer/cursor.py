"""Opaque pagination cursors: base64url of a small versioned struct.

Layout (big-endian): version u8 (1) | order u8 (0 asc, 1 desc) | last run id u64.
The next page holds the runs after that id in that order (keyset pagination), so a page costs
the same however deep it is, and runs added meanwhile never shift the pages.
"""

from __future__ import annotations

import base64
import binascii
import struct

from indexer.errors import BadCursor
from indexer.model import Order

__all__ = ["decode_cursor", "encode_cursor"]

_FMT = struct.Struct(">BBQ")
_VERSION = 1


def encode_cursor(last_run_id: int, order: Order) -> str:
    """The cursor that continues a listing in ``order`` after run ``last_run_id``."""
    return _canon(_FMT.pack(_VERSION, 1 if order.is_desc() else 0, last_run_id))


def _canon(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, order: Order) -> int:
    """The last run id in ``cursor``. Raises ``BadCursor`` if it is malformed, of an unknown
    version, or was made for the other order."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, desc, last = _FMT.unpack(raw)
    except (binascii.Error, struct.error, ValueError) as exc:
        raise BadCursor(f"malformed cursor {cursor[:40]!r}") from exc
    if version != _VERSION or desc not in (0, 1) or last == 0 or _canon(raw) != cursor:
        raise BadCursor(f"unsupported cursor {cursor[:40]!r}")
    if bool(desc) != order.is_desc():
        raise BadCursor(f"cursor {cursor[:40]!r} was made for the other sort order")
    return int(last)
