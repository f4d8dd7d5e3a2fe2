"""The active runs of one partition, kept small: the runs that move are objects, the others bytes.

A run is active from its creation until it reaches a final phase, which for a CI run means
minutes or hours during which it moves a few times (a task claimed, started, ended) and sits
still in between. Held as objects (the run, its config, its tasks), an active 10-task run costs
the worker 15–20 KB; stored, the same state is a few KB of JSON and 600 bytes once compressed.
So ``ActiveRuns`` keeps:

* **hot** runs as ``RunState`` objects, in the order they last changed: those changed within the
  last ``cold_after`` seconds, at most ``hot_max`` of them;
* **cold** runs as their stored JSON (``events.codec.encode_state``), zstd-compressed, with the
  time of their last progress (what ``stuck`` asks without decoding them).

``get`` of a cold run decodes it and makes it hot again (tens of microseconds, once per run
that wakes up; the reducer always works on objects, so applying stays as it was). ``cool``,
called by the owner's timer, moves the runs that went still to the cold side in slices of the
event loop (``partition.slices``), so no record waits behind it. A run that goes cold unchanged
since it was last decoded keeps the bytes it was decoded from: nothing is encoded twice.

It is a ``MutableMapping[str, RunState]``; the materializer uses it as it used a dict.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping

import zstandard

from events.advance import GRAPHS
from events.codec import decode_state, encode_state
from events.state import RunState
from partition.decisions import last_progress
from partition.slices import Slices

__all__ = ["COLD_AFTER", "HOT_MAX", "ActiveRuns"]

#: Seconds without a change after which a run goes cold.
COLD_AFTER = 10.0
#: Hot runs a partition keeps at most (the runs changed least recently go cold first).
HOT_MAX = 2048


class ActiveRuns(MutableMapping[str, RunState]):
    """Run id → state of a partition's active runs (see the module docstring)."""

    def __init__(
        self,
        states: dict[str, RunState] | None = None,
        *,
        cold_after: float = COLD_AFTER,
        hot_max: int = HOT_MAX,
        tick: float = 1.0,
    ) -> None:
        self._hot: dict[str, RunState] = dict(states or {})  # least recently changed first
        self._changed: dict[str, int] = dict.fromkeys(self._hot, 0)  # run id → tick of change
        self._cold: dict[str, tuple[bytes, int]] = {}  # run id → (zstd JSON, last progress ms)
        self._clean: dict[str, bytes] = {}  # hot runs unchanged since decoded: their cold bytes
        self._tick = 0
        self._idle_ticks = max(1, round(cold_after / tick))
        self._hot_max = hot_max
        self._zc = zstandard.ZstdCompressor(level=1)
        self._zd = zstandard.ZstdDecompressor()

    # ------------------------------------------------------------------- the mapping
    def __getitem__(self, run_id: str) -> RunState:
        state = self.get(run_id)
        if state is None:
            raise KeyError(run_id)
        return state

    def get(self, run_id: str, default: RunState | None = None) -> RunState | None:  # type: ignore[override]
        state = self._hot.get(run_id)
        if state is not None:
            return state
        cold = self._cold.pop(run_id, None)
        if cold is None:
            return default
        raw = cold[0]
        state = decode_state(self._zd.decompress(raw))
        self._hot[run_id] = state
        self._changed[run_id] = self._tick
        self._clean[run_id] = raw
        return state

    def __setitem__(self, run_id: str, state: RunState) -> None:
        hot = self._hot
        if hot.pop(run_id, None) is None:
            self._cold.pop(run_id, None)
        hot[run_id] = state
        self._changed[run_id] = self._tick
        if self._clean:
            self._clean.pop(run_id, None)

    def __delitem__(self, run_id: str) -> None:
        if self.pop(run_id, None) is None:
            raise KeyError(run_id)

    def pop(self, run_id: str, default: object = None) -> object:  # type: ignore[override]
        state = self._hot.pop(run_id, None)
        if state is not None:
            del self._changed[run_id]
            self._clean.pop(run_id, None)
            return state
        cold = self._cold.pop(run_id, None)
        if cold is None:
            return default
        return decode_state(self._zd.decompress(cold[0]))

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._hot or run_id in self._cold

    def __iter__(self) -> Iterator[str]:
        yield from list(self._hot)
        yield from list(self._cold)

    def __len__(self) -> int:
        return len(self._hot) + len(self._cold)

    # ------------------------------------------------------------------- hot and cold
    @property
    def hot(self) -> int:
        """How many runs are held as objects."""
        return len(self._hot)

    def quiet_since(self, cut_ms: int) -> list[RunState]:
        """The states of the runs whose last progress (``partition.decisions.last_progress``)
        is at or before ``cut_ms``; cold runs are decoded only when they are."""
        out = [s for s in self._hot.values() if last_progress(s) <= cut_ms]
        zd = self._zd
        out.extend(
            decode_state(zd.decompress(raw))
            for raw, since in self._cold.values()
            if since <= cut_ms
        )
        return out

    async def cool(self) -> int:
        """Move the runs that did not change for ``cold_after`` (and the oldest beyond
        ``hot_max``) to the cold side, in slices of the event loop; returns how many went."""
        self._tick += 1
        cut = self._tick - self._idle_ticks
        hot, changed = self._hot, self._changed
        slices = Slices()
        moved = 0
        while hot:
            run_id = next(iter(hot))
            if changed[run_id] > cut and len(hot) <= self._hot_max:
                break
            state = hot.pop(run_id)
            del changed[run_id]
            raw = self._clean.pop(run_id, None)
            if raw is None:
                # zstandard's bytes keep the whole compress bound allocated (4 KB for a 600-byte
                # result, measured): a copy holds only the bytes.
                raw = bytes(memoryview(self._zc.compress(encode_state(state))))
            self._cold[run_id] = (raw, last_progress(state))
            GRAPHS.pop(run_id, None)  # its config is no longer held for the reducer's graph
            moved += 1
            await slices.step()  # records applied meanwhile may change ``hot``: looked at again
        return moved
