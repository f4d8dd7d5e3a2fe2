"""The run-name dictionary: run name ↔ small integer id (nid ≥ 1; 0 = no name known).

Run names repeat (a project's config names its runs, so a few names cover most runs), so the
index stores a 4-byte id a run and each distinct name once.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

__all__ = ["NameDict"]


class NameDict:
    """Name ↔ nid, in order of first appearance. Not thread-safe."""

    __slots__ = ("_names", "_nid_of")

    def __init__(self, names: Iterable[str] = ()) -> None:
        """Start from ``names`` (as a dump stores them): nid i+1. Raises ``ValueError`` for a
        repeated or empty name."""
        self._names: list[str] = ["", *names]
        self._nid_of = {name: nid for nid, name in enumerate(self._names) if nid}
        if len(self._nid_of) != len(self._names) - 1 or "" in self._nid_of:
            raise ValueError("run names must be distinct and non-empty")

    def __len__(self) -> int:
        return len(self._names) - 1

    @property
    def names(self) -> list[str]:
        """nid → name (index 0 is the empty placeholder). Do not mutate."""
        return self._names

    def add(self, name: str) -> int:
        """The nid of ``name``, adding it when new; 0 for the empty name."""
        if not name:
            return 0
        nid = self._nid_of.get(name)
        if nid is None:
            nid = self._nid_of[name] = len(self._names)
            self._names.append(name)
        return nid

    def memory_bytes(self) -> int:
        """Approximate bytes held: strings, the list and the dict."""
        return sum(self.memory_parts(sys.maxsize))

    def memory_parts(self, chunk: int) -> Iterator[int]:
        """:meth:`memory_bytes` in parts that each walk at most ``chunk`` names (their sum):
        a caller may let other work run between two parts. Names added meanwhile are counted
        if the walk has not passed their place yet."""
        names = self._names
        yield sys.getsizeof(names) + sys.getsizeof(self._nid_of)
        for start in range(0, len(names), chunk):
            part = names[start : start + chunk]
            yield sum(map(sys.getsizeof, part)) + 28 * len(part)  # small ints above the cache
