"""Floors and percentiles the benches share: a bare Kafka record's round trip through the same
broker (the least any edge can cost), the percentile every bench prints, and a yardstick of the
host's speed at the worker's own kind of work (:func:`cpu_yardstick`)."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from tqdm import tqdm

__all__ = ["cpu_yardstick", "kafka_floor", "pct"]


def pct(values: list[float], p: float) -> float:
    """The ``p``-th percentile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def cpu_yardstick(runs: int = 300, repeat: int = 9) -> float:
    """This host's speed at the worker's own kind of work, events a second: decode + apply of a
    fixed stream (``bench_events``' stream of ``runs`` runs) in one thread, the collector off, the
    best of ``repeat`` passes after one to warm up. Not a target: the figure to compare machines
    and sessions by. Hosts differ, and one host's speed varies from day to day (issue 23's stops
    measured the same code's closed-loop edges at 2,600-3,200 a second one day, 1,100-1,600 the
    next); a bench run whose yardstick reads half of another's ran every CPU-bound figure about
    half as fast."""
    import gc

    from bench.bench_events import decode_apply, make_stream

    stream = make_stream(runs)
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # the interpreter's speed, not the collector's timing
    try:
        decode_apply(stream)
        best = float("inf")
        for _ in range(repeat):
            started = time.perf_counter()
            decode_apply(stream)
            best = min(best, time.perf_counter() - started)
    finally:
        if enabled:
            gc.enable()
    return len(stream) / best


async def kafka_floor(bootstrap: str, n: int, *, progress: bool = False) -> list[float]:
    """Round trips (ms) of a bare record (acks=all, linger 0) produced and consumed on a topic of
    its own, the consumer's fetch wait 50 ms."""
    topic = f"bench-floor-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="latest", fetch_max_wait_ms=50)  # fmt: skip
    await producer.start()
    await consumer.start()
    await asyncio.sleep(1.0)  # assigned, positioned at the end
    out = []
    try:
        for i in tqdm(range(n), desc="floor", unit="rec", file=sys.stderr, disable=not progress):
            sent = time.perf_counter()
            await producer.send_and_wait(topic, str(i).encode())
            async for msg in consumer:
                if msg.value == str(i).encode():
                    break
            out.append((time.perf_counter() - sent) * 1000)
    finally:
        await producer.stop()
        await consumer.stop()
    return out
