"""The sorted group dictionary.

Group paths are checked by ``events.validate_group``, the one definition for creation, listing
and events (``/project/<id>/branch/<name>``); a listing prefix is checked by
``events.group.validate_group_prefix`` (``/``, ``/project``, a group path, a group path then a
type; a trailing ``/`` is dropped). Groups
get small integer ids (gid ≥ 1, in order of first appearance; 0 means "no run here" in the
columns). Beside the id table the dictionary keeps
the groups sorted by a key in which ``/`` sorts below every other character, so that every group
under a prefix, by whole segments, is one contiguous range found by two bisections:
``/a/b`` < ``/a/b/x`` < ``/a/b-c``.
"""

from __future__ import annotations

import bisect
import sys
from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt

from events import BadRequest, validate_group
from events.group import validate_group_prefix
from indexer.errors import BadGroup

__all__ = ["GroupDict", "checked_group", "checked_prefix"]

_SEP = "\x00"  # "/" in sort keys: below every character a valid path may contain
_AFTER_SEP = "\x01"


def checked_group(path: str) -> str:
    """``path`` if it is a valid group path (``events.validate_group``), else ``BadGroup``
    with that function's message."""
    try:
        return validate_group(path)
    except BadRequest as exc:
        raise BadGroup(str(exc)) from None


def checked_prefix(prefix: str) -> str:
    """``prefix`` made canonical if it is a valid listing prefix
    (``events.group.validate_group_prefix``), else ``BadGroup`` with that function's message."""
    try:
        return validate_group_prefix(prefix)
    except BadRequest as exc:
        raise BadGroup(str(exc)) from None


def sort_key(path: str) -> str:
    return path.replace("/", _SEP)


class GroupDict:
    """Group path ↔ gid, plus the sorted order for prefix ranges. Not thread-safe."""

    __slots__ = ("_gid_of", "_names", "_sorted_arr", "_sorted_gids", "_sorted_keys")

    def __init__(self, sorted_names: Iterable[str] = ()) -> None:
        """Start from groups already sorted by ``sort_key`` (as a dump stores them): gid i+1."""
        self._names: list[str] = ["", *sorted_names]
        self._gid_of = {name: gid for gid, name in enumerate(self._names) if gid}
        self._sorted_keys = [sort_key(n) for n in self._names[1:]]
        self._sorted_gids = list(range(1, len(self._names)))
        self._sorted_arr: npt.NDArray[np.uint32] | None = None
        if len(self._gid_of) != len(self._names) - 1 or self._sorted_keys != sorted(
            self._sorted_keys
        ):
            raise ValueError("group names must be distinct and sorted by sort_key")

    def __len__(self) -> int:
        return len(self._names) - 1

    def name(self, gid: int) -> str:
        return self._names[gid]

    @property
    def names(self) -> list[str]:
        """gid → name (index 0 is the empty placeholder). Do not mutate."""
        return self._names

    def gid(self, path: str) -> int | None:
        return self._gid_of.get(path)

    def add(self, path: str) -> int:
        """The gid of ``path``, adding it (validated) when new. Raises ``BadGroup``."""
        gid = self._gid_of.get(path)
        if gid is not None:
            return gid
        checked_group(path)
        gid = len(self._names)
        self._names.append(path)
        self._gid_of[path] = gid
        key = sort_key(path)
        pos = bisect.bisect_left(self._sorted_keys, key)
        self._sorted_keys.insert(pos, key)
        self._sorted_gids.insert(pos, gid)
        self._sorted_arr = None
        return gid

    def sorted_gids(self) -> npt.NDArray[np.uint32]:
        """Every gid, in sorted-path order."""
        if self._sorted_arr is None:
            self._sorted_arr = np.array(self._sorted_gids, dtype=np.uint32)
        return self._sorted_arr

    def under(self, prefix: str) -> tuple[int, int]:
        """Range [lo, hi) of sorted positions of the groups equal to or under canonical
        ``prefix`` (``/``: every group; ``/project``: every project's)."""
        key = "" if prefix == "/" else sort_key(prefix)
        lo = bisect.bisect_left(self._sorted_keys, key)
        hi = bisect.bisect_left(self._sorted_keys, key + _AFTER_SEP, lo)
        return lo, hi

    def select(self, prefixes: Iterable[str]) -> npt.NDArray[np.uint32] | None:
        """Sorted unique gids under any of ``prefixes`` (listing prefixes); None means all
        groups. Each prefix is one contiguous range of the sorted groups (two bisections), the
        root and a type level (``/project``) too.

        Raises ``BadGroup`` for a prefix that is not a valid listing prefix.
        """
        prefixes = list(prefixes)
        if len(prefixes) == 1:  # the common case: one contiguous range, already unique
            lo, hi = self.under(checked_prefix(prefixes[0]))
            return None if lo == 0 and hi == len(self) else self.sorted_gids()[lo:hi]
        ranges = [self.under(p) for p in {checked_prefix(p) for p in prefixes}]
        if not ranges or any(lo == 0 and hi == len(self) for lo, hi in ranges):
            return None
        arr = self.sorted_gids()
        parts = [arr[lo:hi] for lo, hi in ranges if hi > lo]
        if not parts:
            return np.zeros(0, dtype=np.uint32)
        return np.unique(np.concatenate(parts))

    def memory_bytes(self) -> int:
        """Approximate bytes held: strings, keys, lists and the dict."""
        return sum(self.memory_parts(sys.maxsize))

    def memory_parts(self, chunk: int) -> Iterator[int]:
        """:meth:`memory_bytes` in parts that each walk at most ``chunk`` paths or keys (their
        sum): a caller may let other work run between two parts. A group added meanwhile may be
        counted once, twice or not at all (keys are kept sorted: an insertion moves the rest)."""
        size = sys.getsizeof(self._names) + sys.getsizeof(self._gid_of)
        size += sys.getsizeof(self._sorted_keys) + sys.getsizeof(self._sorted_gids)
        size += 28 * len(self._sorted_gids)  # small ints above the cached range
        if self._sorted_arr is not None:
            size += self._sorted_arr.nbytes
        yield size
        for strings in (self._names, self._sorted_keys):
            for start in range(0, len(strings), chunk):
                yield sum(map(sys.getsizeof, strings[start : start + chunk]))
