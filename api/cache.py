"""Read-your-writes: the run states this API process produced, until the materializer has them.

The materializer applies events asynchronously, so right after a write the ``RunSource`` may
still hold the older state. The API keeps the reducer's result of each of its own writes in a
bounded LRU and, on a read, picks the newer of (cached, source) with :func:`newer`. Guarantee:
a client that wrote through one API process reads its write back from that process; another
process sees it once the materializer applied it (eventual).
"""

from __future__ import annotations

from collections import OrderedDict

from events import RunState

__all__ = ["DEFAULT_CAPACITY", "WriteCache", "newer"]

DEFAULT_CAPACITY = 10_000


def newer(cached: RunState | None, source: RunState | None) -> RunState | None:
    """The newer of the two states of one run.

    The source wins once it has applied the cached state's last event (it has caught up), or
    when its revision (``seq``) is higher (a phase change this process did not make). Otherwise
    the cached state is ahead.
    """
    if cached is None:
        return source
    if source is None:
        return cached
    last = cached.recent_ids[-1] if cached.recent_ids else None
    if (last is not None and source.has_seen(last)) or source.seq > cached.seq:
        return source
    return cached


class WriteCache:
    """A bounded LRU of run id → state produced by this process. Not thread-safe (one loop)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._states: OrderedDict[str, RunState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def get(self, run_id: str) -> RunState | None:
        return self._states.get(run_id)

    def put(self, state: RunState) -> None:
        """Remember ``state`` (the newest one this process wrote), evicting the oldest entry."""
        run_id = state.run.id
        self._states[run_id] = state
        self._states.move_to_end(run_id)
        if len(self._states) > self.capacity:
            self._states.popitem(last=False)

    def forget(self, run_id: str) -> None:
        """Drop ``run_id`` (the source caught up with it)."""
        self._states.pop(run_id, None)
