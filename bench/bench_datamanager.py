"""Datamanager figures on the real S3 server and etcd (issue 4).

1. Batched vs one object per entry: N small entries written by one datamanager checkpoint
   (a few data files + a manifest + one etcd swap) vs the same entries written as one S3 object
   each through the same ost adapter, in the same run. The per-object baseline writes a sample
   (``--baseline-sample``) with ``--baseline-concurrency`` writers and is extrapolated to N.
2. Checkpoint time for N changed runs: N new runs into an empty partition, N updates of
   random existing runs spread over a large partition (every block is touched), and N/100 such
   updates (every file is touched, few of its blocks: only those are decoded and compressed
   again).
3. Load time of a ``--snapshot-runs`` partition snapshot (cold: fresh DataManager, no cache).
4. Point-read latency p50/p99 (index cached after the first read of each file).

Run:  .venv/bin/python bench/bench_datamanager.py            (needs `deploy/local up`)
      .venv/bin/python bench/bench_datamanager.py --snapshot-runs 200000 --entries 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3
from tqdm import tqdm

import ost
from datamanager import DataManager, EtcdKv
from events import format_run_id
from ost.s3 import S3Storage

PHASES = [b"queued", b"running", b"finished", b"cancelled"]
RESULTS = [b"unknown", b"success", b"failed", b"stopped"]


def make_run(i: int, version: int, size: int) -> bytes:
    """A run-like JSON document of about ``size`` bytes (repetitive keys, some unique values)."""
    rid = format_run_id(i).encode()
    head = (
        b'{"id":"%s","name":"build-%d","counter":%d,"group":"/project/%06d/branch/main",'
        b'"phase":"%s","result":"%s","version":%d,"enqueue_time":"2026-11-28T02:17:41.%06dZ",'
        b'"annotations":{"commit":"%s"},"tasks":{'
        % (rid, i % 97, i, i % 5000, PHASES[i % 4], RESULTS[(i // 4) % 4], version, i % 999_999,
           os.urandom(10).hex().encode())
    )  # fmt: skip
    tasks = []
    n = 0
    while len(head) + sum(map(len, tasks)) + 2 < size:
        tasks.append(
            b'"%s":{"status":"%s","steps":%d},' % (os.urandom(6).hex().encode(), RESULTS[n % 4], n)
        )
        n += 1
    return head + b"".join(tasks).rstrip(b",") + b"}}"


def runs(lo: int, hi: int, version: int, size: int) -> dict[str, bytes]:
    return {format_run_id(i): make_run(i, version, size) for i in range(lo, hi)}


def chunks(lo: int, hi: int, step: int) -> Iterator[tuple[int, int]]:
    for a in range(lo, hi, step):
        yield a, min(hi, a + step)


async def per_object_baseline(
    store: ost.ObjectStorage, entries: dict[str, bytes], sample: int, concurrency: int
) -> float:
    """Seconds to write ``sample`` entries as one object each; returns seconds per entry."""
    items = list(entries.items())[:sample]
    sem = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(items), desc="one object per entry", unit="obj", leave=False)

    async def one(key: str, value: bytes) -> None:
        async with sem:
            await store.write(f"per-object/run/{key}", value)
            bar.update()

    t = time.perf_counter()
    await asyncio.gather(*(one(k, v) for k, v in items))
    elapsed = time.perf_counter() - t
    bar.close()
    return elapsed / len(items)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def main(args: argparse.Namespace) -> None:
    token = "b" + uuid.uuid4().hex[:10]
    bucket = f"bench-{token}"
    s3 = boto3.client(
        "s3", endpoint_url=args.s3_endpoint, aws_access_key_id=args.access_key,
        aws_secret_access_key=args.secret_key, region_name="us-east-1",
    )  # fmt: skip
    s3.create_bucket(Bucket=bucket)
    store = S3Storage(bucket, args.s3_endpoint, args.access_key, args.secret_key, "us-east-1")
    kv = EtcdKv(args.etcd, f"/bench/{token}/")
    dm = DataManager(store, kv, base="rundata", max_file_size=args.max_file_size)
    n, size = args.entries, args.entry_size
    print(f"S3 {args.s3_endpoint} bucket {bucket}; etcd {args.etcd}; {n:,} entries of ~{size} B")

    # 1 + 2a. N new entries in one checkpoint vs one object per entry.
    entries = runs(1, n + 1, 0, size)
    raw = sum(map(len, entries.values()))
    writer = await dm.open_partition("batched")
    t = time.perf_counter()
    m = await writer.checkpoint({"run": entries}, {}, {"runs.events/0": n})
    batched = time.perf_counter() - t
    files = m.files["run"]
    print(
        f"\n[1] batched: {n:,} entries ({raw / 1e6:.1f} MB raw) -> {len(files)} data file(s), "
        f"{sum(f.size for f in files) / 1e6:.1f} MB, in {batched:.2f} s ({n / batched:,.0f} entries/s)"
    )
    sample = min(args.baseline_sample, n)
    per_entry = await per_object_baseline(store, entries, sample, args.baseline_concurrency)
    extrapolated = per_entry * n
    how = "measured" if sample == n else f"extrapolated from a sample of {sample:,}"
    print(
        f"    one object per entry: {1 / per_entry:,.0f} objects/s with {args.baseline_concurrency} "
        f"concurrent writers -> {extrapolated:.1f} s for {n:,} ({how})"
    )
    print(f"    ratio (one object per entry / batched): {extrapolated / batched:,.0f}x")
    print(f"[2a] checkpoint of {n:,} new runs into an empty partition: {batched:.2f} s")
    del entries

    # 3. Build a large partition, 2b. update N random runs in it, then load it cold.
    total = args.snapshot_runs
    writer = await dm.open_partition("big")
    bar = tqdm(total=total, desc="building snapshot", unit="run", leave=False)
    for lo, hi in chunks(1, total + 1, args.build_batch):
        await writer.checkpoint({"run": runs(lo, hi, 0, size)}, {}, {"runs.events/1": hi})
        bar.update(hi - lo)
    bar.close()
    files = writer.manifest.files["run"]
    print(
        f"\n[3] partition 'big': {total:,} runs in {len(files)} data files, "
        f"{sum(f.size for f in files) / 1e6:.1f} MB"
    )
    picked = random.Random(7).sample(range(1, total + 1), min(n, total))
    changes = {format_run_id(i): make_run(i, 1, size) for i in picked}
    t = time.perf_counter()
    await writer.checkpoint({"run": changes}, {}, {"runs.events/1": total + n})
    updated = time.perf_counter() - t
    print(
        f"[2b] checkpoint of {len(changes):,} changed runs spread over {total:,} "
        f"(every block is touched): {updated:.2f} s"
    )
    # A busy partition's usual checkpoint: a few runs changed among many. Only the blocks the
    # changes fall into are decoded and compressed again (datamanager.datafile.merge_file).
    few = max(1, n // 100)
    picked = random.Random(8).sample(range(1, total + 1), min(few, total))
    changes = {format_run_id(i): make_run(i, 2, size) for i in picked}
    t = time.perf_counter()
    await writer.checkpoint({"run": changes}, {}, {"runs.events/1": total + n + few})
    updated = time.perf_counter() - t
    print(
        f"[2c] checkpoint of {len(changes):,} changed runs spread over {total:,} "
        f"(they touch every file, few of its blocks): {updated:.2f} s"
    )
    del changes

    cold = DataManager(store, EtcdKv(args.etcd, f"/bench/{token}/"), base="rundata")
    t = time.perf_counter()
    reader = await cold.open_partition("big")
    loaded = await reader.load("run")
    load_s = time.perf_counter() - t
    assert len(loaded) == total, (len(loaded), total)
    print(
        f"[3] cold load of the {total:,}-run snapshot: {load_s:.2f} s "
        f"({total / load_s:,.0f} runs/s)"
    )
    del loaded

    # 4. Point reads.
    ids = [
        format_run_id(i) for i in random.Random(11).choices(range(1, total + 1), k=args.point_reads)
    ]
    latencies = []
    for rid in tqdm(ids, desc="point reads", unit="read", leave=False):
        t = time.perf_counter()
        await reader.get("run", rid)
        latencies.append(time.perf_counter() - t)
    print(
        f"[4] point reads ({len(ids):,}, sequential): p50 {percentile(latencies, 50) * 1e3:.2f} ms, "
        f"p99 {percentile(latencies, 99) * 1e3:.2f} ms, mean {statistics.mean(latencies) * 1e3:.2f} ms"
    )

    await kv.close()
    if not args.keep:
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket):
            objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objs:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": objs})
        s3.delete_bucket(Bucket=bucket)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    env = os.environ.get
    p.add_argument("--s3-endpoint", default=env("RUNSTREAM_S3_ENDPOINT", "http://127.0.0.1:8333"))
    p.add_argument("--access-key", default=env("RUNSTREAM_S3_ACCESS_KEY", "runstream"))
    p.add_argument("--secret-key", default=env("RUNSTREAM_S3_SECRET_KEY", "runstream-secret"))
    p.add_argument("--etcd", default=env("RUNSTREAM_ETCD_ENDPOINT", "127.0.0.1:2379"))
    p.add_argument("--entries", type=int, default=100_000, help="entries per checkpoint (N)")
    p.add_argument("--entry-size", type=int, default=500, help="approximate bytes per run")
    p.add_argument(
        "--baseline-sample",
        type=int,
        default=5_000,
        help="objects actually written for the per-object baseline",
    )
    p.add_argument("--baseline-concurrency", type=int, default=16)
    p.add_argument("--snapshot-runs", type=int, default=1_000_000)
    p.add_argument(
        "--build-batch",
        type=int,
        default=100_000,
        help="runs per checkpoint while building the big partition",
    )
    p.add_argument("--point-reads", type=int, default=2_000)
    p.add_argument("--max-file-size", type=int, default=8 << 20)
    p.add_argument("--keep", action="store_true", help="keep the bench bucket afterwards")
    return p.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
