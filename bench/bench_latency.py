"""The latency a pipeline feels at every task edge, on a real worker, beside a floor measured in
the same run.

A run here is a chain of ``--chain`` tasks (task i+1 depends on task i). An executor in this
process appends task i's ``task.status_changed`` ``success`` to ``runs.events`` with the project's
producer (``agents.producer.EventProducer``: key = run id, partition = ``partition_for``) and
waits for the worker's ``task.ready`` of task i+1 on the ready topic (``--ready-topic``;
default: the setting ``topic_tasks`` when ``Settings`` has it, else ``topic_phases``). An **edge** is the time from the append call until this process' consumer
sees that ``task.ready``: report, commit, apply, derive, emit, fetch. Each run in flight is a
closed loop (report, wait for ready, report the next); a run's first ``task.ready`` (after its
creation and start) is not an edge.

* **Think time** (``--think``): by default the loops are closed, each report sent as soon as the
  last ``task.ready`` came, so the faster the edges the more of them a second (at 6-7 ms an edge,
  20 loops make about 2,500 a second); ``--think 25`` has each executor run a task 12.5-37.5 ms
  first, about 600 edges a second for 20 runs in flight, the rate of issue 23's table. Each case
  prints its edges a second.
* **The host's speed**: ``bench.floors.cpu_yardstick`` (decode + apply of a fixed stream in one
  thread) at the start and at the end, to compare runs on different machines or days by.
* **Floor**: a bare Kafka record's round trip (``acks=all``, ``linger_ms=0``) through the same
  broker, produced and consumed here on a topic of its own; again beside case (d)'s background
  load (before its edges), the floor in the same conditions.
* **Edges**: (a) one run at a time; (b) ``--inflight`` runs in flight; (c) ``--inflight-large``
  runs in flight; (d) ``--inflight`` runs in flight beside a background load of ``--bg-rate``
  events/s of other runs (``agents.workload``: created, started, tasks running and ending),
  whose achieved rate is printed; it runs in a process of its own (``bench.background``: other
  runs' producers are other programs, and in this process their turns of the event loop were
  added to every edge measured here), each case's with runs of its own (the HTTP case's
  repeated (d)'s, whose events the worker then judged as duplicates). Each edge is also cut in two at the ``task.ready`` record's
  timestamp (the worker's producer stamps it at the send): report → the worker sends it, and
  that send → seen here (wall clocks of one machine, to the millisecond).
* **HTTP reports**: case (d) with the reports sent as ``PUT /api/v1/runs/{id}/tasks/{task}/status``
  (answered once the owner applied the event): the edge from the request to the ``task.ready``,
  the response time itself, the worker's own part of it (``Server-Timing: app;dur``) and the
  means of its write stages (``runstream_api_write_seconds``: append, apply). The client is
  aiohttp's, on keep-alive connections: httpx's took 78 % of a core here for the same requests
  (this bench shares the machine's two cores with the worker and the broker) and doubled every
  figure of this case.
* **Failover** (``--no-failover`` skips it): a second worker joins the group; ``--inflight``
  runs flow (loop k keeps to partition k mod partitions, so a stalled partition holds up its own
  loops only), then the first worker is SIGKILLed: per partition it served, the time from the
  kill until the first edge reported after the kill completes (its runs flow again), the longest
  pause between edges on its partitions and on the survivor's, beside the consumer session
  timeout in use (``--session-timeout`` sets it; the broker must allow it).
* **CPU meanwhile**: each case prints what the worker, this bench, the background load's
  process and the broker (``kafka.Kafka`` processes on this machine) used, in percent of one
  core, and how busy the machine was on every core, with its steal time (a virtual machine's
  cores held by the hypervisor). On 2 cores the apparatus (this bench, the background, the
  broker) takes about a core at (d)'s load: an edge waits for a core as much as for its work.

Needs the local stack (``deploy/local up``; ``eval "$(deploy/local env)"``). Usage::

    .venv/bin/python bench/bench_latency.py            # about 2 minutes
    .venv/bin/python bench/bench_latency.py --quick    # about 30 seconds
    .venv/bin/python bench/bench_latency.py --inflight 50 --bg-rate 5000 --no-failover

Measured on a 2-core machine on 2026-12-06 with the defaults, while other work (test suites)
ran on it, so only indicative (load average printed in the first line)::

    load average 4.52 2.75 1.99 (2 cores); one worker, 4 partitions; ready topic blat89d2a6f6.tasks
    chains of 10 tasks: an edge is task i's success appended → task i+1's task.ready seen here; EventProducer linger 0 ms
    floor: bare Kafka record round trip (acks=all, linger 0)   n=2000  p50    0.88  p95    1.53  p99    2.42  p99.9   12.25  max   17.52 ms
    (a) edge, one run at a time                                n=1350  p50    4.25  p95    7.90  p99   12.29  p99.9   22.54  max   49.21 ms
          of which the append, until acknowledged              n=1350  p50    0.95  p95    2.70  p99    4.95  p99.9   12.45  max   14.73 ms
    (b) edge, 20 runs in flight                                n=4500  p50   10.53  p95   23.62  p99   39.13  p99.9   46.81  max   49.43 ms
          of which the append, until acknowledged              n=4500  p50    1.58  p95    4.09  p99    7.84  p99.9   38.44  max   38.57 ms
    (c) edge, 200 runs in flight                               n=9000  p50   34.87  p95   83.41  p99  109.94  p99.9  128.11  max  128.32 ms
          of which the append, until acknowledged              n=9000  p50   12.46  p95   34.25  p99   43.93  p99.9   84.50  max   84.71 ms
    (d) edge, 20 runs in flight + background                   n=4500  p50   25.13  p95   98.41  p99  208.44  p99.9  370.70  max  411.94 ms
          of which the append, until acknowledged              n=4500  p50    2.14  p95    8.39  p99   14.35  p99.9   23.82  max   41.12 ms
        background of (d): 2,000 events/s achieved (asked 2,000)
    HTTP: edge, PUT .../status → task.ready, 20 runs + bg      n=4500  p50  114.52  p95  334.06  p99  596.29  p99.9  757.62  max  769.89 ms
    HTTP: PUT .../status response time (204)                   n=4500  p50  103.43  p95  317.74  p99  576.05  p99.9  742.79  max  769.35 ms
          of which the worker's own time (Server-Timing app)   n=4500  p50   76.88  p95  293.63  p99  506.88  p99.9  692.00  max  704.58 ms
          the worker's write stages, means: append until the log acknowledged 8.32 ms, then until the owner applied it 98.59 ms
        background of HTTP: 2,000 events/s achieved (asked 2,000)
    failover: 2 workers, 20 runs in flight, SIGKILL of the worker serving partitions [2, 3]; consumer session timeout 10.0 s
        kill → its partitions' runs flow again (the first edge reported after the kill completes): partition 2 11.11 s, partition 3 11.14 s
        kill → every one of them flows again: 11.14 s (session timeout 10.0 s)
        longest pause between edges from the kill on: on those partitions 11.04 s, on the surviving worker's 0.70 s
        edges during the failover case (all partitions)        n=34380 p50    6.89  p95   15.07  p99   26.31  p99.9  162.32  max 11071.37 ms
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import inspect
import itertools
import os
import random
import re
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from tqdm import tqdm

from agents.config import Settings
from agents.producer import EventProducer
from agents.runtime import tune_gc
from bench.background import Background
from bench.floors import cpu_yardstick, kafka_floor, pct
from events import (
    EventType,
    RunConfigTask,
    RunCreated,
    StartRequested,
    TaskDepend,
    TaskStatus,
    TaskStatusChanged,
    decode_record,
    format_run_id,
    make_event,
)
from partition.placement import partition_for
from tests.harness import Worker, free_port, make_settings, prepare_topics, wait_healthy

#: First run id of the chains and of the background runs. Ids are dense where runs are created
#: through the API, and the worker's index keeps a slot for every id between the lowest and the
#: highest it holds (indexer.index, about 29 bytes each): the background's first run 5M ids away
#: from the chains' made the worker allocate ~145 MB and stall for ~300 ms in one step of its
#: event loop. So the background follows the chains closely (the chains of a default run take
#: under 50,000 ids; ``Bench.run_id`` stops the bench before they would reach the background's).
CHAIN_IDS = 1_000_000
BACKGROUND_IDS = 1_100_000
#: Deadline of one edge: a hung system, not a figure.
EDGE_DEADLINE = 60.0


def _ticks(pid: int | str) -> float:
    """CPU seconds used so far by process ``pid`` (``self``: this one), from /proc (0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine() -> tuple[float, float, float]:
    """(busy, total, steal) CPU seconds of the whole machine so far, from /proc/stat. Steal is
    time a virtual machine's cores were ready to run but the hypervisor ran something else
    (counted busy: nothing here could use it)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0, 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    steal = values[7] if len(values) > 7 else 0
    # guest time (values[8:]) is already counted in user time
    total = sum(values[:8])
    return (total - idle) / hz, total / hz, steal / hz


def broker_pids() -> list[int]:
    """The Kafka brokers on this machine: processes whose command line runs ``kafka.Kafka``
    (deploy/local's broker, or one started by Kafka's own scripts), from /proc (none elsewhere).
    Their CPU is part of every edge's cost here: the broker shares the cores with the worker."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kafka.Kafka" in argv:
            pids.append(int(entry.name))
    return pids


class CpuWatch:
    """The CPU the worker, this process, the background load's process, the brokers on this
    machine (:func:`broker_pids`) and the whole machine used during a case: percent of one core,
    and the machine's share busy (all cores) with its steal time."""

    def __init__(self, worker_pid: int | None, background_pid: int | None = None) -> None:
        self.pid = worker_pid
        self.background_pid = background_pid
        self.brokers = broker_pids()
        self.start = self._now()
        self.used: tuple[float, ...] | None = None

    def _now(self) -> tuple[float, ...]:
        busy, total, steal = _machine()
        worker = _ticks(self.pid) if self.pid is not None else 0.0
        bg = _ticks(self.background_pid) if self.background_pid is not None else 0.0
        broker = sum(_ticks(p) for p in self.brokers)
        return time.perf_counter(), worker, _ticks("self"), bg, broker, busy, total, steal

    def stop(self) -> CpuWatch:
        t0, w0, b0, g0, k0, m0, tot0, st0 = self.start
        t1, w1, b1, g1, k1, m1, tot1, st1 = self._now()
        wall = max(t1 - t0, 1e-9)
        total = max(tot1 - tot0, 1e-9)
        self.used = (*(x / wall * 100 for x in (w1 - w0, b1 - b0, g1 - g0, k1 - k0)), (m1 - m0) / total * 100, (st1 - st0) / total * 100)  # fmt: skip
        return self

    def line(self) -> str:
        if self.used is None:
            return ""
        w, b, g, k, m, st = self.used
        bg = f", the background load's process {g:.0f} %" if self.background_pid is not None else ""
        broker = f", the broker {k:.0f} %" if self.brokers else ""
        return f"      CPU meanwhile: the worker {w:.0f} % of a core, this bench {b:.0f} %{bg}{broker}, the machine {m:.0f} % busy (every core; steal {st:.0f} %)"  # fmt: skip


def row(label: str, ms: list[float]) -> str:
    if not ms:
        return f"{label:<58} n=0"
    return (
        f"{label:<58} n={len(ms):<5} p50 {pct(ms, 50):7.2f}  p95 {pct(ms, 95):7.2f}  "
        f"p99 {pct(ms, 99):7.2f}  p99.9 {pct(ms, 99.9):7.2f}  max {max(ms):7.2f} ms"
    )


def stage(what: str) -> None:
    """A line on stderr with the time, between the progress bars."""
    tqdm.write(f"{time.strftime('%H:%M:%S')} {what}", file=sys.stderr)


def ready_topic_of(s: Settings, choice: str | None) -> str:
    """``choice`` is a Settings field (``topic_tasks``) or a topic name; none: ``topic_tasks``
    when Settings has it, else ``topic_phases``."""
    if choice is None:
        choice = "topic_tasks" if hasattr(s, "topic_tasks") else "topic_phases"
    value = getattr(s, choice, None) if choice.startswith("topic_") else None
    return value if isinstance(value, str) else choice


def own_topics(s: Settings, unique: str) -> Settings:
    """Every ``topic_*`` setting unique to this bench (make_settings may not know a new one)."""
    over: dict[str, Any] = {
        f.name: f"{unique}.{f.name.removeprefix('topic_').replace('_', '-')}"
        for f in dataclasses.fields(s)
        if f.name.startswith("topic_") and not str(getattr(s, f.name)).startswith(unique)
    }
    return dataclasses.replace(s, **over) if over else s


@dataclasses.dataclass(frozen=True, slots=True)
class Seen:
    """A ``task.ready`` seen here: when (perf_counter seconds; wall clock, ms) and its record's
    timestamp (ms; the worker's producer stamps it when the worker sends it)."""

    at: float
    wall_ms: float
    sent_ms: int


class Ready:
    """One consumer of the ready topic (every partition, from its end): resolves the futures
    waiting for a run's task ``task.ready`` with when it was seen (``Seen``). Records of
    other runs (the background's) are skipped by their key, undecoded."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.topic = topic
        self.partitions = partitions
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)  # fmt: skip
        self.waiting: dict[tuple[str, str], asyncio.Future[Seen]] = {}
        self.keys: dict[bytes, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        # Assigned by number: a fresh consumer knows no topic's partitions until its metadata
        # is refreshed (up to metadata_max_age_ms later).
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:
            await self.consumer.position(tp)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()

    def expect(self, run_id: str, task_id: str) -> asyncio.Future[Seen]:
        fut: asyncio.Future[Seen] = asyncio.get_running_loop().create_future()
        self.waiting[(run_id, task_id)] = fut
        key = run_id.encode()
        self.keys[key] = self.keys.get(key, 0) + 1
        return fut

    async def wait(self, run_id: str, task_id: str, fut: asyncio.Future[Seen]) -> Seen:
        try:
            return await asyncio.wait_for(fut, EDGE_DEADLINE)
        finally:
            self.waiting.pop((run_id, task_id), None)
            key = run_id.encode()
            left = self.keys.get(key, 1) - 1
            if left:
                self.keys[key] = left
            else:
                self.keys.pop(key, None)

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=200)
            seen, wall = time.perf_counter(), time.time() * 1000
            for records in batch.values():
                for r in records:
                    if r.key not in self.keys or r.value is None:
                        continue
                    for e in decode_record(r.value):
                        if e.type is EventType.TASK_READY:
                            fut = self.waiting.get((e.run_id, e.data.task_id))  # type: ignore[union-attr]
                            if fut is not None and not fut.done():
                                fut.set_result(Seen(seen, wall, r.timestamp))


@dataclasses.dataclass
class Edges:
    """What one case measured."""

    edges: list[float] = dataclasses.field(default_factory=list)  # ms, report → task.ready seen
    reports: list[float] = dataclasses.field(default_factory=list)  # ms, the report call itself
    server: list[float] = dataclasses.field(default_factory=list)  # ms, HTTP: the worker's own time
    # ms, report called → the worker sent task.ready (its record's timestamp), and from that send
    # until seen here: the edge in two (wall clocks of one machine, to the millisecond)
    to_send: list[float] = dataclasses.field(default_factory=list)
    from_send: list[float] = dataclasses.field(default_factory=list)
    # (reported, seen, partition) of every edge, perf_counter seconds
    done_at: list[tuple[float, float, int]] = dataclasses.field(default_factory=list)
    timeouts: int = 0
    cpu: CpuWatch | None = None
    lag: str = ""  # the worker's event loop lag meanwhile (loop_lag_line)
    watch: Callable[[float, float, int], None] | None = None  # called with every done_at entry

    def rate(self) -> float:
        """Edges a second, from the first report to the last task.ready seen."""
        if len(self.done_at) < 2:
            return 0.0
        first = min(t for t, _, _ in self.done_at)
        last = max(seen for _, seen, _ in self.done_at)
        return len(self.done_at) / max(last - first, 1e-9)


def chain_task(i: int) -> RunConfigTask:
    """Task ``t<i>``, depending on ``t<i-1>``."""
    depends = (TaskDepend(task_id=f"t{i - 1}"),) if i else ()
    return RunConfigTask(id=f"t{i}", name=f"t{i}", depends=depends)


class Bench:
    def __init__(self, s: Settings, ready: Ready, producer: EventProducer, chain: int, worker_pid: int | None = None, think: float = 0.0) -> None:  # fmt: skip
        self.s = s
        # seconds an executor runs a task, between its task.ready and its report (0: none,
        # closed loops); each a draw between half and one and a half times it
        self.think = think
        self.rng = random.Random(7)
        self.worker_pid = worker_pid
        self.url = ""  # the worker's base URL: its /metrics
        self.background_pid: int | None = None  # the background load's process, while it runs
        self.ready = ready
        self.producer = producer
        self.chain = chain
        self.ids = itertools.count(CHAIN_IDS)
        self.tasks = tuple(chain_task(i) for i in range(chain))

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def run_id(self, partition: int | None) -> str:
        """The next run id (on ``partition`` when one is given)."""
        while True:
            n = next(self.ids)
            if n >= BACKGROUND_IDS:
                raise SystemExit(
                    "the chains' run ids reached the background's: raise BACKGROUND_IDS"
                )
            rid = format_run_id(n)
            if partition is None or partition_for(rid, self.s.partitions) == partition:
                return rid

    async def start_run(self, partition: int | None = None) -> str:
        """Create and start a run; returns once its first task is ready."""
        rid = self.run_id(partition)
        created = RunCreated(name=f"chain-{rid[-6:]}", group=f"/project/bench/branch/b{rid[-3:]}", tasks=self.tasks)  # fmt: skip
        fut = self.ready.expect(rid, "t0")
        at = self.now_ms()
        await self.producer.append(
            [
                make_event(created, id=f"{rid}.created", run_id=rid, at=at),
                make_event(StartRequested(), id=f"{rid}.start", run_id=rid, at=at),
            ]
        )
        await self.ready.wait(rid, "t0", fut)
        return rid

    async def report(self, rid: str, i: int, http: aiohttp.ClientSession | None) -> float | None:
        """Report task ``i`` successful; over HTTP, returns the worker's own time for it (ms, its
        ``Server-Timing: app;dur=``)."""
        task = f"t{i}"
        if http is None:
            data = TaskStatusChanged(task_id=task, status=TaskStatus.SUCCESS)
            await self.producer.append([make_event(data, id=f"{rid}.{task}.success", run_id=rid, at=self.now_ms())])  # fmt: skip
            return None
        async with http.put(
            f"/api/v1/runs/{rid}/tasks/{task}/status",
            data=b'{"status":"success"}',
            headers={
                "Idempotency-Key": f"{rid}.{task}.success",
                "Content-Type": "application/json",
            },
        ) as r:
            if r.status != 204:
                raise RuntimeError(
                    f"PUT status of {rid}/{task}: {r.status} {(await r.text())[:200]}"
                )
            m = re.search(r"\bapp;dur=([0-9.]+)", r.headers.get("Server-Timing", ""))
            return float(m.group(1)) if m else None

    async def chain_run(self, out: Edges, bar: Any, http: aiohttp.ClientSession | None = None, partition: int | None = None) -> None:  # fmt: skip
        """One run, start to end: ``chain - 1`` edges, then its last report."""
        try:
            rid = await self.start_run(partition)
        except TimeoutError:
            out.timeouts += 1
            return
        part = partition_for(rid, self.s.partitions)
        for i in range(self.chain - 1):
            if self.think:
                await asyncio.sleep(self.think * self.rng.uniform(0.5, 1.5))
            fut = self.ready.expect(rid, f"t{i + 1}")
            t, wall = time.perf_counter(), time.time() * 1000
            server = await self.report(rid, i, http)
            out.reports.append((time.perf_counter() - t) * 1000)
            if server is not None:
                out.server.append(server)
            try:
                got = await self.ready.wait(rid, f"t{i + 1}", fut)
            except TimeoutError:
                out.timeouts += 1
                return  # the run is abandoned; its loop starts another
            seen = got.at
            out.edges.append((seen - t) * 1000)
            out.to_send.append(got.sent_ms - wall)
            out.from_send.append(got.wall_ms - got.sent_ms)
            out.done_at.append((t, seen, part))
            if out.watch is not None:
                out.watch(t, seen, part)
            bar.update()
        await self.report(rid, self.chain - 1, http)

    async def loops(self, label: str, inflight: int, runs_each: int, http: aiohttp.ClientSession | None = None) -> Edges:  # fmt: skip
        """``inflight`` closed loops of ``runs_each`` runs each."""
        stage(label)
        lag0 = await loop_lag(self.url) if self.url else {}
        out = Edges(cpu=CpuWatch(self.worker_pid, self.background_pid))
        bar = tqdm(total=inflight * runs_each * (self.chain - 1), desc=label, unit="edge", file=sys.stderr)  # fmt: skip

        async def loop() -> None:
            for _ in range(runs_each):
                await self.chain_run(out, bar, http)

        try:
            await asyncio.gather(*(loop() for _ in range(inflight)))
        finally:
            bar.close()
            out.cpu.stop()  # type: ignore[union-attr]
        if self.url:
            out.lag = loop_lag_line(lag0, await loop_lag(self.url))
        return out

    async def until(self, label: str, inflight: int, stop: asyncio.Event, out: Edges) -> None:
        """``inflight`` closed loops of runs until ``stop`` is set, measured into ``out``. Loop k
        keeps to partition k mod partitions: a stalled partition holds up its own loops only."""
        bar = tqdm(desc=label, unit="edge", file=sys.stderr)

        async def loop(partition: int) -> None:
            while not stop.is_set():
                await self.chain_run(out, bar, partition=partition)

        try:
            await asyncio.gather(*(loop(k % self.s.partitions) for k in range(inflight)))
        finally:
            bar.close()


async def healthy(worker: Worker, url: str) -> None:
    """Wait until ``worker`` answers /healthz; a worker that does not says why in its log."""
    try:
        await wait_healthy(url, within=120)
    except AssertionError:
        errors = [ln for ln in worker.log_text().splitlines() if '"level":"error"' in ln or '"level":"critical"' in ln]  # fmt: skip
        raise RuntimeError(f"worker not healthy after 120 s; its last error: {errors[-1:] or 'none'} (log {worker.log_path})") from None  # fmt: skip


async def write_stages(url: str) -> dict[str, tuple[float, float]]:
    """stage → (sum of seconds, count) of the worker's ``runstream_api_write_seconds``."""
    async with httpx.AsyncClient(timeout=10) as h:
        text = (await h.get(f"{url}/metrics")).text
    out: dict[str, tuple[float, float]] = {}
    for stage_ in ("append", "apply"):
        total = re.search(rf'^runstream_api_write_seconds_sum{{stage="{stage_}"}} (\S+)$', text, re.M)  # fmt: skip
        count = re.search(rf'^runstream_api_write_seconds_count{{stage="{stage_}"}} (\S+)$', text, re.M)  # fmt: skip
        out[stage_] = (float(total.group(1)) if total else 0.0, float(count.group(1)) if count else 0.0)  # fmt: skip
    return out


LAG_METRIC = "runstream_event_loop_lag_seconds"


async def loop_lag(url: str) -> dict[str, float]:
    """The worker's ``runstream_event_loop_lag_seconds`` histogram: bucket bound (as text) →
    cumulative count, and ``sum`` and ``count``; empty when it cannot be read."""
    try:
        async with httpx.AsyncClient(timeout=10) as h:
            text = (await h.get(f"{url}/metrics")).text
    except httpx.HTTPError:
        return {}
    out = {le: float(n) for le, n in re.findall(rf'^{LAG_METRIC}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M)}  # fmt: skip
    for part in ("sum", "count"):
        found = re.search(rf"^{LAG_METRIC}_{part} (\S+)$", text, re.M)
        out[part] = float(found.group(1)) if found else 0.0
    return out


def loop_lag_line(before: dict[str, float], after: dict[str, float]) -> str:
    """What the worker's event loop made every step wait between two readings: the mean lag
    and the bucket bounds its p50 and p99 fall under (the worker samples it every 20 ms)."""
    n = after.get("count", 0.0) - before.get("count", 0.0)
    if n <= 0:
        return ""
    mean = (after["sum"] - before.get("sum", 0.0)) / n * 1000
    bounds = sorted((float(le), after[le] - before.get(le, 0.0)) for le in after if le not in ("sum", "count"))  # fmt: skip

    def under(q: float) -> str:
        for bound, cum in bounds:
            if cum >= q * n:
                return f"≤ {bound * 1000:g}" if bound != float("inf") else "> the last bucket"
        return "?"

    return f"      the worker's event loop meanwhile: timers fired late by {mean:.2f} ms on average, p50 {under(0.5)} ms, p99 {under(0.99)} ms ({n:.0f} samples)"  # fmt: skip


async def owned(url: str) -> set[int]:
    """The partitions a worker owns and serves, from its /healthz."""
    async with httpx.AsyncClient(timeout=10) as h:
        body = (await h.get(f"{url}/healthz")).json()
    return {p["partition"] for p in body.get("partitions", []) if p.get("state") == "serving"}


def longest_gap(times: list[float], since: float) -> float:
    """The longest time between two consecutive ``times`` from the last one before ``since`` on;
    0 with fewer than two."""
    ordered = sorted(times)
    start = max(0, sum(1 for t in ordered if t <= since) - 1)
    tail = ordered[start:]
    return max((b - a for a, b in itertools.pairwise(tail)), default=0.0)


async def failover(bench: Bench, s: Settings, first: Worker, tmp: Path, inflight: int, before: float) -> dict[str, Any]:  # fmt: skip
    """A second worker joins the group; with ``inflight`` runs flowing (loop k on partition k mod
    partitions), the first one is SIGKILLed. Measures, per partition it served, the time from the
    kill until the first edge reported after the kill completed: its runs flow again."""
    s2 = dataclasses.replace(s, web_port=free_port())
    second = Worker(s2, tmp / "w2.log").start()
    stage("failover: a second worker starts")
    urls = [f"http://127.0.0.1:{s.web_port}", f"http://127.0.0.1:{s2.web_port}"]
    try:
        await healthy(second, urls[1])
        deadline = time.monotonic() + 120
        while True:  # both own partitions and every partition is served
            a, b = await owned(urls[0]), await owned(urls[1])
            if a and b and a | b == set(range(s.partitions)) and not a & b:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"partitions not shared by the two workers after 120 s: {a} {b}")  # fmt: skip
            await asyncio.sleep(0.5)
        stage(f"failover: partitions shared {sorted(a)} {sorted(b)}")
        out, stop = Edges(), asyncio.Event()
        flowing = asyncio.create_task(bench.until("failover", inflight, stop, out))
        await asyncio.sleep(before)
        victim = await owned(urls[0])
        if not victim:
            raise RuntimeError("the first worker serves no partition: a rebalance under way?")
        looped = {k % s.partitions for k in range(inflight)}
        again: dict[int, float] = {}  # partition -> seconds from the kill
        all_again = asyncio.Event()
        killed = time.perf_counter()

        def watch(reported: float, seen: float, partition: int) -> None:
            if reported > killed and partition in victim and partition not in again:
                again[partition] = seen - killed
                if set(again) >= victim & looped:
                    all_again.set()

        out.watch = watch
        first.kill(signal.SIGKILL)
        stage(f"failover: SIGKILL of the worker serving {sorted(victim)}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_again.wait(), 6 * s.session_timeout + 60)
        await asyncio.sleep(2.0)  # a little flow after the recovery
        stop.set()
        await flowing
        on_victim = [seen for _, seen, p in out.done_at if p in victim]
        on_other = [seen for _, seen, p in out.done_at if p not in victim]
        return {
            "victim": sorted(victim),
            "again": again,
            "gap_victim": longest_gap(on_victim, killed),
            "gap_other": longest_gap(on_other, killed),
            "edges": out,
        }
    finally:
        second.stop()


def quick(args: argparse.Namespace) -> None:
    """``--quick``: sizes for a smoke run of about 30 seconds."""
    args.floor, args.single_runs, args.runs_each, args.large_runs_each = 500, 20, 4, 1
    args.failover_before = 3.0


async def amain(args: argparse.Namespace) -> None:
    if args.quick:
        quick(args)
    # The collector's settings of the worker: this process is every executor at once and keeps
    # every edge's figures, and with CPython's defaults its full collections (40-50 ms) paused
    # all the loops in flight at once, an artifact of the bench, not a latency of the system.
    tune_gc()
    yardstick = [cpu_yardstick()]  # before anything else runs, and again at the end
    tmp = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    unique = f"blat{uuid.uuid4().hex[:8]}"
    s = make_settings(unique, args.kafka, args.etcd, f"file://{tmp}/objects", partitions=args.partitions)  # fmt: skip
    # A worker's own checkpoint interval, not the tests' short one (or --checkpoint-interval).
    interval = args.checkpoint_interval
    s = own_topics(
        dataclasses.replace(
            s,
            checkpoint_interval=Settings().checkpoint_interval if interval is None else interval,
            # with a longer interval, no checkpoint forced by the event count either
            checkpoint_events=s.checkpoint_events if interval is None else 1 << 40,
        ),
        unique,
    )
    if args.session_timeout is not None:
        s = dataclasses.replace(s, session_timeout=args.session_timeout)
    if args.produce_in_flight is not None:
        s = dataclasses.replace(s, produce_in_flight=args.produce_in_flight)
    ready_topic = ready_topic_of(s, args.ready_topic)
    await prepare_topics(s)
    worker = Worker(s, tmp / "w1.log").start()
    url = f"http://127.0.0.1:{s.web_port}"
    linger = inspect.signature(EventProducer).parameters["linger"].default
    results: list[str] = []
    ready = Ready(s.kafka, ready_topic, s.partitions)
    fo: dict[str, Any] | None = None
    try:
        await healthy(worker, url)
        stage("worker healthy")
        floor = await kafka_floor(s.kafka, args.floor, progress=True)
        await ready.start()
        stage("ready consumer at the end of " + ready_topic)
        async with EventProducer(s.kafka, s.topic_events, client_id="bench-executors") as producer:
            bench = Bench(s, ready, producer, args.chain, worker.proc.pid if worker.proc else None, args.think / 1000)  # fmt: skip
            bench.url = url
            await bench.loops("warm-up", 4, 1)
            cases = set(args.cases.split(","))
            none = Edges()
            a = b = c = d = h = none
            d_rate = h_rate = 0.0
            d_floor: list[float] = []
            stages0 = stages1 = {"append": (0.0, 0.0), "apply": (0.0, 0.0)}
            if "a" in cases:
                a = await bench.loops("(a) one run", 1, args.single_runs)
            if "b" in cases:
                b = await bench.loops(f"(b) {args.inflight} runs", args.inflight, args.runs_each)
            if "c" in cases:
                c = await bench.loops(f"(c) {args.inflight_large} runs", args.inflight_large, args.large_runs_each)  # fmt: skip
            next_bg = BACKGROUND_IDS  # each case's background brings runs of its own
            if "d" in cases:
                bg = Background(s.kafka, s.topic_events, args.bg_rate, first_run_id=next_bg)
                await bg.start()
                bench.background_pid = bg.pid
                try:
                    d_floor = await kafka_floor(s.kafka, args.floor, progress=True)
                    d = await bench.loops(
                        f"(d) {args.inflight} runs + bg", args.inflight, args.runs_each
                    )
                finally:
                    d_rate = await bg.stop()
                    bench.background_pid = None
                    next_bg = bg.next_run_id
            if "http" in cases:
                bg = Background(s.kafka, s.topic_events, args.bg_rate, first_run_id=next_bg)
                await bg.start()
                bench.background_pid = bg.pid
                try:
                    conns = aiohttp.TCPConnector(limit=args.inflight + 4)
                    stages0 = await write_stages(url)
                    async with aiohttp.ClientSession(
                        base_url=url, connector=conns, timeout=aiohttp.ClientTimeout(total=30)
                    ) as http:
                        h = await bench.loops(f"HTTP {args.inflight} runs + bg", args.inflight, args.runs_each, http)  # fmt: skip
                    stages1 = await write_stages(url)
                finally:
                    h_rate = await bg.stop()
                    bench.background_pid = None
            if not args.no_failover:
                fo = await failover(bench, s, worker, tmp, args.inflight, args.failover_before)
    finally:
        try:
            await ready.stop()
        finally:
            # Even when the stop above fails (the broker gone mid-run: its consumer's stop raised
            # CancelledError): two workers outlived their benches so, idle, a tenth of a core each.
            worker.stop()
    load = os.getloadavg()
    yardstick.append(cpu_yardstick())
    results.append(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores); one worker, {s.partitions} partitions; ready topic {ready_topic}")  # fmt: skip
    results.append(f"this host's CPU yardstick (bench.floors.cpu_yardstick: decode + apply in one thread), at the start / the end: {yardstick[0]:,.0f} / {yardstick[1]:,.0f} events/s")  # fmt: skip
    results.append(f"chains of {args.chain} tasks: an edge is task i's success appended → task i+1's task.ready seen here; EventProducer linger {linger * 1000:.0f} ms")  # fmt: skip
    think = f"an executor runs each task {args.think / 2:g}-{args.think * 1.5:g} ms before its report" if args.think else "closed loops: each report right after the last task.ready"  # fmt: skip
    results.append(f"runs in flight: {think}")
    results.append(
        f"the worker checkpoints every {s.checkpoint_interval:g} s (a partition with changes); "
        f"its producers' requests in flight to a broker: {s.produce_in_flight}"
    )
    results.append(row("floor: bare Kafka record round trip (acks=all, linger 0)", floor))
    for label, e in (
        ("(a) edge, one run at a time", a),
        (f"(b) edge, {args.inflight} runs in flight", b),
        (f"(c) edge, {args.inflight_large} runs in flight", c),
        (f"(d) edge, {args.inflight} runs in flight + background", d),
    ):
        results.append(row(label, e.edges))
        if e.edges:
            results.append(f"      {e.rate():,.0f} edges/s")
        results.append(row("      of which the append, until acknowledged", e.reports))
        results.append(row("      report → the worker sends task.ready", e.to_send))
        results.append(row("      the worker sends task.ready → seen here", e.from_send))
        if e.cpu is not None:
            results.append(e.cpu.line())
        if e.lag:
            results.append(e.lag)
    results.append(f"    background of (d): {d_rate:,.0f} events/s achieved (asked {args.bg_rate:,})")  # fmt: skip
    results.append(row("    floor beside the background of (d), before its edges", d_floor))
    results.append(row(f"HTTP: edge, PUT .../status → task.ready, {args.inflight} runs + bg", h.edges))  # fmt: skip
    if h.edges:
        results.append(f"      {h.rate():,.0f} edges/s")
    results.append(row("      PUT sent → the worker sends task.ready", h.to_send))
    results.append(row("      the worker sends task.ready → seen here", h.from_send))
    if h.cpu is not None:
        results.append(h.cpu.line())
    if h.lag:
        results.append(h.lag)
    results.append(row("HTTP: PUT .../status response time (204)", h.reports))
    results.append(row("      of which the worker's own time (Server-Timing app)", h.server))
    means = {k: (stages1[k][0] - stages0[k][0]) / max(1.0, stages1[k][1] - stages0[k][1]) * 1000 for k in stages1}  # fmt: skip
    results.append(f"      the worker's write stages, means: append until the log acknowledged {means['append']:.2f} ms, then until the owner applied it {means['apply']:.2f} ms")  # fmt: skip
    results.append(f"    background of HTTP: {h_rate:,.0f} events/s achieved (asked {args.bg_rate:,})")  # fmt: skip
    timeouts = sum(e.timeouts for e in (a, b, c, d, h))
    if timeouts:
        results.append(f"!! {timeouts} edges got no task.ready within {EDGE_DEADLINE:.0f} s (runs abandoned)")  # fmt: skip
    if fo is not None:
        again = fo["again"]
        results.append(f"failover: 2 workers, {args.inflight} runs in flight, SIGKILL of the worker serving partitions {fo['victim']}; consumer session timeout {s.session_timeout:.1f} s")  # fmt: skip
        flows = ", ".join(f"partition {p} {again[p]:.2f} s" for p in sorted(again)) or "never"
        results.append(f"    kill → its partitions' runs flow again (the first edge reported after the kill completes): {flows}")  # fmt: skip
        if again:
            results.append(f"    kill → every one of them flows again: {max(again.values()):.2f} s (session timeout {s.session_timeout:.1f} s)")  # fmt: skip
        results.append(f"    longest pause between edges from the kill on: on those partitions {fo['gap_victim']:.2f} s, on the surviving worker's {fo['gap_other']:.2f} s")  # fmt: skip
        results.append(row("    edges during the failover case (all partitions)", fo["edges"].edges))  # fmt: skip
        if fo["edges"].timeouts:
            results.append(f"    !! {fo['edges'].timeouts} edges got no task.ready within {EDGE_DEADLINE:.0f} s")  # fmt: skip
    print("\n".join(results))
    print(f"logs under {tmp}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--quick", action="store_true", help="small sizes: about a minute")
    p.add_argument("--chain", type=int, default=10, help="tasks per run, each depending on the one before")  # fmt: skip
    p.add_argument("--floor", type=int, default=2_000, help="bare records of the floor")
    p.add_argument("--single-runs", type=int, default=150, help="(a): runs, one at a time")
    p.add_argument("--inflight", type=int, default=20, help="(b), (d), HTTP, failover: runs in flight")  # fmt: skip
    p.add_argument("--runs-each", type=int, default=25, help="(b), (d), HTTP: runs per loop")
    p.add_argument("--think", type=float, default=0.0, help="ms an executor runs a task between its task.ready and its report (each a draw from half to one and a half times it); 0: closed loops, each report right after the last task.ready")  # fmt: skip
    p.add_argument("--inflight-large", type=int, default=200, help="(c): runs in flight")
    p.add_argument("--large-runs-each", type=int, default=5, help="(c): runs per loop")
    p.add_argument("--bg-rate", type=int, default=2_000, help="(d), HTTP: background events/s")
    p.add_argument("--failover-before", type=float, default=10.0, help="seconds of flow before the kill")  # fmt: skip
    p.add_argument("--no-failover", action="store_true", help="skip the failover case")
    p.add_argument("--cases", default="a,b,c,d,http", help="the edge cases to run, comma-separated (a, b, c, d, http); failover follows unless --no-failover")  # fmt: skip
    p.add_argument("--session-timeout", type=float, default=None, help="the workers' consumer session timeout, seconds (default: the setting's); the broker must allow it (group.min.session.timeout.ms)")  # fmt: skip
    p.add_argument("--checkpoint-interval", type=float, default=None, help="the worker's checkpoint interval, seconds (default: the setting's); a long one (600) takes checkpoints out of the cases' figures, to see their share")  # fmt: skip
    p.add_argument("--produce-in-flight", type=int, default=None, help="the worker's produce_in_flight (default: the setting's)")  # fmt: skip
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--ready-topic", default=None, help="a Settings field (topic_tasks, topic_phases) or a topic name; default topic_tasks when Settings has it, else topic_phases")  # fmt: skip
    p.add_argument("--kafka", default=os.environ.get("RUNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    p.add_argument("--etcd", default=os.environ.get("RUNSTREAM_ETCD_ENDPOINT", "127.0.0.1:2379"))
    asyncio.run(amain(p.parse_args()))


if __name__ == "__main__":
    main()
