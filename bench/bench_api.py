"""HTTP API figures of real workers, each beside the same run's ``GET /healthz`` baseline.

Two ``runstream worker`` processes in one consumer group on the local stack, over topics of
**one** partition: one worker owns every run (the *owner*), the other owns none (the
*non-owner*), so each request can be aimed at either. The load comes from a separate Python
process on loopback (aiohttp, ``--concurrency`` connections in a closed loop); latencies are
measured by that client, so they include its own overhead.

* ``POST /runs`` to the owner: id from etcd, event appended to Kafka, answered after the owner's
  materializer applied it (checkpoints keep running meanwhile);
* the same through the non-owner: the relay's cost is the difference of the two;
* ``GET /runs/{id}`` at the owner and through the non-owner;
* one group's newest 25 (the index), for the listing lag figure's context.

    .venv/bin/python bench/bench_api.py                  # 8 s per phase
    .venv/bin/python bench/bench_api.py --seconds 4 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
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


async def _load(url: str, method: str, path: str, body: bytes | None, seconds: float, concurrency: int, expect: int) -> dict[str, Any]:  # fmt: skip
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    headers = {"Content-Type": "application/json"} if body else {}
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=conn) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                async with session.request(method, path, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != expect:
                        errors += 1
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "errors": errors,
        "rps": n / elapsed,
        "p50_ms": latencies[n // 2] * 1000,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000,
    }


def load_main(argv: list[str]) -> None:
    url, method, path, body, seconds, conc, expect = argv
    stats = asyncio.run(_load(url, method, path, body.encode() or None, float(seconds), int(conc), int(expect)))  # fmt: skip
    print(json.dumps(stats))


def drive(url: str, method: str, path: str, body: bytes, seconds: float, concurrency: int, expect: int) -> dict[str, Any]:  # fmt: skip
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--load",
            url,
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
    result: dict[str, Any] = json.loads(out)
    return result


def line(name: str, s: dict[str, Any], base: dict[str, Any] | None = None) -> str:
    ratio = f"  {s['rps'] / base['rps']:.2f}× baseline rps" if base else ""
    return (
        f"{name:<40} {s['rps']:>8,.0f} req/s  p50 {s['p50_ms']:6.2f} ms  p99 {s['p99_ms']:6.2f} ms"
        f"  ({s['requests']:,} requests, {s['errors']} errors){ratio}"
    )


# ------------------------------------------------------------------------------ workers


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_stages(url: str) -> str:
    """Mean seconds of the owner's write stages (append, apply) from its /metrics."""
    sums: dict[tuple[str, str], float] = {}
    for ln in httpx.get(f"{url}/metrics").text.splitlines():
        for kind in ("sum", "count"):
            head = f'runstream_api_write_seconds_{kind}{{stage="'
            if ln.startswith(head):
                stage = ln[len(head) :].split('"', 1)[0]
                sums[(stage, kind)] = float(ln.rsplit(" ", 1)[1])
    parts = []
    for stage in ("append", "apply"):
        n = sums.get((stage, "count"), 0.0)
        if n:
            parts.append(f"{stage} {sums[(stage, 'sum')] / n * 1000:.1f} ms")
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


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        load_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--seconds", type=float, default=8.0, help="duration of each load phase")
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
        c, rc, secs = args.concurrency, args.read_concurrency, args.seconds
        body = json.dumps(BODY).encode()
        print(f"owner {owner}, non-owner {other}; load: separate process, {secs:.0f}s per phase")
        phases = tqdm(total=7, desc="bench_api", unit="phase", file=sys.stderr)
        base = drive(owner, "GET", "/healthz", b"", secs, c, 200)
        phases.update()
        owner_pid = next(w.proc.pid for w, u in zip(workers, urls, strict=True) if u == owner and w.proc)  # fmt: skip
        cpu0 = cpu_seconds(owner_pid)
        post_owner = drive(owner, "POST", "/api/v1/runs", body, secs, c, 201)
        owner_cpu = (cpu_seconds(owner_pid) - cpu0) / max(1, post_owner["requests"])
        stages = write_stages(owner)
        phases.update()
        post_relay = drive(other, "POST", "/api/v1/runs", body, secs, c, 201)
        phases.update()
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
        print(line(f"POST /runs at the owner (c={c})", post_owner, base))
        print(line(f"POST /runs through the non-owner (c={c})", post_relay, base))
        print(f"owner's CPU per creation: {owner_cpu * 1000:.2f} ms; at the owner, {stages}")
        print(line(f"baseline GET /healthz (c={rc})", base_r))
        print(line(f"GET /runs/{{id}} at the owner (c={rc})", get_owner, base_r))
        print(line(f"GET /runs/{{id}} through the non-owner (c={rc})", get_relay, base_r))
        print(line(f"list one group, 25 newest (c={rc})", listing, base_r))
        print(
            f"listing lag (201 → listed, 200 creations, listing from the non-owner): "
            f"p50 {lag50 * 1000:.1f} ms, p99 {lag99 * 1000:.1f} ms"
        )
        print(
            f"relay adds: POST p99 {post_relay['p99_ms'] - post_owner['p99_ms']:+.2f} ms, "
            f"p50 {post_relay['p50_ms'] - post_owner['p50_ms']:+.2f} ms; "
            f"GET p99 {get_relay['p99_ms'] - get_owner['p99_ms']:+.2f} ms"
        )
        print(
            "targets: POST at the owner ≥ 1,500 req/s, p99 ≤ 60 ms; relay adds ≤ 10 ms at p99; "
            "GET through a non-owner p99 ≤ 10 ms"
        )
    finally:
        for w in workers:
            w.stop()


if __name__ == "__main__":
    main()
