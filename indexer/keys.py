"""Object keys of the index dumps, built in one place.

A dump is ``<prefix>index/dumps/<20-digit number>.rsix``. Numbers only grow (the next is the
newest existing plus one, chosen under the dump lock), and are zero-padded so that the text
order of the keys, which is the order object storage lists them in, is their age.
"""

from __future__ import annotations

__all__ = ["DUMP_SUFFIX", "dump_key", "dumps_prefix", "parse_dump_key"]

DUMP_SUFFIX = ".rsix"
_WIDTH = 20


def dumps_prefix(prefix: str = "") -> str:
    """The key prefix under which every dump lives (ends with ``/``)."""
    return f"{prefix}index/dumps/"


def dump_key(number: int, prefix: str = "") -> str:
    """Key of dump ``number`` (0 ≤ number < 10**20)."""
    if not 0 <= number < 10**_WIDTH:
        raise ValueError(f"dump number {number} out of range")
    return f"{dumps_prefix(prefix)}{number:0{_WIDTH}d}{DUMP_SUFFIX}"


def parse_dump_key(key: str, prefix: str = "") -> int | None:
    """The dump number in ``key``, or None when ``key`` is not a dump key (e.g. a stray object)."""
    head = dumps_prefix(prefix)
    if not key.startswith(head) or not key.endswith(DUMP_SUFFIX):
        return None
    digits = key[len(head) : -len(DUMP_SUFFIX)]
    if len(digits) != _WIDTH or not digits.isdigit():
        return None
    return int(digits)
