"""A growable sorted vector of uint32 slot numbers: the runs of one group, in id order."""

from __future__ import annotations

import sys

import numpy as np
import numpy.typing as npt

__all__ = ["Postings"]

U32 = np.uint32


class Postings:
    """Sorted distinct uint32 values with spare capacity at the end.

    The buffer may be a view into a larger array shared with other groups (after a load); that is
    safe because nothing is written past ``n`` without first reallocating a private buffer.
    """

    __slots__ = ("buf", "n")

    def __init__(self, values: npt.NDArray[np.uint32] | None = None) -> None:
        self.buf: npt.NDArray[np.uint32] = values if values is not None else np.empty(0, dtype=U32)
        self.n = len(self.buf)

    def view(self) -> npt.NDArray[np.uint32]:
        """The values, ascending (a view: valid until the next insert)."""
        return self.buf[: self.n]

    def last(self) -> int:
        return int(self.buf[self.n - 1])

    def insert(self, value: int) -> None:
        """Insert ``value``, which must not be present. Amortized O(1) when it is the largest."""
        n = self.n
        if n == len(self.buf):
            grown = np.empty(n + (n >> 2) + 4, dtype=U32)
            grown[:n] = self.buf[:n]
            self.buf = grown
        buf = self.buf
        if n == 0 or buf[n - 1] < value:
            buf[n] = value
        else:
            # Runs arrive out of order across partitions: shift the tail right by one.
            pos = int(np.searchsorted(buf[:n], value))
            buf[pos + 1 : n + 1] = buf[pos:n].copy()
            buf[pos] = value
        self.n = n + 1

    def shift(self, delta: int) -> None:
        """Add ``delta`` to every value (when the index's base id moves down)."""
        self.buf[: self.n] += U32(delta)

    def own_bytes(self) -> int:
        """Bytes of a private buffer (0 for a view into a shared array) plus object overhead."""
        private = self.buf.base is None
        return sys.getsizeof(self) + (self.buf.nbytes if private else 0) + 112
