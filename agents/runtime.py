"""Process-wide tuning of the worker and the offline commands."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import sys
import time
from collections.abc import Callable

__all__ = ["SWITCH_INTERVAL", "TRIM_EVERY", "HeapTrimmer", "tune_gc"]

#: Generation-0 threshold. The materializer allocates several small objects per event and keeps
#: tens of thousands of run states alive; with CPython's default (700) the cyclic collector keeps
#: rescanning them, which halves throughput (measured: 51k → 111k events/s through
#: PartitionMaterializer). Run states hold no reference cycles, so reference counting frees them;
#: the collector only has to catch rare cycles, and a higher threshold still bounds that garbage.
GC_THRESHOLDS = (100_000, 50, 100)

#: Seconds a thread may hold the GIL while another waits for it (CPython's default: 5 ms). A
#: checkpoint encodes its data files in a thread (``datamanager.manager``); with the default,
#: every time the event loop wants the GIL back meanwhile it waits up to 5 ms, and an event
#: applied during a checkpoint paid that several times (the edge-latency bursts of issue 23).
#: At 0.5 ms the loop gets it back ten times sooner; the encoding thread loses a little to the
#: extra switches.
SWITCH_INTERVAL = 0.0005


def tune_gc() -> None:
    """Raise the collector's thresholds (see ``GC_THRESHOLDS``), move what is already alive —
    modules, the loaded state — out of the collector's way with ``gc.freeze()``, and shorten the
    GIL's switch interval (see ``SWITCH_INTERVAL``)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()


#: Seconds between two returns of freed heap memory to the system, at most.
TRIM_EVERY = 5.0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    fn = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if fn is None:
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn  # type: ignore[no-any-return]


class HeapTrimmer:
    """Hands the heap's free pages back to the system after runs went cold.

    A run that goes cold (``partition.active``) leaves its objects' memory free inside the C
    heap: glibc keeps free chunks for reuse and returns to the system only the top of the heap,
    so the worker's RSS keeps the high-water mark of its hot runs, spread thin among the
    long-lived bytes of the cold ones (measured: 1.2 KB more RSS per active run than with the
    pages given back). ``malloc_trim(0)`` gives back every whole free page (``madvise``); it
    takes 1–2.5 ms for a worker of 150 MB, in a thread (ctypes releases the GIL), at most every
    ``TRIM_EVERY`` seconds and only when runs went cold since the last time. The heap's lock is
    held meanwhile, so a ``malloc`` of the event loop may wait that long, every few seconds at
    most. Where the C library has no ``malloc_trim`` it does nothing."""

    def __init__(
        self, every: float = TRIM_EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._trim = _malloc_trim()
        self._every, self._clock = every, clock
        self._pending = False
        self._last = clock()
        self.trims = 0

    async def after_cooling(self, moved: int) -> None:
        """Called after each cooling pass with the runs it moved."""
        self._pending = self._pending or moved > 0
        now = self._clock()
        if not self._pending or self._trim is None or now - self._last < self._every:
            return
        self._pending, self._last = False, now
        await asyncio.to_thread(self._trim, 0)
        self.trims += 1
