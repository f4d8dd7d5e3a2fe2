"""Apply latency of a waiting write while checkpoints run: the old agent (each checkpoint awaited
inside the apply loop) against the background checkpoint, in the same process.

One ``PartitionOwner`` over the real datamanager (the local stack's etcd and S3) and an in-memory
log; writes arrive open-loop at ``--rate`` per second, each registered with ``expect`` and timed
until its future resolves; ``--prefill`` runs are applied and checkpointed first. Prints p50 / p99 /
max of both modes and the ratio of their p99. Needs ``deploy/local up`` and its environment
(``eval "$(deploy/local env)"``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.resources import Resources
from agents.runtime import tune_gc
from events import Event, encode, format_run_id
from partition.owner import OwnerConfig, PartitionOwner
from tests.fakes_owner import FakeHooks, FakeLog
from tests.harness import make_settings
from tests.unit.test_events_support import created, ev, task


def creation(i: int) -> Event:
    return ev(created(task("a"), task("b", "a")), run_id=format_run_id(i))


async def measure(mode: str, args: argparse.Namespace) -> dict[str, float]:
    env = os.environ
    s3 = env["RUNSTREAM_STORAGE"]  # deploy/local env: s3://<bucket>?endpoint=...
    s = make_settings(
        uuid.uuid4().hex[:8],
        env["RUNSTREAM_KAFKA_BOOTSTRAP"],
        env["RUNSTREAM_ETCD_ENDPOINT"],
        s3,
        partitions=1,
        s3_access_key=env["RUNSTREAM_S3_ACCESS_KEY"],
        s3_secret_key=env["RUNSTREAM_S3_SECRET_KEY"],
    )
    resources = Resources(s)
    log = FakeLog()
    cfg = OwnerConfig(
        topic=s.topic_events,
        phases_topic=s.topic_phases,
        tasks_topic=s.topic_tasks,
        dlq_topic=s.topic_dlq,
        checkpoint_interval=args.interval,
    )
    owner = PartitionOwner(
        0,
        config=cfg,
        datamanager=await resources.datamanager(),
        reader=log,
        sender=log,
        hooks=FakeHooks(),
    )
    await owner.load()
    offset = 0
    for i in range(1, args.prefill + 1):
        await owner.handle(offset, encode(creation(i)), None)
        offset += 1
    await owner.checkpoint()

    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    latencies: list[float] = []

    async def agent() -> None:  # the Faust agent's loop, with either checkpoint rule
        nonlocal offset
        while True:
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < 2000:
                batch.append(queue.get_nowait())
            for raw in batch:
                if raw is None:
                    return
                await owner.handle(offset, raw, None)
                offset += 1
            if mode == "background":
                await owner.after_batch()
            elif owner.maybe_checkpoint() is not None:
                await owner.checkpoint()  # awaited in the loop: nothing applied meanwhile

    async def write(i: int) -> None:
        e = creation(i)
        (fut,) = owner.expect([e.id])
        t0 = time.perf_counter()
        queue.put_nowait(encode(e))
        await fut
        latencies.append(time.perf_counter() - t0)

    loop_task = asyncio.ensure_future(agent())
    writes = []
    start, i = time.perf_counter(), args.prefill
    while time.perf_counter() - start < args.seconds:
        i += 1
        writes.append(asyncio.ensure_future(write(i)))
        await asyncio.sleep(max(0.0, start + (i - args.prefill) / args.rate - time.perf_counter()))
    await asyncio.gather(*writes)
    queue.put_nowait(None)
    await loop_task
    await owner.close()
    await resources.close()
    latencies.sort()
    n = len(latencies)
    return {
        "writes": n,
        "p50_ms": latencies[n // 2] * 1000,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000,
        "max_ms": latencies[-1] * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=1500, help="writes per second")
    ap.add_argument("--seconds", type=float, default=15, help="seconds of load per mode")
    ap.add_argument("--prefill", type=int, default=20_000, help="runs applied before the load")
    ap.add_argument("--interval", type=float, default=2.0, help="checkpoint interval (s)")
    args = ap.parse_args()
    tune_gc()  # as the worker does
    got: dict[str, Any] = {}
    for mode in ("inline", "background"):
        got[mode] = r = asyncio.run(measure(mode, args))
        print(
            f"{mode:<11} {r['writes']:>7,} writes  p50 {r['p50_ms']:7.2f} ms"
            f"  p99 {r['p99_ms']:7.2f} ms  max {r['max_ms']:7.2f} ms"
        )
    ratio = got["inline"]["p99_ms"] / max(got["background"]["p99_ms"], 1e-9)
    print(f"p99 ratio inline / background: {ratio:.0f}x")


if __name__ == "__main__":
    main()
