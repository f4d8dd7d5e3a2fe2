"""How long the broker may hold a fetch of the worker's consumer: for latency while records come
rarely, for batches while they come often.

A fetch comes back as soon as the broker has a record for it (``fetch_min_bytes`` 1), else after
``fetch_max_wait_ms``. That is what an idle partition wants: a record reaches the worker one
broker round trip after it was appended. Under load it is what costs the most: every record or
two is a fetch of its own, and each fetch is a request the broker serves, a response Faust's
consumer thread parses and hands to the event loop, and a turn of the materializer, for all
the partitions the consumer reads. On a 2-core machine at bench_latency's (d) load (20 runs in
flight and 2,000 events/s of others) the worker spent 78 % of a core, much of it per fetch, and
an edge's time went mostly to waiting for a busy CPU.

So the worker looks at how many records its materializer took in the last tick, and while that
is ``BUSY_RATE`` records a second or more, the broker holds a fetch until it has ``BUSY``'s
bytes or ``BUSY``'s wait passed: a record waits at most 2 ms more at the broker, and each fetch
brings the records of that while. Below ``LIGHT_RATE`` (half of it: no flapping at the edge),
fetches return at once again. Measured with a fixed setting in bench_latency (d): the worker
78 % → 64 % of a core, p50 of an edge 6.1-6.9 → 5.6 ms, p95 13.3-17.6 → 10.5 ms.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.app import FETCH_MAX_WAIT_MS

__all__ = ["BUSY", "BUSY_RATE", "LIGHT", "LIGHT_RATE", "FetchPolicy", "FetchWait"]


@dataclass(frozen=True, slots=True)
class FetchWait:
    """What a fetch asks of the broker: return once ``min_bytes`` are there, or after
    ``max_wait_ms``."""

    min_bytes: int
    max_wait_ms: int


#: Records come rarely: a fetch returns with the first record (why it waits 50 ms at most when
#: none comes is told at ``agents.app.FETCH_MAX_WAIT_MS``).
LIGHT = FetchWait(min_bytes=1, max_wait_ms=FETCH_MAX_WAIT_MS)
#: Records come often: a fetch waits up to 2 ms for 64 KiB of them.
BUSY = FetchWait(min_bytes=64 << 10, max_wait_ms=2)
#: Records a second taken by the materializer from which fetches batch, and below which they
#: stop batching again.
BUSY_RATE = 1000.0
LIGHT_RATE = BUSY_RATE / 2


class FetchPolicy:
    """Chooses :data:`LIGHT` or :data:`BUSY` from the count of records taken so far, observed
    at every tick of the worker (``agents.materializer_service``). Pure: the caller applies it."""

    def __init__(self, *, busy_rate: float = BUSY_RATE, light_rate: float = LIGHT_RATE) -> None:
        self.busy_rate = busy_rate
        self.light_rate = light_rate
        self.wait = LIGHT
        self.rate = 0.0  # records/s over the last observation
        self._last: tuple[int, float] | None = None

    def observe(self, records: int, now: float) -> FetchWait:
        """``records``: records taken since the worker started; ``now``: a monotonic clock."""
        last, self._last = self._last, (records, now)
        if last is None or now <= last[1]:
            return self.wait
        self.rate = (records - last[0]) / (now - last[1])
        if self.wait is LIGHT and self.rate >= self.busy_rate:
            self.wait = BUSY
        elif self.wait is BUSY and self.rate < self.light_rate:
            self.wait = LIGHT
        return self.wait
