"""What turns of a busy event loop cost a record on its way through aiokafka, and what
runstream's workarounds (``agents.quirks``) save: ``send_promptly`` on the producer side,
``getmany_promptly`` and ``fetch_promptly`` on the reader's.

On a busy worker every step of a record's way waits its turn on the event loop (the worker's
``runstream_event_loop_lag_seconds``), so the number of turns a path takes multiplies the loop's
lag. Here a loop is kept busy on purpose: ``--busy`` tasks each run ``--slice`` ms of CPU and
hand the loop back, so each turn of the loop costs about ``busy × slice`` ms. Three measures,
each way alternating with the others (``--rounds``):

1. **Append**: from ``send_and_wait``'s call until it returns (``acks=all``, idempotent, one
   record at a time) with aiokafka's sender routine, then with ``quirks.send_promptly`` (the
   request written one turn after the record was added, not three).
2. **Hand-over**: a record produced on that loop and consumed back on it, the consumer waiting
   with aiokafka's ``getmany`` (its fetch's end reaches the caller through two
   ``asyncio.wait``), then with ``quirks.getmany_promptly``.
3. **Stream**: records produced by another process every ``--gap`` ms (what the worker's
   reader sees: executors and producers elsewhere), read on the busy loop, each timed from its
   send to its hand-over: with ``getmany``, ``getmany_promptly``, and ``getmany_promptly`` on a
   consumer with ``quirks.fetch_promptly`` (the next fetch written as the records are taken, not
   three turns after the last fetch returned: a record that reaches the broker in between waits
   for it).

Needs the local stack's Kafka (``deploy/local up``). Usage::

    .venv/bin/python bench/bench_loop_turns.py [--records 150] [--busy 3] [--slice 1] [--gap 10]

Measured on a 2-core machine on 2026-12-07 (the defaults; nothing else running)::

    load average 1.30 1.55 1.64 (2 cores); a turn of the loop ≈ 3 × 1 ms = 3 ms
    append: send_and_wait's call until it returned (acks=all)
      aiokafka send_and_wait (baseline)    n=300   p50  24.99  p90  25.31  p99  27.40 ms  (8.3 turns at p50)
      quirks.send_promptly                 n=300   p50  18.97  p90  19.41  p99  19.54 ms  (6.3 turns at p50)
    hand-over: a record sent here until the consumer returned it
      aiokafka getmany (baseline)          n=300   p50  34.40  p90  34.89  p99  40.59 ms  (11.5 turns at p50)
      quirks.getmany_promptly              n=300   p50  25.13  p90  25.44  p99  31.23 ms  (8.4 turns at p50)
    stream: a record from another process every 10 ms, from its send until handed over here
      aiokafka getmany (baseline)          n=300   p50  42.46  p90  56.75  p99  60.48 ms  (14.2 turns at p50)
      quirks.getmany_promptly              n=300   p50  26.89  p90  34.82  p99  37.42 ms  (9.0 turns at p50)
      + quirks.fetch_promptly              n=300   p50  24.12  p90  30.55  p99  32.89 ms  (8.0 turns at p50)

two turns less per append, three per hand-over, one more (and a shorter tail) for a reader of
a stream of records.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from tqdm import tqdm

from agents import quirks
from bench.floors import pct

#: the producer of the stream measure, in a process of its own: a record every ``gap`` seconds,
#: its value the wall-clock time of its send call.
_STREAM_PRODUCER = r"""
import asyncio, sys, time
from aiokafka import AIOKafkaProducer

async def main(bootstrap, topic, n, gap):
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks="all")
    await p.start()
    for _ in range(n):
        await p.send(topic, str(time.time()).encode(), partition=0)
        await asyncio.sleep(gap)
    await p.flush()
    await p.stop()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
"""


async def _busy(stop: asyncio.Event, slice_s: float) -> None:
    """Runs ``slice_s`` seconds of CPU, hands the loop back, again, until ``stop``."""
    while not stop.is_set():
        t = time.perf_counter()
        while time.perf_counter() - t < slice_s:
            pass
        await asyncio.sleep(0)


class _Busy:
    """``busy`` tasks keeping the loop busy while the block runs."""

    def __init__(self, busy: int, slice_s: float) -> None:
        self._busy, self._slice = busy, slice_s
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> None:
        self._tasks = [asyncio.create_task(_busy(self._stop, self._slice)) for _ in range(self._busy)]  # fmt: skip

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def _new_topic(bootstrap: str) -> str:
    topic = f"bench-turns-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, str(time.time()).encode(), partition=0)  # made now
    finally:
        await producer.stop()
    return topic


async def append(bootstrap: str, prompt: bool, args: argparse.Namespace) -> list[float]:
    """ms from each ``send_and_wait`` call until it returned."""
    topic = await _new_topic(bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    if prompt:
        quirks.send_promptly(producer)
    await producer.start()
    out: list[float] = []
    try:
        await producer.send_and_wait(topic, b"warm", partition=0)
        async with _Busy(args.busy, args.slice / 1000):
            label = "quirks.send_promptly" if prompt else "aiokafka send_and_wait"
            for _ in tqdm(range(args.records), desc=label, unit="rec", file=sys.stderr):
                await asyncio.sleep(0.003)
                t = time.perf_counter()
                await producer.send_and_wait(topic, b"x", partition=0)
                out.append((time.perf_counter() - t) * 1000)
    finally:
        await producer.stop()
    return out


async def hand_over(bootstrap: str, prompt: bool, args: argparse.Namespace) -> list[float]:
    """ms from each send call until the consumer's call returned its record."""
    topic = await _new_topic(bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    out: list[float] = []
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        async with _Busy(args.busy, args.slice / 1000):
            label = "quirks.getmany_promptly" if prompt else "aiokafka getmany"
            for _ in tqdm(range(args.records), desc=label, unit="rec", file=sys.stderr):
                sent_at = 0.0

                async def send() -> None:
                    nonlocal sent_at
                    await asyncio.sleep(0.003)  # the consumer waits first, as the worker's reader
                    sent_at = time.perf_counter()
                    await producer.send_and_wait(topic, b"x", partition=0)

                sending = asyncio.create_task(send())
                while True:
                    if prompt:
                        got = await quirks.getmany_promptly(consumer, wait=1.0, max_records=100)
                    else:
                        got = await consumer.getmany(timeout_ms=1000, max_records=100)
                    if got:
                        break
                out.append((time.perf_counter() - sent_at) * 1000)
                await sending
    finally:
        await quirks.stop_despite_stray_cancel(consumer)
        await producer.stop()
    return out


async def stream(bootstrap: str, way: str, args: argparse.Namespace) -> list[float]:
    """ms from each record's send (in another process) until this loop's call returned it."""
    topic = await _new_topic(bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    out: list[float] = []
    try:
        if way == "fetch_promptly":
            await quirks.fetch_promptly(consumer)
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        async with _Busy(args.busy, args.slice / 1000):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _STREAM_PRODUCER, bootstrap, topic,
                str(args.records), str(args.gap / 1000),
            )  # fmt: skip
            bar = tqdm(total=args.records, desc=way, unit="rec", file=sys.stderr)
            while len(out) < args.records:
                if way == "getmany":
                    got = await consumer.getmany(timeout_ms=1000, max_records=1000)
                else:
                    got = await quirks.getmany_promptly(consumer, wait=1.0, max_records=1000)
                now = time.time()
                for records in got.values():
                    out += [(now - float(r.value)) * 1000 for r in records]
                    bar.update(len(records))
            bar.close()
            await proc.wait()
    finally:
        await quirks.stop_despite_stray_cancel(consumer)
    return out


def _print(label: str, ms: list[float], turn: float) -> None:
    print(f"  {label:<36} n={len(ms):<5} p50 {pct(ms, 50):6.2f}  p90 {pct(ms, 90):6.2f}  p99 {pct(ms, 99):6.2f} ms  ({pct(ms, 50) / turn:.1f} turns at p50)")  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    ways: list[tuple[str, str, Callable[[], Awaitable[list[float]]]]] = [
        ("append", "aiokafka send_and_wait (baseline)", lambda: append(args.kafka, False, args)),
        ("append", "quirks.send_promptly", lambda: append(args.kafka, True, args)),
        ("hand-over", "aiokafka getmany (baseline)", lambda: hand_over(args.kafka, False, args)),
        ("hand-over", "quirks.getmany_promptly", lambda: hand_over(args.kafka, True, args)),
        ("stream", "aiokafka getmany (baseline)", lambda: stream(args.kafka, "getmany", args)),
        ("stream", "quirks.getmany_promptly", lambda: stream(args.kafka, "promptly", args)),
        ("stream", "+ quirks.fetch_promptly", lambda: stream(args.kafka, "fetch_promptly", args)),
    ]
    results: dict[tuple[str, str], list[float]] = {(m, label): [] for m, label, _ in ways}
    for _ in range(args.rounds):
        for measure, label, run in ways:
            results[measure, label] += await run()
    load = os.getloadavg()
    turn = args.busy * args.slice
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores); a turn of the loop ≈ {args.busy} × {args.slice:g} ms = {turn:g} ms")  # fmt: skip
    shown = ""
    for measure, label in results:
        if measure != shown:
            shown = measure
            print(
                {
                    "append": "append: send_and_wait's call until it returned (acks=all)",
                    "hand-over": "hand-over: a record sent here until the consumer returned it",
                    "stream": f"stream: a record from another process every {args.gap:g} ms, "
                    "from its send until handed over here",
                }[measure]
            )
        _print(label, results[measure, label], turn)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--records", type=int, default=150, help="records per round and way")
    p.add_argument("--rounds", type=int, default=2, help="rounds, the ways alternating")
    p.add_argument("--busy", type=int, default=3, help="tasks keeping the loop busy")
    p.add_argument("--slice", type=float, default=1.0, help="ms of CPU each runs per turn")
    p.add_argument("--gap", type=float, default=10.0, help="ms between the stream's records")
    p.add_argument("--kafka", default=os.environ.get("RUNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    asyncio.run(main(p.parse_args()))
