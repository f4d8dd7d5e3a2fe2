"""HTTP API figures of real workers, each beside the same run's ``GET /healthz`` baseline.

Two ``runstream worker`` processes in one consumer group on the local stack, over topics of
**one** partition: one worker owns every run (the *owner*), the other owns none (the
*non-owner*), so each request can be aimed at either. The load comes from a separate Python
process on loopback (aiohttp, ``--concurrency`` connections in a closed loop); latencies are
measured by that client, so they include its own overhead.

* ``POST /runs`` to the owner: id from etcd, event appended to Kafka, answered after the owner's
  materializer applied it (checkpoints keep running meanwhile); the owner's CPU per creation and
  the mean of its write stages (``runstream_api_write_seconds``: append, apply);
* the same through the non-owner. What the relay adds is measured per request: every answer
  carries ``Server-Timing`` (``api.middleware``): the owner's time as ``owner;dur``, the relaying
  worker's as ``app;dur``; the difference is the hop (the non-owner's own work, the HTTP request
  to the owner, the owner's HTTP parsing and queueing). Also both at once (half the connections
  each), so the client's p50/p99 of the two paths compare under the same load;
* these creation phases ``--rounds`` times (medians and the best round are printed: the machine
  is shared, so single phases vary), after ``--warmup`` seconds of creations that are not counted
  (first connections, the first etcd and Kafka requests of both workers);
* ``GET /runs/{id}`` at the owner and through the non-owner;
* one group's newest 25 (the index), and the listing lag;
* at the end, whether each target of issue 11 is met.

    .venv/bin/python bench/bench_api.py                  # 6 s per phase, 3 rounds
    .venv/bin/python bench/bench_api.py --seconds 4 --rounds 5 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from tqdm import tqdm

from tests.harness import Worker, free_port, make_settings, prepare_topics

GROUP = "/project/bench/branch/main"
BODY = {
    "name": "build",
    "group": GROUP,
    "tasks": [
        {"id": "checkout", "name": "checkout", "steps": [{"run": "git clone"}]},
        {
            "id": "test",
            "name": "test",
            "depends": [{"task_id": "checkout"}],
            "steps": [{"run": "make test"}],
        },
        {
            "id": "lint",
            "name": "lint",
            "depends": [{"task_id": "checkout"}],
            "steps": [{"run": "make lint"}],
        },
    ],
    "environment": {"CI": "true"},
    "static_environment": {"GIT_SHA": "deadbeef"},
    "annotations": {"branch": "main"},
}


# ------------------------------------------------------------------------------ load process


def _timing(value: str, name: str) -> float | None:
    """Seconds of metric ``name`` in a ``Server-Timing`` header (``api.middleware``)."""
    for metric in value.split(","):
        parts = metric.strip().split(";")
        if parts[0] == name:
            for param in parts[1:]:
                key, _, dur = param.strip().partition("=")
                if key == "dur":
                    return float(dur) / 1000
    return None


def _quantiles(values: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds of ``values`` (seconds); (nan, nan) when empty."""
    if not values:
        return float("nan"), float("nan")
    values.sort()
    n = len(values)
    return values[n // 2] * 1000, values[min(n - 1, int(n * 0.99))] * 1000


async def _load(urls: list[str], method: str, path: str, body: bytes | None, seconds: float, concurrency: int, expect: int) -> list[dict[str, Any]]:  # fmt: skip
    """``concurrency`` connections in a closed loop, spread over ``urls`` (all at once), for
    ``seconds``: per url, the client's latencies and, from each answer's ``Server-Timing``, the
    time the owner took (``owner``, else ``app``) and what a relaying worker added around it
    (its ``app`` minus the owner's)."""
    import aiohttp

    latencies: list[list[float]] = [[] for _ in urls]
    owner_took: list[list[float]] = [[] for _ in urls]
    hop: list[list[float]] = [[] for _ in urls]
    errors = [0 for _ in urls]
    deadline = time.perf_counter() + seconds
    headers = {"Content-Type": "application/json"} if body else {}
    sessions = [
        aiohttp.ClientSession(u, connector=aiohttp.TCPConnector(limit=concurrency)) for u in urls
    ]
    try:

        async def worker(i: int) -> None:
            session = sessions[i]
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                async with session.request(method, path, data=body, headers=headers) as resp:
                    await resp.read()
                    took = time.perf_counter() - t0
                    if resp.status != expect:
                        errors[i] += 1
                    timing = resp.headers.get("Server-Timing", "")
                latencies[i].append(took)
                owner, here = _timing(timing, "owner"), _timing(timing, "app")
                if owner is not None and here is not None:
                    owner_took[i].append(owner)
                    hop[i].append(here - owner)
                elif here is not None:
                    owner_took[i].append(here)

        started = time.perf_counter()
        await asyncio.gather(*(worker(k % len(urls)) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        for session in sessions:
            await session.close()
    out = []
    for i in range(len(urls)):
        p50, p99 = _quantiles(latencies[i])
        o50, o99 = _quantiles(owner_took[i])
        h50, h99 = _quantiles(hop[i])
        out.append(
            {
                "requests": len(latencies[i]),
                "errors": errors[i],
                "rps": len(latencies[i]) / elapsed,
                "p50_ms": p50,
                "p99_ms": p99,
                "owner_p50_ms": o50,
                "owner_p99_ms": o99,
                "hop_p50_ms": h50,
                "hop_p99_ms": h99,
            }
        )
    return out


def load_main(argv: list[str]) -> None:
    urls, method, path, body, seconds, conc, expect = argv
    stats = asyncio.run(_load(urls.split(","), method, path, body.encode() or None, float(seconds), int(conc), int(expect)))  # fmt: skip
    print(json.dumps(stats))


def drive_many(urls: list[str], method: str, path: str, body: bytes, seconds: float, concurrency: int, expect: int) -> list[dict[str, Any]]:  # fmt: skip
    """``_load`` in a separate process (the workers' CPU is not shared with the load's)."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--load",
            ",".join(urls),
            method,
            path,
            body.decode(),
            str(seconds),
            str(concurrency),
            str(expect),
        ],
        check=True,
        stdout=subprocess.PIPE,
    ).stdout
    result: list[dict[str, Any]] = json.loads(out)
    return result


def drive(url: str, method: str, path: str, body: bytes, seconds: float, concurrency: int, expect: int) -> dict[str, Any]:  # fmt: skip
    return drive_many([url], method, path, body, seconds, concurrency, expect)[0]


def line(name: str, s: dict[str, Any], base: dict[str, Any] | None = None) -> str:
    ratio = f"  {s['rps'] / base['rps']:.2f}× baseline rps" if base else ""
    return (
        f"{name:<44} {s['rps']:>8,.0f} req/s  p50 {s['p50_ms']:6.2f} ms  p99 {s['p99_ms']:6.2f} ms"
        f"  ({s['requests']:,} requests, {s['errors']} errors){ratio}"
    )


# ------------------------------------------------------------------------------ workers


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds every process of this machine spent so far (Linux /proc/stat: all but idle
    and iowait), to see how much of the machine one creation takes, load and services included."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def service_pids() -> dict[str, int]:
    """The local stack's processes (``deploy/local``'s pid files), to split the machine's CPU."""
    run = Path(os.environ.get("RUNSTREAM_STATE_DIR", Path(__file__).resolve().parent.parent / "var")) / "run"  # fmt: skip
    pids = {}
    for name in ("kafka", "etcd", "s3"):
        with contextlib.suppress(OSError, ValueError):
            pid = int((run / f"{name}.pid").read_text())
            cpu_seconds(pid)  # alive
            pids[name] = pid
    return pids


def write_sums(url: str) -> dict[tuple[str, str], float]:
    """``(stage, "sum" | "count")`` → value of the owner's ``runstream_api_write_seconds``."""
    sums: dict[tuple[str, str], float] = {}
    for ln in httpx.get(f"{url}/metrics").text.splitlines():
        for kind in ("sum", "count"):
            head = f'runstream_api_write_seconds_{kind}{{stage="'
            if ln.startswith(head):
                stage = ln[len(head) :].split('"', 1)[0]
                sums[(stage, kind)] = float(ln.rsplit(" ", 1)[1])
    return sums


def write_stages(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> str:  # fmt: skip
    """Mean milliseconds of the owner's write stages (append, apply) between two scrapes."""
    parts = []
    for stage in ("append", "apply"):
        n = after.get((stage, "count"), 0.0) - before.get((stage, "count"), 0.0)
        if n:
            total = after[(stage, "sum")] - before.get((stage, "sum"), 0.0)
            parts.append(f"{stage} {total / n * 1000:.1f} ms")
    return "mean " + ", ".join(parts)


def listing_lag(url: str, n: int) -> tuple[float, float]:
    """p50 and p99 seconds from a creation's 201 until a listing of its group shows the run."""
    lags: list[float] = []
    group = f"/project/lag{uuid.uuid4().hex[:6]}/branch/main"
    with httpx.Client(base_url=url) as http:
        for _ in range(n):
            run_id = http.post("/api/v1/runs", json={**BODY, "group": group}).json()["run"]["id"]
            t0 = time.perf_counter()
            while True:
                page = http.get("/api/v1/runs", params={"group": group, "limit": 1}).json()
                if page["runs"] and page["runs"][0]["id"] == run_id:
                    break
                time.sleep(0.002)
            lags.append(time.perf_counter() - t0)
    lags.sort()
    return lags[len(lags) // 2], lags[min(len(lags) - 1, int(len(lags) * 0.99))]


def owned(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    for ln in text.splitlines():
        if ln.startswith("runstream_partitions_owned "):
            return float(ln.split()[1])
    return 0.0


def wait_settled(urls: list[str], within: float = 120) -> tuple[str, str]:
    """(owner, non-owner) once both answer /healthz 200 and one owns the partition."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if all(httpx.get(f"{u}/healthz").status_code == 200 for u in urls):
                counts = [owned(u) for u in urls]
                if sorted(counts) == [0.0, 1.0]:
                    owner = urls[counts.index(1.0)]
                    return owner, next(u for u in urls if u != owner)
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("the workers did not settle")


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def creation_round(owner: str, other: str, pids: dict[str, int], body: bytes, secs: float, c: int) -> dict[str, Any]:  # fmt: skip
    """One round of the creation phases: at the owner, through the non-owner, both at once."""
    cpu_o, cpu_n, sums = cpu_seconds(pids[owner]), cpu_seconds(pids[other]), write_sums(owner)
    services = service_pids()
    busy, svc = machine_busy(), {k: cpu_seconds(pid) for k, pid in services.items()}
    at_owner = drive(owner, "POST", "/api/v1/runs", body, secs, c, 201)
    busy2, svc2 = machine_busy(), {k: cpu_seconds(pid) for k, pid in services.items()}
    cpu_o2, cpu_n2, sums2 = cpu_seconds(pids[owner]), cpu_seconds(pids[other]), write_sums(owner)
    relayed = drive(other, "POST", "/api/v1/runs", body, secs, c, 201)
    cpu_o3, cpu_n3 = cpu_seconds(pids[owner]), cpu_seconds(pids[other])
    mixed_owner, mixed_relay = drive_many([owner, other], "POST", "/api/v1/runs", body, secs, c, 201)  # fmt: skip
    n_owner, n_relay = max(1, at_owner["requests"]), max(1, relayed["requests"])
    return {
        "owner": at_owner,
        "relay": relayed,
        "mixed_owner": mixed_owner,
        "mixed_relay": mixed_relay,
        "stages": write_stages(sums, sums2),
        # CPU seconds per creation: the owner's own (direct), and both workers' for a relayed one.
        "cpu_owner": (cpu_o2 - cpu_o + cpu_n2 - cpu_n) / n_owner,
        "cpu_owner_alone": (cpu_o2 - cpu_o) / n_owner,
        # Every process of the machine (load, Kafka, etcd, both workers) per creation.
        "cpu_machine": (busy2 - busy) / n_owner,
        "cpu_services": {k: (svc2[k] - svc[k]) / n_owner for k in svc},
        "cpu_relay_owner": (cpu_o3 - cpu_o2) / n_relay,
        "cpu_relay_other": (cpu_n3 - cpu_n2) / n_relay,
    }


def print_round(i: int, r: dict[str, Any], c: int, base: dict[str, Any]) -> None:
    print(f"-- round {i}")
    print(line(f"POST /runs at the owner (c={c})", r["owner"], base))
    print(
        f"    owner's CPU per creation {r['cpu_owner_alone'] * 1000:.2f} ms "
        f"(both workers {r['cpu_owner'] * 1000:.2f} ms); at the owner, {r['stages']}"
    )
    cores = os.cpu_count() or 1
    print(
        f"    the whole machine's CPU per creation (load, Kafka, etcd, workers) "
        f"{r['cpu_machine'] * 1000:.2f} ms: {cores} cores at that cost serve at most "
        f"{cores / max(r['cpu_machine'], 1e-9):,.0f} req/s"
    )
    known = r["cpu_owner"] + sum(r["cpu_services"].values())
    parts = [f"workers {r['cpu_owner'] * 1000:.2f}"]
    parts += [f"{k} {v * 1000:.2f}" for k, v in r["cpu_services"].items()]
    parts.append(f"load client and the rest {(r['cpu_machine'] - known) * 1000:.2f}")
    print(f"      of which (ms): {', '.join(parts)}")
    print(line(f"POST /runs through the non-owner (c={c})", r["relay"], base))
    print(
        f"    relay adds per request (non-owner's time − owner's, Server-Timing): "
        f"p50 {r['relay']['hop_p50_ms']:.2f} ms, p99 {r['relay']['hop_p99_ms']:.2f} ms; "
        f"CPU per creation: non-owner {r['cpu_relay_other'] * 1000:.2f} ms, "
        f"owner {r['cpu_relay_owner'] * 1000:.2f} ms"
    )
    mo, mr = r["mixed_owner"], r["mixed_relay"]
    print(line(f"  same time: at the owner (c={c // 2})", mo))
    print(line(f"  same time: through the non-owner (c={c - c // 2})", mr))
    print(
        f"    same time, client's view: relay adds p50 {mr['p50_ms'] - mo['p50_ms']:+.2f} ms, "
        f"p99 {mr['p99_ms'] - mo['p99_ms']:+.2f} ms; per request p99 {mr['hop_p99_ms']:.2f} ms"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        load_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--seconds", type=float, default=6.0, help="duration of each load phase")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the creation phases")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of creations first, not counted")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=32, help="connections for creation")
    p.add_argument("--read-concurrency", type=int, default=8, help="connections for reads")
    p.add_argument("--kafka", default=os.environ.get("RUNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    p.add_argument("--etcd", default=os.environ.get("RUNSTREAM_ETCD_ENDPOINT", "127.0.0.1:2379"))
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    unique = f"bapi{uuid.uuid4().hex[:8]}"
    s = make_settings(unique, args.kafka, args.etcd, f"file://{tmp}/objects", partitions=1)
    s = dataclasses.replace(s, checkpoint_interval=5.0, session_timeout=6.0)
    asyncio.run(prepare_topics(s))
    workers = [
        Worker(dataclasses.replace(s, web_port=free_port()), tmp / f"w{i}.log").start()
        for i in range(2)
    ]
    urls = [f"http://127.0.0.1:{w.settings.web_port}" for w in workers]
    try:
        owner, other = wait_settled(urls)
        pids = {u: w.proc.pid for w, u in zip(workers, urls, strict=True) if w.proc}
        c, rc, secs = args.concurrency, args.read_concurrency, args.seconds
        body = json.dumps(BODY).encode()
        print(
            f"owner {owner}, non-owner {other}; load: separate process, {secs:g} s per phase, "
            f"{args.rounds} rounds of creation, after {args.warmup:g} s of warm-up (not counted)"
        )
        phases = tqdm(total=6 + 3 * args.rounds, desc="bench_api", unit="phase", file=sys.stderr)
        if args.warmup > 0:  # first connections, first etcd and Kafka requests of both workers
            drive_many([owner, other], "POST", "/api/v1/runs", body, args.warmup, c, 201)
        phases.update()
        base = drive(owner, "GET", "/healthz", b"", secs, c, 200)
        phases.update()
        rounds = []
        for _ in range(args.rounds):
            rounds.append(creation_round(owner, other, pids, body, secs, c))
            phases.update(3)
        run_id = httpx.post(f"{owner}/api/v1/runs", json=BODY).json()["run"]["id"]
        base_r = drive(owner, "GET", "/healthz", b"", secs, rc, 200)
        phases.update()
        get_owner = drive(owner, "GET", f"/api/v1/runs/{run_id}", b"", secs, rc, 200)
        phases.update()
        get_relay = drive(other, "GET", f"/api/v1/runs/{run_id}", b"", secs, rc, 200)
        phases.update()
        listing = drive(other, "GET", f"/api/v1/runs?group={GROUP}&limit=25", b"", secs, rc, 200)
        phases.update()
        lag50, lag99 = listing_lag(other, 200)
        phases.close()

        print(line(f"baseline GET /healthz (c={c})", base))
        for i, r in enumerate(rounds, 1):
            print_round(i, r, c, base)
        print(line(f"baseline GET /healthz (c={rc})", base_r))
        print(line(f"GET /runs/{{id}} at the owner (c={rc})", get_owner, base_r))
        print(line(f"GET /runs/{{id}} through the non-owner (c={rc})", get_relay, base_r))
        print(
            f"    relay adds per GET (Server-Timing): p50 {get_relay['hop_p50_ms']:.2f} ms, "
            f"p99 {get_relay['hop_p99_ms']:.2f} ms"
        )
        print(line(f"list one group, 25 newest (c={rc})", listing, base_r))
        print(
            f"listing lag (201 → listed, 200 creations, listing from the non-owner): "
            f"p50 {lag50 * 1000:.1f} ms, p99 {lag99 * 1000:.1f} ms"
        )

        rps = [r["owner"]["rps"] for r in rounds]
        p99 = [r["owner"]["p99_ms"] for r in rounds]
        hop99 = [r["relay"]["hop_p99_ms"] for r in rounds]
        cpu = [r["cpu_owner_alone"] * 1000 for r in rounds]
        cpu_relay = [(r["cpu_relay_other"] + r["cpu_relay_owner"]) * 1000 for r in rounds]
        machine = [r["cpu_machine"] * 1000 for r in rounds]
        best = max(rounds, key=lambda r: r["owner"]["rps"])["owner"]
        print(
            f"summary over {len(rounds)} rounds (median; best round): POST at the owner "
            f"{median(rps):,.0f} req/s, p99 {median(p99):.1f} ms "
            f"(best {best['rps']:,.0f} req/s, p99 {best['p99_ms']:.1f} ms); owner's CPU per "
            f"creation {median(cpu):.2f} ms (min {min(cpu):.2f}); a relayed creation costs "
            f"{median(cpu_relay):.2f} ms of CPU over both workers; relay adds p99 "
            f"{median(hop99):.2f} ms (min {min(hop99):.2f}); the machine's CPU per creation "
            f"{median(machine):.2f} ms, so its {os.cpu_count()} cores serve at most "
            f"{(os.cpu_count() or 1) * 1000 / median(machine):,.0f} creations/s"
        )
        owner_ok = median(rps) >= 1500 and median(p99) <= 60
        print(
            f"target POST at the owner ≥ 1,500 req/s with p99 ≤ 60 ms (median of rounds): "
            f"{verdict(owner_ok)}"
        )
        print(f"target relay adds ≤ 10 ms at p99 (median of rounds): {verdict(median(hop99) <= 10)}")  # fmt: skip
        print(
            f"target GET /runs/{{id}} through a non-owner p99 ≤ 10 ms: "
            f"{verdict(get_relay['p99_ms'] <= 10)}"
        )
    finally:
        for w in workers:
            w.stop()


if __name__ == "__main__":
    main()
