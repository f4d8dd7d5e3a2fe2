"""Key rules shared by every adapter: validation and the non-recursive listing filter.

The object keys themselves are built by the packages that own them (e.g. ``datamanager.keys``);
this module only decides which keys are acceptable, so both adapters refuse the same ones.
"""

from __future__ import annotations

from ost.errors import InvalidKey

__all__ = ["DELIMITER", "MAX_KEY_BYTES", "check_key", "check_prefix", "directly_under"]

DELIMITER = "/"
# S3's own limit; a longer key would work on posix only and break portability.
MAX_KEY_BYTES = 1024


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise ``InvalidKey``.

    Refused: empty keys, a leading ``/`` (absolute), empty segments (``a//b``, trailing ``/``),
    ``.`` and ``..`` segments, NUL and other control characters, and keys over 1024 bytes.
    """
    if not key:
        raise InvalidKey(key, "empty key")
    _check_common(key)
    for segment in key.split(DELIMITER):
        if segment == "":
            raise InvalidKey(key, "empty path segment (leading, trailing or double '/')")
    return key


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a valid listing prefix (may be empty or end with ``/``)."""
    if prefix:
        _check_common(prefix)
        segments = prefix.split(DELIMITER)
        # The last segment is a partial name and may be empty (prefix ends with "/").
        if any(s == "" for s in segments[:-1]):
            raise InvalidKey(prefix, "empty path segment in prefix")
    return prefix


def _check_common(key: str) -> None:
    if key.startswith(DELIMITER):
        raise InvalidKey(key, "absolute keys are not allowed")
    if any(ord(c) < 0x20 or c == "\x7f" for c in key):
        raise InvalidKey(key, "NUL and control characters are not allowed")
    if any(s in (".", "..") for s in key.split(DELIMITER)):
        raise InvalidKey(key, "'.' and '..' segments are not allowed")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKey(key, f"longer than {MAX_KEY_BYTES} bytes")


def directly_under(prefix: str, key: str) -> bool:
    """True when ``key`` sits directly under ``prefix``: its remainder has no delimiter."""
    return DELIMITER not in key[len(prefix) :]
