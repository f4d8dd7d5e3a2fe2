"""Pipeline figures (issue 5), each beside a baseline measured in the same run.

1. End-to-end ingest of a pre-filled ``runs.events`` by one worker process (consume → apply →
   emit → checkpoint), beside a bare aiokafka consumer reading the same topic and beside Faust's
   own ceiling: a Faust agent in a process of its own that consumes the same topic with Faust's
   own take (``noack_take``) and only acks (the figure a foreign producer's one event
   per record is held to, docs/design.md). Timed from the first poll of the worker's
   ``/metrics`` (every 0.2 s) that shows a record consumed, until all are: the worker publishes
   its counts inside a batch too, so a batch of hundreds of records no longer hides the start
   (before issue 23's last stop it did: the figure then read 177,000-214,000 events/s, or
   billions, for what is 65,000-67,000 from the first record; the time from exec was the same).
2. Object writes per 1,000 events at that load.
3. Cold replay from the log (``runstream replay``), beside the same bare consumer.
4. Warm restart of a worker whose partitions hold ``--warm-runs`` runs (default 1,000,000): time
   from process start until the tail produced while it was down is applied.

Each figure is printed with its unit, and a target only beside a figure of the target's unit:
worker end to end with commits >= 55,000 events/s; object writes <= 1 per 1,000 events; cold
replay >= 110,000 events/s per job; warm restart <= 5 s. Ratios are printed as ratios, with no
target. The worker uses topics of its own for everything it consumes or produces (every
``topic_*`` setting), its own consumer group and etcd prefix.

Needs the local stack (``deploy/local up``). Usage::

    .venv/bin/python bench/bench_pipeline.py [--runs 20000] [--warm-runs 1000000] [--storage posix|s3]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from tqdm import tqdm  # noqa: E402

from agents.cli.replay import replay  # noqa: E402
from agents.config import Settings  # noqa: E402
from agents.keys import rundata_base  # noqa: E402
from agents.producer import EventProducer  # noqa: E402
from agents.readback import checkpointed_offsets, end_offsets, stop_consumer  # noqa: E402
from agents.resources import Resources, ensure_topics  # noqa: E402
from agents.runtime import tune_gc  # noqa: E402
from agents.workload import generate  # noqa: E402
from bench.floors import cpu_yardstick  # noqa: E402
from events import format_run_id  # noqa: E402
from events.catalogue import Event  # noqa: E402
from events.codec import encode, encode_state  # noqa: E402
from partition.finals import FinalIds  # noqa: E402
from partition.materializer import FINAL, FINAL_IDS, META, partition_name  # noqa: E402
from tests.harness import Worker, free_port, make_settings  # noqa: E402
from tests.oracle import Oracle  # noqa: E402


async def produce_single(s: Settings, events: list[Event], desc: str) -> None:
    """As a foreign producer would: one event per record, key = run id (default partitioner)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=s.kafka,
        acks="all",
        enable_idempotence=True,
        linger_ms=10,
        max_batch_size=1 << 20,
    )
    await producer.start()
    try:
        futures = []
        for ev in tqdm(events, unit="ev", desc=desc):
            futures.append(await producer.send(s.topic_events, encode(ev), key=ev.run_id.encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def produce(s: Settings, events: list[Event], desc: str, commit: int = 500) -> None:
    if commit == 1:
        await produce_single(s, events, desc)
        return
    bar = tqdm(total=len(events), unit="ev", desc=desc)
    async with EventProducer(s.kafka, s.topic_events, max_commit_events=commit) as producer:
        chunk = 2000
        pending: set[asyncio.Task[None]] = set()
        for i in range(0, len(events), chunk):
            part = events[i : i + chunk]
            t = asyncio.ensure_future(producer.append(part))
            t.add_done_callback(functools.partial(_advance, bar, len(part)))
            pending.add(t)
            if len(pending) >= 8:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for d in done:
                    d.result()
        await asyncio.gather(*pending)
    bar.close()


def _advance(bar: tqdm, n: int, _task: object) -> None:
    bar.update(n)


async def bare_consume(s: Settings) -> tuple[int, float]:
    """Records/s of a bare aiokafka consumer reading the whole topic (no decoding)."""
    ends = await end_offsets(s.kafka, s.topic_events)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=s.kafka,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(s.topic_events, p) for p in ends]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        n, started = 0, time.perf_counter()
        remaining = set(tps)
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=20_000)
            for tp, msgs in batch.items():
                n += len(msgs)
                if msgs and msgs[-1].offset + 1 >= ends[tp.partition]:
                    remaining.discard(tp)
        return n, time.perf_counter() - started
    finally:
        await stop_consumer(consumer)


def metric(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M):
        total += float(m.group(1))
    return total


async def wait_metric(
    port: int, name: str, target: float, worker: Worker, desc: str
) -> tuple[float, float]:
    """(seconds from now, seconds from the first progress) until the worker's counter ``name``
    reaches ``target``: the total includes the process start-up, the second is the steady state."""
    started = time.perf_counter()
    first: float | None = None
    bar = tqdm(total=int(target), unit="rec", desc=desc)
    last, moved = 0.0, started
    while True:
        value = metric(port, name)
        if value > 0 and first is None:
            first = time.perf_counter()
        bar.update(int(value - last))
        if value != last:
            moved = time.perf_counter()
        last = value
        if value >= target:
            bar.close()
            now = time.perf_counter()
            return now - started, now - (first or started)
        if not worker.alive():
            raise RuntimeError(f"worker died; see {worker.log_path}")
        if time.perf_counter() - moved > 120:  # a hung bench, not a figure
            raise RuntimeError(f"{name} stuck at {value:,.0f} of {target:,.0f} for 120 s; see {worker.log_path}")  # fmt: skip
        await asyncio.sleep(0.2)  # /metrics costs the worker a few ms: do not poll it much faster


def faust_ceiling(s: Settings, records: int) -> tuple[float, float]:
    """(records/s, CPU µs per record) of a Faust agent that only acks, over the whole topic, in a
    process of its own (``--faust-ceiling``); timed from its first batch."""
    out = subprocess.run(
        [sys.executable, __file__, "--faust-ceiling", s.topic_events, str(records), s.kafka],
        check=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # a Faust worker logs what is printed
        text=True,
        timeout=900,
    ).stdout
    m = re.search(r"FAUST_CEILING ([0-9.]+) ([0-9.]+)", out)
    if m is None:
        raise RuntimeError(f"no figure from the Faust ceiling process: {out[-2000:]}")
    return float(m.group(1)), float(m.group(2))


def _faust_ceiling_process(topic_name: str, total: int, kafka: str) -> None:
    """The Faust agent of :func:`faust_ceiling`: prints its figure and exits."""

    import faust

    app = faust.App(
        f"rs-ceiling-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{kafka}",
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="rs-ceiling-"),
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        stream_wait_empty=False,
    )
    topic = app.topic(
        topic_name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    seen = {"n": 0, "t0": 0.0, "c0": 0.0}

    def cpu() -> float:
        t = os.times()
        return t.user + t.system

    async def agent(stream: Any) -> None:  # a faust Stream (noack_take is not in StreamT)
        async for batch in stream.noack_take(2000, within=0.005):  # Faust's own take
            if not seen["n"]:
                seen["t0"], seen["c0"] = time.perf_counter(), cpu()
            for event in batch:
                event.ack()
            seen["n"] += len(batch)
            if seen["n"] >= total:
                dt, dc = time.perf_counter() - seen["t0"], cpu() - seen["c0"]
                print(f"FAUST_CEILING {seen['n'] / dt:.1f} {dc / seen['n'] * 1e6:.1f}", flush=True)
                os._exit(0)

    app.agent(topic)(agent)
    sys.argv = [sys.argv[0], "worker", "-l", "warn", "--web-port", str(free_port())]
    app.main()


async def count_objects(resources: Resources, s: Settings) -> int:
    store = await resources.store()
    return sum([1 async for _ in store.list(rundata_base(s.etcd_prefix) + "/")])


async def inject_final_runs(
    s: Settings, resources: Resources, runs: int, template: bytes, template_id: str, first: int
) -> None:
    """Put ``runs`` finished runs into the partitions' checkpoints, as if they had run before."""
    dm = await resources.datamanager()
    per = runs // s.partitions
    bar = tqdm(total=runs, unit="run", desc="inject final runs")
    for p in range(s.partitions):
        writer = await dm.open_partition(partition_name(s.topic_events, p), claim=True)
        finals_raw = await writer.load(META)
        finals = FinalIds.from_bytes(finals_raw[0][1]) if finals_raw else FinalIds()
        base = first + p * per
        puts: dict[str, bytes] = {}
        old = template_id.encode()
        for i in range(per):
            rid = format_run_id(base + i)
            puts[rid] = template.replace(old, rid.encode())
            finals.add(base + i)
            if len(puts) == 50_000:
                bar.update(len(puts))
                await writer.checkpoint({FINAL: puts}, {}, {})
                puts = {}
        await writer.checkpoint({FINAL: puts, META: {FINAL_IDS: finals.to_bytes()}}, {}, {})
        bar.update(len(puts))
    bar.close()


async def main(args: argparse.Namespace) -> None:
    tune_gc()  # as the worker and `runstream replay` do
    yardstick = [cpu_yardstick()]  # before anything else runs, and again at the end
    unique = "bench" + uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="rs-bench-"))
    storage = (
        f"file://{tmp}/objects"
        if args.storage == "posix"
        else "s3://runstream?endpoint=http://127.0.0.1:8333"
    )
    # Every name this bench's worker uses is its own: every topic it consumes or produces
    # (events, setup errors, phases, ready tasks, dead letters, requests, replies, refusals,
    # heartbeats), the consumer group, the etcd prefix. Everything else is a worker's default.
    defaults = Settings()
    s = make_settings(
        unique,
        args.kafka,
        args.etcd,
        storage,
        partitions=args.partitions,
        etcd_prefix=f"/bench/{unique}/",
        checkpoint_interval=defaults.checkpoint_interval,
        max_running_per_group=defaults.max_running_per_group,
    )
    shared: dict[str, Any] = {
        f.name: f"{unique}.{f.name.removeprefix('topic_').replace('_', '-')}"
        for f in dataclasses.fields(s)
        if f.name.startswith("topic_") and not getattr(s, f.name).startswith(f"{unique}.")
    }
    s = dataclasses.replace(s, **shared)  # a topic setting make_settings does not know yet
    await ensure_topics(s)
    events = generate(seed=1, runs=args.runs, first_run_id=10_000_000)
    await produce(s, events, "produce", commit=args.commit)
    records = sum((await end_offsets(s.kafka, s.topic_events)).values())
    n, secs = await bare_consume(s)
    bare_rec_s = n / secs
    ceiling_rec_s, ceiling_cpu = faust_ceiling(s, records)
    print(
        f"\nworkload: {len(events):,} events in {records:,} records (commits of ~{len(events) / records:.0f} events)"
    )

    resources = Resources(s)
    worker = Worker(s, tmp / "worker1.log").start()
    try:
        e2e_total, e2e = await wait_metric(
            s.web_port, "runstream_records_total", records, worker, "worker e2e"
        )
        t0 = time.perf_counter()
        while True:
            dm = await resources.datamanager()
            done = await checkpointed_offsets(dm, s.topic_events, range(s.partitions))
            ends = await end_offsets(s.kafka, s.topic_events)
            if all(done[p] >= ends[p] for p in ends):
                break
            await asyncio.sleep(0.1)
        checkpoint_lag = time.perf_counter() - t0
        phases = metric(s.web_port, "runstream_phase_changes_total")
    finally:
        worker.stop()
    objects = await count_objects(resources, s)

    jobs = max(1, min(os.cpu_count() or 1, s.partitions))  # replay's default, made explicit
    rep1 = await replay(s, target="bench1", progress=True, jobs=1)
    rep = await replay(s, target="bench", progress=True, jobs=jobs)

    load = os.getloadavg()
    yardstick.append(cpu_yardstick())
    bare_ev_s = bare_rec_s * len(events) / records
    e2e_rate = len(events) / e2e
    per_commit = len(events) / records
    print("\n== pipeline figures ==")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores)")
    print(f"this host's CPU yardstick    : {yardstick[0]:>12,.0f} events/s at the start, {yardstick[1]:,.0f} at the end  (decode + apply in one thread, bench.floors.cpu_yardstick; no target)")  # fmt: skip
    print(
        f"bare aiokafka consumer       : {bare_rec_s:>12,.0f} records/s  ({bare_ev_s:,.0f} events/s carried)"
    )
    if args.commit > 1:
        target = f"target with commits: >= 55,000 events/s, {'met' if e2e_rate >= 55_000 else 'NOT met'}"  # fmt: skip
    else:
        target = "one event per record: no events/s target, compare with Faust's ceiling below"
    print(
        f"worker end-to-end (applied)  : {e2e_rate:>12,.0f} events/s  ({target}; commits of ~{per_commit:.0f} events)"
    )
    print(
        f"  the same in records/s      : {records / e2e:>12,.0f} records/s  ({phases:,.0f} phase changes emitted)"
    )
    print(
        f"  with process start-up      : {len(events) / e2e_total:>12,.0f} events/s  ({e2e_total:.2f} s from exec)"
    )
    print(
        f"  worker/bare consumer       : {records / e2e / bare_rec_s:>12.3f}   (ratio of records/s; no target)"
    )
    print(
        f"Faust's ceiling (acks only)  : {ceiling_rec_s:>12,.0f} records/s  ({ceiling_cpu:.0f} µs CPU a record)"
    )
    print(
        f"  worker/Faust's ceiling     : {records / e2e / ceiling_rec_s:>12.3f}   (ratio of records/s; no target)"
    )
    print(
        f"  checkpoint caught up       : {checkpoint_lag:>12.2f} s after the last record was applied"
    )
    writes = objects / (len(events) / 1000)
    print(
        f"object writes                : {writes:>12.3f} per 1,000 events  ({objects:,} objects in storage, each written once; target: <= 1, {'met' if writes <= 1 else 'NOT met'})"
    )
    for label, r, n in (("cold replay, one job", rep1, 1), (f"cold replay, {jobs} jobs", rep, jobs)):  # fmt: skip
        per_job = r.events_per_second / n
        print(
            f"{label:<29}: {per_job:>12,.0f} events/s per job  ({r.events_per_second:,.0f} events/s in all; target: >= 110,000 events/s per job, {'met' if per_job >= 110_000 else 'NOT met'})"
        )
    print(
        f"{f'  replay {jobs} jobs/bare consumer':<29}: {rep.events_per_second / bare_ev_s:>12.3f}   (ratio of events/s; no target)"
    )

    if args.warm_runs:
        oracle = Oracle().feed(events[:2000])
        tid, tstate = next(
            (rid, st) for rid, st in oracle.states.items() if st.run.phase.is_final()
        )
        # Run ids close to the workload's: a partition refuses a creation 16M ids or more away
        # from its runs (partition.admission), and so would refuse the tail.
        finals_first = 10_000_000 + args.runs + 1_000
        await inject_final_runs(
            s, resources, args.warm_runs, encode_state(tstate), tid, first=finals_first
        )
        tail_first = finals_first + args.warm_runs + 1_000
        tail = generate(seed=2, runs=max(1, args.tail_runs), first_run_id=tail_first)
        await produce(s, tail, "tail")
        # What the restarted worker consumes: from the checkpoints to the end (the tail, and any
        # record the first worker appended itself after its last checkpoint, e.g. the scheduler's).
        dm = await resources.datamanager()
        done = await checkpointed_offsets(dm, s.topic_events, range(s.partitions))
        ends = await end_offsets(s.kafka, s.topic_events)
        tail_records = sum(ends[p] - done[p] for p in ends)
        worker = Worker(s, tmp / "worker2.log").start()
        try:
            started = time.perf_counter()
            await wait_metric(
                s.web_port, "runstream_records_total", tail_records, worker, "warm restart"
            )
            warm = time.perf_counter() - started
        finally:
            worker.stop()
        loaded = [
            ln for ln in (tmp / "worker2.log").read_text().splitlines() if "partition loaded" in ln
        ]
        print(
            f"warm restart ({args.warm_runs:,} final runs + {len(tail):,} tail events): caught up {warm:.2f} s after process start (target: <= 5 s, {'met' if warm <= 5 else 'NOT met'})"
        )
        for ln in loaded:
            print("   ", ln[:200])
    await resources.close()
    print(f"\nstate and logs under {tmp}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--faust-ceiling":
        _faust_ceiling_process(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--runs", type=int, default=20_000, help="runs in the pre-filled topic (~14 events each)"
    )
    ap.add_argument(
        "--warm-runs",
        type=int,
        default=1_000_000,
        help="final runs held by the partitions for the warm restart (0: skip)",
    )
    ap.add_argument(
        "--tail-runs", type=int, default=1000, help="runs produced while the worker is down"
    )
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument(
        "--commit",
        type=int,
        default=500,
        help="events per record (1: a foreign producer's one event per record)",
    )
    ap.add_argument("--storage", choices=["posix", "s3"], default="posix")
    ap.add_argument("--kafka", default="127.0.0.1:9092")
    ap.add_argument("--etcd", default="127.0.0.1:2379")
    asyncio.run(main(ap.parse_args()))
