"""A background load for the benches: other runs' events appended at a steady rate, from a
process of its own.

Other runs' producers are other programs, usually on other machines. Run in the bench's own
process they shared its event loop with the executors being measured, so every edge measured
there waited behind their turns of the loop (generating, encoding and sending some 2,000 events a
second: about a fifth of the bench's CPU under ``bench_latency``'s case (d)) as no real executor
does. In a process of their own they still take this machine's CPU, as they should: the worker
and the broker pay for the load they bring.

The events are generated and encoded before the load starts (``PREPARED_SECONDS`` of them) and
sent as the workload's producers send them (a commit per partition per turn, ``acks=all``), so that
while a case is measured the load costs this machine what sending it costs, not what making it
up costs (generating and encoding in the loop took about 28 % of a core for 2,000 events/s).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import multiprocessing
import time
from typing import Any

__all__ = ["Background"]

#: Seconds of events generated and encoded before the load starts (more are made as it goes).
PREPARED_SECONDS = 60
#: Seconds the load runs before :meth:`Background.start` returns (the measurement starts then).
WARM_UP = 1.0


class Background:
    """Appends the workload's events (``agents.workload``; other runs, ids from ``first_run_id``)
    to ``topic`` at ``rate`` events/s, in a child process, from :meth:`start` until :meth:`stop`."""

    def __init__(self, bootstrap: str, topic: str, rate: int, *, first_run_id: int) -> None:
        self.rate = rate
        self.first_run_id = first_run_id
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with a running loop
        self._stop = ctx.Event()
        self._acked: Any = ctx.Value("q", 0)
        self._highest: Any = ctx.Value("q", 0)
        self._proc = ctx.Process(
            target=_main,
            args=(bootstrap, topic, rate, first_run_id, self._stop, self._acked, self._highest),
            daemon=True,
            name="bench-background",
        )
        self._from = 0
        self.started = 0.0

    @property
    def next_run_id(self) -> int:
        """The first run id past every run this load appended to (where another load's runs
        start: the same ids would make its events duplicates, judged at a fraction of the
        cost)."""
        return max(self.first_run_id, self._highest.value + 1)

    @property
    def pid(self) -> int | None:
        """The child's process id once started."""
        return self._proc.pid

    async def start(self, within: float = 60.0) -> None:
        """Start the child, wait until its first events are acknowledged, then ``WARM_UP`` s."""
        self._proc.start()
        deadline = time.monotonic() + within
        while self.rate > 0 and self._acked.value == 0:
            if not self._proc.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the background load did not start (no event acknowledged)")
            await asyncio.sleep(0.05)
        await asyncio.sleep(WARM_UP)
        self._from, self.started = self._acked.value, time.perf_counter()

    async def stop(self) -> float:
        """Stops; returns the achieved rate (events acknowledged a second) since :meth:`start`."""
        stopped, acked = time.perf_counter(), self._acked.value - self._from
        self._stop.set()
        await asyncio.to_thread(self._proc.join, 30)
        if self._proc.is_alive():
            self._proc.kill()
        return acked / (stopped - self.started) if stopped > self.started else 0.0


def _main(*args: Any) -> None:
    asyncio.run(_produce(*args))


async def _produce(
    bootstrap: str, topic: str, rate: int, first_run_id: int, stop: Any, acked: Any, highest: Any
) -> None:
    from aiokafka import AIOKafkaProducer

    from agents.runtime import tune_gc
    from agents.workload import iter_events
    from events.codec import encode
    from events.ids import format_run_id
    from partition.placement import partition_for

    tune_gc()
    producer = AIOKafkaProducer(  # as agents.producer.EventProducer's
        bootstrap_servers=bootstrap,
        client_id="bench-background",
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
        max_batch_size=1 << 20,
        max_request_size=8 << 20,
    )
    await producer.start()
    try:
        partitions = len(await producer.partitions_for(topic) or ())
        source = iter_events(seed=3, runs=10**7, first_run_id=first_run_id)

        def prepare(n: int) -> list[tuple[int, int, bytes]]:
            """The next ``n`` events as (partition, run id, envelope bytes)."""
            return [
                (partition_for(e.run_id, partitions), int(e.run_id), encode(e))
                for e in itertools.islice(source, n)
            ]

        # Generated and encoded before the load starts, so that the load's own CPU is the
        # sending: the events are the workload's all the same, in commits per partition.
        prepared = collections.deque(prepare(rate * PREPARED_SECONDS))
        pending: set[asyncio.Future[Any]] = set()

        def count(n: int, fut: asyncio.Future[Any]) -> None:
            pending.discard(fut)
            if not fut.cancelled() and fut.exception() is None:
                with acked.get_lock():
                    acked.value += n

        t0, sent, top = time.perf_counter(), 0, 0
        while not stop.is_set():
            due = int((time.perf_counter() - t0) * rate) - sent
            if due > 0 and len(pending) < 200:
                if len(prepared) < due:
                    prepared.extend(prepare(due))  # a load that outlasts what was prepared
                commits: dict[int, list[tuple[int, bytes]]] = {}
                for _ in range(due):
                    p, run, value = prepared.popleft()
                    commits.setdefault(p, []).append((run, value))
                sent += due
                for p, evs in commits.items():
                    top = max(top, *(run for run, _ in evs))
                    value = b"[" + b",".join(v for _, v in evs) + b"]"
                    key = format_run_id(evs[0][0]).encode()
                    fut = await producer.send(topic, value, key=key, partition=p)
                    pending.add(fut)
                    fut.add_done_callback(functools.partial(count, len(evs)))
                highest.value = top
            await asyncio.sleep(0.005)
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        await producer.stop()
