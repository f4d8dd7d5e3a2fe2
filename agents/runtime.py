"""Process-wide tuning of the worker and the offline commands."""

from __future__ import annotations

import gc
import sys

__all__ = ["SWITCH_INTERVAL", "tune_gc"]

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
