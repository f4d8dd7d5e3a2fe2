"""The run index against SQLite with Agola's read-database schema, on the same data and queries.

Data: N runs (default 1,000,000, dense ids) over G group paths (default 10,000: branches, tags,
pull requests of projects, and user branches) with Zipf-like popularity; 98% of runs final.
Each run is indexed as the indexer sees it: its phase changes in order (queued with its name,
counter and enqueue time; running with its start; a final phase with its end), names from two
per project (``build-<project>``, ``deploy-<project>``), counters dense per root group.
Figures: dump size per run (raw, compressed; and Agola's JSON index dump for scale), memory per
run (sum of buffers, and tracemalloc after a load), dump load time, lookup and one-group page
latencies (p50/p99). SQLite gets ``run(id, grouppath, phase, result)`` with Agola's primary key
(id, grouppath, phase), an index on grouppath, grouppath stored with a trailing "/" and
``LIKE 'prefix/%'`` (with ``case_sensitive_like`` on, so the grouppath index can serve LIKE).

    .venv/bin/python bench/bench_index.py                 # the issue's figures
    .venv/bin/python bench/bench_index.py --runs 100000 --groups 1000   # quick
"""

from __future__ import annotations

import argparse
import gc
import random
import sqlite3
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence

import numpy as np
import orjson
import zstandard
from tqdm import tqdm

from agents.indexing import INDEX_BYTES_CHUNK
from events import Phase, Result, format_run_id
from indexer import RunIndex, decode, encode, snapshot

PHASES = [Phase.FINISHED, Phase.RUNNING, Phase.QUEUED, Phase.CANCELLED, Phase.SETUPERROR]
PHASE_P = [0.975, 0.01, 0.005, 0.007, 0.003]
RESULTS = [Result.SUCCESS, Result.FAILED, Result.STOPPED]
RESULT_P = [0.8, 0.15, 0.05]
BASE_ID = 1_000_000


def group_names(n: int, rnd: random.Random) -> list[str]:
    """n distinct paths: ~5 refs per project, some users' branches."""
    names = []
    for i in range(n):
        project, kind = i // 5, i % 5
        if kind == 0:
            names.append(f"/project/{project:06d}/branch/main")
        elif kind == 1:
            names.append(f"/project/{project:06d}/branch/feature-{rnd.randrange(10**6)}")
        elif kind == 2:
            names.append(f"/project/{project:06d}/tag/v1.{rnd.randrange(1000)}.{i}")
        elif kind == 3:
            names.append(f"/project/{project:06d}/pr/{rnd.randrange(1, 10**5)}")
        else:
            names.append(f"/user/{project:06d}/branch/main")
    return names


def make_data(
    runs: int, groups: int, skew: float, seed: int
) -> tuple[list[str], list[int], list[int], list[int]]:
    """Group names, and per run (id BASE_ID + i): group index, phase index, result index."""
    rng = np.random.default_rng(seed)
    names = group_names(groups, random.Random(seed))
    weights = 1.0 / np.arange(1, groups + 1) ** skew
    popular = rng.permutation(groups)  # popularity unrelated to name order
    gsel = popular[rng.choice(groups, size=runs, p=weights / weights.sum())]
    phase = rng.choice(len(PHASES), size=runs, p=PHASE_P)
    result = rng.choice(len(RESULTS), size=runs, p=RESULT_P)
    return names, gsel.tolist(), phase.tolist(), result.tolist()


def result_of(phase_i: int, result_i: int) -> Result:
    return RESULTS[result_i] if PHASES[phase_i] is Phase.FINISHED else Result.UNKNOWN


def pct(samples_ns: Sequence[int], q: float) -> float:
    """q-quantile in microseconds."""
    ordered = sorted(samples_ns)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def timed(calls: Sequence[object], fn: Callable[[object], object], desc: str) -> list[int]:
    out = []
    gc.disable()  # a collection in the middle of a 2 µs call is not the index's latency
    try:
        for arg in tqdm(calls, desc=desc, leave=False, mininterval=0.5):
            t0 = time.perf_counter_ns()
            fn(arg)
            out.append(time.perf_counter_ns() - t0)
    finally:
        gc.enable()
    return out


T0 = 1_780_000_000_000  # ms; a run is created every 300 ms, runs for up to 20 minutes


def build_index(
    names: list[str], g: list[int], ph: list[int], rs: list[int]
) -> tuple[RunIndex, float, int]:
    """The index after every run's phase changes; seconds taken; changes applied."""
    ix = RunIndex()
    rnd = random.Random(1)
    roots = [n.split("/")[2] for n in names]  # /project/<id>/... and /user/<id>/...
    kinds = [n.split("/")[1] for n in names]
    counters: dict[tuple[str, str], int] = {}
    changes = 0
    t0 = time.perf_counter()
    for i in tqdm(range(len(g)), desc="index: apply", leave=False, mininterval=0.5):
        rid, group, phase = BASE_ID + i, names[g[i]], PHASES[ph[i]]
        root = (kinds[g[i]], roots[g[i]])
        counter = counters[root] = counters.get(root, 0) + 1
        name = f"{'build' if rnd.random() < 0.8 else 'deploy'}-{roots[g[i]]}"
        at = T0 + 300 * i
        first = Phase.SETUPERROR if phase is Phase.SETUPERROR else Phase.QUEUED
        ix.apply(rid, group, first, Result.UNKNOWN, 1, at=at, name=name, counter=counter)
        seq = 1
        if phase in (Phase.RUNNING, Phase.FINISHED):
            seq += 1
            at += rnd.randrange(60_000)
            ix.apply(rid, group, Phase.RUNNING, Result.UNKNOWN, seq, at=at)
        if phase in (Phase.FINISHED, Phase.CANCELLED):
            seq += 1
            at += rnd.randrange(1_200_000)
            ix.apply(rid, group, phase, result_of(ph[i], rs[i]), seq, at=at)
        changes += seq
    return ix, time.perf_counter() - t0, changes


def build_sqlite(
    names: list[str], g: list[int], ph: list[int], rs: list[int]
) -> tuple[sqlite3.Connection, float]:
    db = sqlite3.connect(":memory:")
    db.execute("pragma case_sensitive_like = on")
    db.execute(
        "create table run (id varchar, grouppath varchar, phase varchar, result varchar,"
        " primary key (id, grouppath, phase))"
    )
    t0 = time.perf_counter()
    rows = (
        (
            format_run_id(BASE_ID + i),
            names[g[i]] + "/",
            str(PHASES[ph[i]]),
            str(result_of(ph[i], rs[i])),
        )
        for i in tqdm(range(len(g)), desc="sqlite: insert", leave=False, mininterval=0.5)
    )
    db.executemany("insert into run values (?, ?, ?, ?)", rows)
    db.execute("create index run_grouppath_idx on run (grouppath)")
    db.commit()
    return db, time.perf_counter() - t0


def agola_dump_size(ix: RunIndex) -> tuple[int, int]:
    """Bytes of Agola's index dump (a stream of {"ID","Group","Phase"} JSON objects), raw and zstd."""
    chunks = []
    for e in tqdm(ix.entries(), desc="agola json dump", leave=False, mininterval=0.5):
        chunks.append(orjson.dumps({"ID": e.id, "Group": e.group + "/", "Phase": str(e.phase)}))
    raw = b"".join(chunks)
    return len(raw), len(zstandard.ZstdCompressor(level=3).compress(raw))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--groups", type=int, default=10_000)
    ap.add_argument("--skew", type=float, default=1.1, help="Zipf exponent of group popularity")
    ap.add_argument("--lookups", type=int, default=100_000)
    ap.add_argument("--pages", type=int, default=20_000)
    ap.add_argument(
        "--sqlite-queries", type=int, default=2_000, help="SQLite is slower: fewer samples"
    )
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    n = args.runs
    print(f"{n:,} runs over {args.groups:,} groups (Zipf {args.skew}), seed {args.seed}")
    names, g, ph, rs = make_data(n, args.groups, args.skew, args.seed)

    ix, apply_s, changes = build_index(names, g, ph, rs)
    print(
        f"build by apply(): {apply_s:.2f} s ({changes / apply_s:,.0f} updates/s),"
        f" {len(ix.groups):,} groups, {len(ix.names):,} run names"
    )
    t0 = time.perf_counter()
    mem_apply = ix.memory_bytes()
    walk_s = time.perf_counter() - t0
    steps = []  # the worker reads it in parts (agents.indexing), its loop handed back between slices
    t0 = time.perf_counter()
    for _ in ix.memory_parts(INDEX_BYTES_CHUNK):
        t1 = time.perf_counter()
        steps.append(t1 - t0)
        t0 = t1
    print(
        f"sizing the index (runstream_index_bytes): one walk {walk_s * 1e3:.2f} ms; in"
        f" {len(steps)} parts of {INDEX_BYTES_CHUNK:,} (the worker's), the longest {max(steps) * 1e3:.2f} ms"
    )

    t0 = time.perf_counter()
    blob = encode(snapshot(ix))
    encode_s = time.perf_counter() - t0
    back, header = decode(blob)
    loads = []
    for _ in tqdm(range(5), desc="dump: load", leave=False):
        del back
        gc.collect()
        t0 = time.perf_counter()
        back, header = decode(blob)
        loads.append(time.perf_counter() - t0)
    del back
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ix2, _ = decode(blob)
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    agola_raw, agola_zst = agola_dump_size(ix2)

    rnd = random.Random(args.seed)
    ids = [BASE_ID + rnd.randrange(n) for _ in range(args.lookups)]
    weights = np.bincount(np.array(g), minlength=args.groups)
    used = [i for i in range(args.groups) if weights[i]]
    popular = rnd.choices(range(args.groups), weights=weights.tolist(), k=args.pages // 2)
    uniform = [rnd.choice(used) for _ in range(args.pages - len(popular))]
    page_groups = [names[i] for i in popular + uniform]
    rnd.shuffle(page_groups)

    look = timed(ids, lambda r: ix2.get(r), "index: lookups")  # type: ignore[arg-type]
    page = timed(page_groups, lambda q: ix2.list_runs(groups=[q], limit=25), "index: pages")  # type: ignore[list-item]
    deep = [
        (q, ix2.list_runs(groups=[q], limit=100).next_cursor)
        for q in page_groups[: args.pages // 4]
    ]
    deep_t = timed(
        deep,
        lambda a: ix2.list_runs(groups=[a[0]], limit=25, cursor=a[1]),
        "index: deeper pages",  # type: ignore[index]
    )
    projects = [q.rsplit("/", 2)[0] for q in page_groups[: args.pages // 4]]
    proj_t = timed(projects, lambda q: ix2.list_runs(groups=[q], limit=25), "index: project pages")  # type: ignore[list-item]
    last_t = timed(
        projects[:2000],
        lambda q: ix2.list_runs(groups=[q], last_run=True),
        "index: lastrun",  # type: ignore[list-item]
    )

    db, sqlite_build_s = build_sqlite(names, g, ph, rs)
    sq = args.sqlite_queries
    sql_look = timed(
        [format_run_id(r) for r in ids[:sq]],
        lambda r: db.execute(
            "select id, grouppath, phase, result from run where id = ?", (r,)
        ).fetchall(),
        "sqlite: lookups",
    )
    sql_page = timed(
        page_groups[:sq],
        lambda q: db.execute(
            "select id, grouppath, phase, result from run where grouppath like ?"
            " order by id desc limit 26",
            (f"{q}/%",),
        ).fetchall(),
        "sqlite: pages",
    )
    (sql_pages_n,) = db.execute("pragma page_count").fetchone()
    (sql_page_size,) = db.execute("pragma page_size").fetchone()
    sql_bytes = sql_pages_n * sql_page_size

    print()
    print(f"{'figure':44} {'index':>12} {'sqlite/agola':>14} {'ratio':>8}  target")
    rows = [
        ("dump, bytes/run raw", header.raw_size / n, agola_raw / n, "≤ 16"),
        ("dump, bytes/run compressed (zstd)", len(blob) / n, agola_zst / n, "≤ 4"),
        ("memory, bytes/run (buffers, after apply)", mem_apply / n, sql_bytes / n, "≤ 40"),
        ("memory, bytes/run (tracemalloc, after load)", traced / n, sql_bytes / n, "≤ 40"),
        (
            "load dump / sqlite insert, ms (median of 5)",
            statistics.median(loads) * 1e3,
            sqlite_build_s * 1e3,
            "≤ 200",
        ),
        ("load dump, ms (worst of 5)", max(loads) * 1e3, sqlite_build_s * 1e3, ""),
        ("lookup p50, µs", pct(look, 0.5), pct(sql_look, 0.5), ""),
        ("lookup p99, µs", pct(look, 0.99), pct(sql_look, 0.99), "≤ 5"),
        ("one-group page of 25 p50, µs", pct(page, 0.5), pct(sql_page, 0.5), ""),
        ("one-group page of 25 p99, µs", pct(page, 0.99), pct(sql_page, 0.99), "≤ 50"),
    ]
    for label, ours, theirs, target in rows:
        print(f"{label:44} {ours:12.2f} {theirs:14.2f} {theirs / ours:7.1f}×  {target}")
    print(
        f"{'one-group page after a cursor p50/p99, µs':44} {pct(deep_t, 0.5):6.2f}/{pct(deep_t, 0.99):.2f}"
    )
    print(
        f"{'project-prefix page of 25 p50/p99, µs':44} {pct(proj_t, 0.5):6.2f}/{pct(proj_t, 0.99):.2f}"
    )
    print(f"{'project lastrun p50/p99, µs':44} {pct(last_t, 0.5):6.2f}/{pct(last_t, 0.99):.2f}")
    print(
        f"dump encode {encode_s * 1e3:.0f} ms; dump {len(blob):,} B; sqlite db {sql_bytes:,} B;"
        f" agola json dump {agola_raw:,} B raw, {agola_zst:,} B zstd"
    )
    print(
        "sqlite/agola column: SQLite (memory = database pages; load = insert + index) except the"
        " dump rows, which are Agola's JSON index dump. ratio = sqlite/agola ÷ index."
    )


if __name__ == "__main__":
    main()
