"""The active runs of one partition, kept small: the runs that move are objects, the others bytes.

A run is active from its creation until it reaches a final phase, which for a CI run means
minutes or hours during which it moves a few times (a task claimed, started, ended) and sits
still in between. Held as objects (the run, its config, its tasks), an active 10-task run costs
the worker 15–20 KB; stored, the same state is a few KB of JSON and 600 bytes once compressed.
So ``ActiveRuns`` keeps:

* **hot** runs as ``RunState`` objects, in the order they last changed: those changed within the
  last ``cold_after`` seconds, at most ``hot_max`` of them;
* **cold** runs as their stored JSON (``events.codec.encode_state``), zstd-compressed, behind
  the time of their last progress and the number of their tasks running or held (10 bytes:
  what the stuck gauges count without decoding them), one ``bytes`` per run and nothing else
  beside its id.

**A dictionary of the partition's own runs.** The runs of one CI look alike (the same pipelines,
task names, environment keys), and zstd compresses a small document far better with a
dictionary of what such documents share: a 10-task run's 3.8 KB of JSON takes about 600 bytes
alone and about 110 with a dictionary. Once ``TRAIN_AFTER`` runs went cold, their JSON trains a
``DICT_SIZE`` dictionary (zstd's trainer, in a thread: tens of milliseconds, once per partition
owned), used for every run that goes cold from then on; the runs compressed before it are
compressed again with it, in slices. The dictionary lives only in this process' memory, like the
bytes it serves (storage holds plain JSON), so nothing else depends on it. A frame says which
dictionary it needs (its dictionary id; 0 for none), so every run decodes whichever way it went.

``get`` of a cold run decodes it and makes it hot again (tens of microseconds, once per run
that wakes up; the reducer always works on objects, so applying stays as it was). ``cool``,
called by the owner's timer, moves the runs that went still to the cold side in slices of the
event loop (``partition.slices``), so no record waits behind it. A run that goes cold unchanged
since it was last decoded keeps the bytes it was decoded from: nothing is encoded twice.

It is a ``MutableMapping[str, RunState]``; the materializer uses it as it used a dict.
"""

from __future__ import annotations

import asyncio
import struct
import sys
from collections.abc import Iterable, Iterator, MutableMapping

import zstandard

from events.advance import GRAPHS
from events.codec import decode_state, encode_state
from events.state import RunState
from partition.decisions import busy_tasks, last_progress
from partition.slices import Slices

__all__ = ["COLD_AFTER", "DICT_SIZE", "HOT_MAX", "TRAIN_AFTER", "ActiveRuns", "add_counts"]

#: Seconds without a change after which a run goes cold.
COLD_AFTER = 10.0
#: Hot runs a partition keeps at most (the runs changed least recently go cold first).
HOT_MAX = 2048
#: Runs that went cold before the compression dictionary is trained from them.
TRAIN_AFTER = 256
#: The compression dictionary's size, bytes.
DICT_SIZE = 16 * 1024
#: A cold run's bytes begin with its last progress (ms since the epoch) and how many of its tasks
#: are running or held (``partition.decisions.busy_tasks``, at most 65,535).
_HEAD = struct.Struct(">qH")


def add_counts(parts: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """The sum of a scan's parts of (runs, tasks) counts (``ActiveRuns.quiet_count_parts``)."""
    runs = tasks = 0
    for n_runs, n_tasks in parts:
        runs += n_runs
        tasks += n_tasks
    return runs, tasks


def _frame(raw: bytes) -> memoryview:
    """The zstd frame in a cold run's bytes."""
    return memoryview(raw)[_HEAD.size :]


def _dictionary_of(raw: bytes) -> int:
    """The id of the dictionary a cold run's bytes were compressed with; 0 for none."""
    return int(zstandard.get_frame_parameters(_frame(raw)).dict_id)


class ActiveRuns(MutableMapping[str, RunState]):
    """Run id → state of a partition's active runs (see the module docstring)."""

    def __init__(
        self,
        states: dict[str, RunState] | None = None,
        *,
        cold_after: float = COLD_AFTER,
        hot_max: int = HOT_MAX,
        tick: float = 1.0,
        train_after: int = TRAIN_AFTER,
    ) -> None:
        self._hot: dict[str, RunState] = dict(states or {})  # least recently changed first
        self._changed: dict[str, int] = dict.fromkeys(self._hot, 0)  # run id → tick of change
        self._cold: dict[str, bytes] = {}  # run id → _HEAD + zstd JSON
        self._clean: dict[str, bytes] = {}  # hot runs unchanged since decoded: their cold bytes
        self._tick = 0
        self._idle_ticks = max(1, round(cold_after / tick))
        self._hot_max = hot_max
        self._zc = zstandard.ZstdCompressor(level=1)
        self._plain = self._zd = zstandard.ZstdDecompressor()
        self._dict_id = 0  # the trained dictionary's id, 0 until there is one
        self._samples: list[bytes] | None = [] if train_after > 0 else None  # JSON to train on
        self._train_after = train_after

    def _unpack(self, raw: bytes) -> RunState:
        """The state held in ``raw``, with the dictionary its frame names (or none)."""
        zd = self._zd if self._dict_id and _dictionary_of(raw) else self._plain
        return decode_state(zd.decompress(_frame(raw)))

    def _pack(self, doc: bytes, head: bytes) -> bytes:
        """``doc`` compressed, behind ``head`` (``_HEAD``): one exact-size ``bytes``
        (zstandard's own keep the whole compress bound allocated, 4 KB for a 600-byte result)."""
        return head + self._zc.compress(doc)

    @property
    def dictionary(self) -> int:
        """The id of the compression dictionary in use; 0 while there is none."""
        return self._dict_id

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
        raw = self._cold.pop(run_id, None)
        if raw is None:
            return default
        state = self._unpack(raw)
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
        raw = self._cold.pop(run_id, None)
        if raw is None:
            return default
        return self._unpack(raw)

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
        unpack = self._unpack
        head = _HEAD.unpack_from
        out.extend(unpack(raw) for raw in self._cold.values() if head(raw)[0] <= cut_ms)
        return out

    def quiet_count(self, cut_ms: int) -> tuple[int, int]:
        """How many runs :meth:`quiet_since` would give, and how many of their tasks are running
        or held (``partition.decisions.busy_tasks``), without decoding a cold run: what the
        stuck gauges read every few seconds, when the runs of a CI waiting on long tasks may
        all be quiet."""
        return add_counts(self.quiet_count_parts(cut_ms, sys.maxsize))

    def quiet_count_parts(self, cut_ms: int, chunk: int) -> Iterator[tuple[int, int]]:
        """:meth:`quiet_count` in parts of at most ``chunk`` runs each (sum them), so that a
        caller may let the records apply between two parts: a scan of 250,000 active runs is
        70 ms and more. The runs are those active when the scan began (a list of them is taken
        first); a run that changed meanwhile is counted as it was or as it is."""
        hot = list(self._hot.values())
        cold = list(self._cold.values())
        for start in range(0, len(hot), chunk):
            runs = tasks = 0
            for s in hot[start : start + chunk]:
                if last_progress(s) <= cut_ms:
                    runs += 1
                    tasks += busy_tasks(s)
            yield runs, tasks
        head = _HEAD.unpack_from
        for start in range(0, len(cold), chunk):
            runs = tasks = 0
            for raw in cold[start : start + chunk]:
                since, busy = head(raw)
                if since <= cut_ms:
                    runs += 1
                    tasks += busy
            yield runs, tasks

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
            if raw is not None and self._dict_id and not _dictionary_of(raw):
                raw = None  # compressed before the dictionary: compressed again with it
            if raw is None:
                doc = encode_state(state)
                head = _HEAD.pack(last_progress(state), min(busy_tasks(state), 0xFFFF))
                raw = self._pack(doc, head)
                samples = self._samples
                if samples is not None:
                    samples.append(doc)
            self._cold[run_id] = raw
            GRAPHS.pop(run_id, None)  # its config is no longer held for the reducer's graph
            moved += 1
            await slices.step()  # records applied meanwhile may change ``hot``: looked at again
        if self._samples is not None and len(self._samples) >= self._train_after:
            await self._train()
        return moved

    async def _train(self) -> None:
        """Train the dictionary on the samples (in a thread), then compress the runs that went
        cold before it again with it, in slices. A failed training (too few distinct samples)
        leaves the runs compressed alone, for good."""
        samples: list[bytes | bytearray | memoryview] = list(self._samples or ())
        self._samples = None
        try:
            trained = await asyncio.to_thread(zstandard.train_dictionary, DICT_SIZE, samples)
        except zstandard.ZstdError:
            return
        del samples
        self._zc = zstandard.ZstdCompressor(level=1, dict_data=trained)
        self._zd = zstandard.ZstdDecompressor(dict_data=trained)
        self._dict_id = trained.dict_id()
        slices = Slices()
        for run_id in list(self._cold):
            raw = self._cold.get(run_id)
            if raw is not None and not _dictionary_of(raw):
                doc = self._plain.decompress(_frame(raw))
                self._cold[run_id] = self._pack(doc, raw[: _HEAD.size])
            await slices.step()
