"""Process-wide tuning of the worker and the offline commands."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import os
import sys
import time
from collections.abc import Callable

from prometheus_client import Histogram

__all__ = [
    "LAG_INTERVAL",
    "LOOP_LAG",
    "SWITCH_INTERVAL",
    "TRIM_EVERY",
    "TRIM_GROWTH",
    "TRIM_GROWTH_GAP",
    "HeapTrimmer",
    "resident_bytes",
    "tune_gc",
    "tune_malloc",
    "watch_loop_lag",
]

#: The collector's thresholds. With CPython's default (700) the cyclic collector kept rescanning
#: the run states a worker holds, which halved throughput (51k → 111k events/s through
#: PartitionMaterializer at 100,000). Since shapes are untracked (``events.model``: frozen, no
#: cycles, freed by reference counting), the collector no longer sees them, and the threshold
#: barely matters for throughput (applying a replay's records: 146,200 events/s at 700,
#: 149,500 at 100,000). It does for pauses: a young collection walks every tracked object
#: allocated since the last one and still alive, so at 100,000 a collection paused the worker's
#: event loop for 20-30 ms, once or twice a minute under load (bench_latency's (d): p99.9 of an
#: edge); at 10,000 the longest pauses were 4-7 ms, then 2-5 ms once the partition owners held
#: offsets rather than Faust's events and no send futures (``partition.owner``,
#: ``partition.outbox.Sends``). At 2,000 each young collection walks a fifth as many objects: in
#: four pairs of bench_latency runs (d, HTTP; 18,000 edges each) the HTTP report's p99 read
#: 24.5-28.5 ms against 28.0-34.0 ms at 10,000, (d)'s 14.3-16.6 against 13.0-27.2 ms.
GC_THRESHOLDS = (2_000, 20, 50)

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


#: Seconds between two returns of freed heap memory after runs went cold, at most.
TRIM_EVERY = 5.0
#: Growth of the resident set since the last return of freed memory that triggers the next.
#: Measured under 2,000 events/s of runs that end (bench/bench_rss.py; runs that end go cold
#: rarely, so this is what trims): at 32 MiB the worker carried up to 32 MiB of free heap pages
#: between two trims (a trim by hand gave back 26.7 MB of a 158.8 MB worker), and the RSS slope
#: per finished run read 1.9–2.1 KB.
TRIM_GROWTH = 8 * 2**20
#: Seconds between two trims for growth, at least (a catch-up grows the heap fast).
TRIM_GROWTH_GAP = 1.0

# glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: Allocations of this size or more get pages of their own, given back when freed.
MMAP_THRESHOLD = 128 * 1024


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return None if name is None else ctypes.CDLL(name)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    libc = _libc()
    fn = None if libc is None else getattr(libc, "malloc_trim", None)
    if fn is None:
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn  # type: ignore[no-any-return]


def tune_malloc() -> bool:
    """One heap for every thread, and large blocks on pages of their own (glibc; elsewhere
    nothing). Returns whether glibc took both settings.

    Measured on a worker under 2,000 events/s of runs that end (``/proc/<pid>/smaps``): the
    threads that encode checkpoints and write data files each got a heap of their own (glibc
    makes up to 8 per core), and those heaps kept 60 MB of freed, scattered chunks after three
    minutes, growing with every run; glibc also raises its mmap threshold each time a large
    block is freed, so the data files' buffers moved into those heaps. One heap
    (``M_ARENA_MAX`` 1) that ``HeapTrimmer`` trims, and a fixed ``M_MMAP_THRESHOLD``, keep the
    resident set flat (the GIL already serializes the threads' work, so they hardly contend for
    the heap's lock). Called before any thread starts."""
    libc = _libc()
    mallopt = None if libc is None else getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, 1)) and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def resident_bytes() -> int:
    """This process' resident set (``/proc/self/statm``); 0 where there is none."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class HeapTrimmer:
    """Hands the heap's free pages back to the system.

    Freed memory stays inside the C heap: glibc keeps free chunks for reuse and returns to the
    system only the top of the heap, so a worker's resident set keeps the high-water mark of
    whatever it held for a while — the objects of its hot runs (``partition.active``), a
    checkpoint's buffers — spread thin among the long-lived bytes of the cold runs (measured:
    1.2 KB more RSS per active run, and a resident set that grew by 4 KB per finished run,
    without it). ``malloc_trim(0)`` gives back every whole free page (``madvise``), in a
    thread (ctypes releases the GIL): after runs went cold, at most every ``every`` seconds,
    and whenever the resident set grew by ``growth`` bytes since the last time (at most once a
    ``TRIM_GROWTH_GAP``). It takes
    1–15 ms for a worker of 120–300 MB; the heap's lock is held meanwhile, so a ``malloc`` of
    the event loop may wait that long. Where the C library has no ``malloc_trim`` it does
    nothing."""

    def __init__(
        self,
        every: float = TRIM_EVERY,
        growth: int = TRIM_GROWTH,
        clock: Callable[[], float] = time.monotonic,
        resident: Callable[[], int] = resident_bytes,
    ) -> None:
        self._trim = _malloc_trim()
        self._every, self._growth = every, growth
        self._clock, self._resident = clock, resident
        self._pending = False
        self._last = clock()
        self._baseline = resident()
        self.trims = 0

    async def tick(self, moved: int) -> None:
        """Called about once a second with the runs the cooling pass moved."""
        if self._trim is None:
            return
        self._pending = self._pending or moved > 0
        now = self._clock()
        since = now - self._last
        grown = since >= TRIM_GROWTH_GAP and self._resident() - self._baseline >= self._growth
        if not grown and not (self._pending and since >= self._every):
            return
        self._pending, self._last = False, now
        await asyncio.to_thread(self._trim, 0)
        self._baseline = self._resident()
        self.trims += 1


#: Seconds between two samples of the event loop's lag (:func:`watch_loop_lag`).
LAG_INTERVAL = 0.02

LOOP_LAG = Histogram(
    "runstream_event_loop_lag_seconds",
    "How late a timer of the worker's event loop fired (sampled every 20 ms): the wait every "
    "request, record and send of this worker pays at each step, for the loop or for a core",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


async def watch_loop_lag(
    interval: float = LAG_INTERVAL, observe: Callable[[float], object] = LOOP_LAG.observe
) -> None:
    """Sample, for ever, how late a ``interval``-second sleep of the event loop wakes up.

    Every step of the worker's work (an HTTP request read, a fetch's records applied, an
    acknowledgement) waits its turn on one event loop, behind every callback ready before it,
    and the loop itself waits for a core when the machine is busy: this is that wait, the part
    of each millisecond a pipeline feels that no single stage shows. About 50 wake-ups a second
    (a few microseconds each)."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        await asyncio.sleep(interval)
        observe(max(0.0, loop.time() - asked - interval))
