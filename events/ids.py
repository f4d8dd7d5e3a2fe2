"""Run ids: monotonic integers written as fixed-width decimal strings.

Run ids come from an etcd sequence (see datamanager), so they are dense and increasing. Their text
form is zero-padded to a fixed width so that text order is numeric order everywhere a run id is a
key (object keys, etcd keys, Kafka keys, cursors).
"""

from __future__ import annotations

__all__ = ["RUN_ID_WIDTH", "format_run_id", "is_run_id", "parse_run_id"]

RUN_ID_WIDTH = 16
_MAX = 10**RUN_ID_WIDTH - 1


def format_run_id(n: int) -> str:
    """Text form of run id ``n`` (1 ≤ n < 10**16). Raises ``ValueError`` outside that range."""
    if not 0 < n <= _MAX:
        raise ValueError(f"run id {n} out of range 1..{_MAX}")
    return f"{n:0{RUN_ID_WIDTH}d}"


def is_run_id(s: str) -> bool:
    """True when ``s`` is the canonical text form of a run id."""
    return len(s) == RUN_ID_WIDTH and s.isascii() and s.isdigit() and s != "0" * RUN_ID_WIDTH


def parse_run_id(s: str) -> int:
    """Inverse of :func:`format_run_id`. Raises ``ValueError`` on anything but the canonical form."""
    if not is_run_id(s):
        raise ValueError(f"invalid run id {s!r}: want {RUN_ID_WIDTH} decimal digits, not all zero")
    return int(s)
