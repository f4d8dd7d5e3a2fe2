"""What a turn of a busy event loop costs a record on its way through aiokafka, and what
``agents.quirks.getmany_promptly`` saves on the worker's reader.

On a busy worker every step of a record's way waits its turn on the event loop (the worker's
``runstream_event_loop_lag_seconds``), so the number of turns a path takes multiplies the loop's
lag. Here a loop is kept busy on purpose: ``--busy`` tasks each run ``--slice`` ms of CPU and
hand the loop back, so each turn of the loop costs about ``busy × slice`` ms. A record is
produced on that loop (``acks=1``, ``linger 0``) and consumed back on it by a consumer assigned
to the partition, waiting either with aiokafka's ``getmany`` (the baseline: the fetch task's end
reaches the caller through two ``asyncio.wait``) or with ``quirks.getmany_promptly`` (the fetch
wakes the waiter it returns with, and the waiter itself is awaited). It prints, for each, the
time from the send call until the consumer's call returned the record, and that time in turns
of the loop; the two alternate (``--rounds``).

Needs the local stack's Kafka (``deploy/local up``). Usage::

    .venv/bin/python bench/bench_loop_turns.py [--records 300] [--busy 3] [--slice 1]

Measured on a 2-core machine on 2026-12-07 (the defaults; nothing else running)::

    load average 1.17 1.46 1.71 (2 cores); a turn of the loop ≈ 3 × 1 ms = 3 ms
    aiokafka getmany (baseline)  n=300   p50  36.86  p90  41.28 ms  (12.3 turns of the loop at p50)
    quirks.getmany_promptly      n=300   p50  27.19  p90  32.41 ms  (9.1 turns of the loop at p50)

three turns less per record read, on every record the worker's reader waits for.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from tqdm import tqdm

from agents import quirks
from bench.floors import pct


async def _busy(stop: asyncio.Event, slice_s: float) -> None:
    """Runs ``slice_s`` seconds of CPU, hands the loop back, again, until ``stop``."""
    while not stop.is_set():
        t = time.perf_counter()
        while time.perf_counter() - t < slice_s:
            pass
        await asyncio.sleep(0)


async def measure(bootstrap: str, prompt: bool, records: int, busy: int, slice_s: float) -> list[float]:  # fmt: skip
    """ms from each send call until the consumer's call returned its record."""
    topic = f"bench-turns-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    out: list[float] = []
    try:
        await producer.send_and_wait(topic, b"first", partition=0)  # the topic exists now
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        tasks = [asyncio.create_task(_busy(stop, slice_s)) for _ in range(busy)]
        label = "quirks.getmany_promptly" if prompt else "aiokafka getmany"
        for _ in tqdm(range(records), desc=label, unit="rec", file=sys.stderr):
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
        stop.set()
        await asyncio.gather(*tasks)
        await quirks.stop_despite_stray_cancel(consumer)
        await producer.stop()
    return out


async def main(args: argparse.Namespace) -> None:
    results: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for prompt in (False, True):
            results[prompt] += await measure(args.kafka, prompt, args.records, args.busy, args.slice / 1000)  # fmt: skip
    load = os.getloadavg()
    turn = args.busy * args.slice
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores); a turn of the loop ≈ {args.busy} × {args.slice:g} ms = {turn:g} ms")  # fmt: skip
    for prompt, label in (
        (False, "aiokafka getmany (baseline)"),
        (True, "quirks.getmany_promptly"),
    ):
        ms = results[prompt]
        print(f"{label:<28} n={len(ms):<5} p50 {pct(ms, 50):6.2f}  p90 {pct(ms, 90):6.2f} ms  ({pct(ms, 50) / turn:.1f} turns of the loop at p50)")  # fmt: skip


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--records", type=int, default=150, help="records per round and way of waiting")  # fmt: skip
    p.add_argument("--rounds", type=int, default=2, help="rounds, the two ways alternating")
    p.add_argument("--busy", type=int, default=3, help="tasks keeping the loop busy")
    p.add_argument("--slice", type=float, default=1.0, help="ms of CPU each runs per turn")
    p.add_argument("--kafka", default=os.environ.get("RUNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    asyncio.run(main(p.parse_args()))
