"""Index dumps: round-trip, corruption and truncation, fallback, dumper policy, dump + tail."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import Phase, Result
from indexer import (
    BadDump,
    Dumper,
    DumpPolicy,
    DumpStore,
    NoValidDump,
    RunIndex,
    compare,
    decode,
    encode,
    read_header,
    snapshot,
)
from indexer.keys import dump_key
from ost import ObjectInfo, PosixStorage

PHASES = [Phase.QUEUED, Phase.RUNNING, Phase.FINISHED]
Event = tuple[int, str, Phase, Result, int]


def history(n_runs: int, seed: int, n_groups: int = 40) -> list[Event]:
    """Each run goes queued → running → finished with seq 1..3, in its own group."""
    rnd = random.Random(seed)
    events = []
    for rid in range(1, n_runs + 1):
        g = f"/project/{rnd.randrange(n_groups)}/branch/{rnd.choice(['main', 'dev'])}"
        for seq, ph in enumerate(PHASES, start=1):
            res = rnd.choice(list(Result)) if ph is Phase.FINISHED else Result.UNKNOWN
            events.append((rid, g, ph, res, seq))
    return events


def build(events: list[Event]) -> RunIndex:
    ix = RunIndex()
    for e in events:
        ix.apply(*e)
    return ix


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 300),
    seed=st.integers(0, 10_000),
    groups=st.sampled_from([1, 5, 300]),
    order=st.randoms(use_true_random=False),
)
def test_round_trip(n: int, seed: int, groups: int, order: random.Random) -> None:
    events = history(n, seed, groups)
    order.shuffle(events)
    ix = build(events)
    ix.mark_offset("runs.phases/0", 123)
    data = encode(snapshot(ix))
    back, header = decode(data)
    diff = compare(ix, back)
    assert diff.equal, diff.examples
    assert header.offsets == {"runs.phases/0": 123}
    assert header.runs == n
    assert back.offsets == {"runs.phases/0": 123}
    assert back.list_runs(limit=100) == ix.list_runs(limit=100)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_any_single_byte_corruption_or_truncation_is_detected(data: st.DataObject) -> None:
    blob = encode(snapshot(build(history(50, 7))))
    pos = data.draw(st.integers(0, len(blob) - 1))
    if data.draw(st.booleans()):
        bad = blob[:pos]
    else:
        flip = data.draw(st.integers(1, 255))
        bad = blob[:pos] + bytes([blob[pos] ^ flip]) + blob[pos + 1 :]
    with pytest.raises(BadDump):
        decode(bad)


def test_unknown_version_is_reported() -> None:
    blob = bytearray(encode(snapshot(build(history(5, 1)))))
    blob[4] = 9
    with pytest.raises(BadDump, match="unsupported dump format version 9"):
        read_header(bytes(blob))


V1_DUMP = Path(__file__).parent.parent / "golden" / "index-v1" / "dump-v1.rsix"


def test_a_version_1_dump_still_decodes_and_is_what_version_1_writers_wrote() -> None:
    """``dump-v1.rsix`` was written by the version 1 code (before names, counters and times):
    ``build(history(50, 7))``, offset ``runs.phases/0`` 150, created 2026-12-01."""
    blob = V1_DUMP.read_bytes()
    back, header = decode(blob)
    ix = build(history(50, 7))
    assert header.version == 1
    assert (header.runs, header.offsets, header.run_names, header.fact_widths) == (50, {"runs.phases/0": 150}, 0, {})  # fmt: skip
    assert compare(ix, back).equal  # no facts on either side: history() has none
    assert all(e.name == "" and e.enqueue_time is None for e in back.entries())
    # Writing version 1 still gives the old bytes, for readers not upgraded yet.
    ix.mark_offset("runs.phases/0", 150)
    assert encode(snapshot(ix), version=1, now=datetime(2026, 12, 1, tzinfo=UTC)) == blob


def test_version_2_holds_the_facts_and_compare_sees_them() -> None:
    ix = RunIndex()
    ix.apply(3, "/project/a", Phase.QUEUED, Result.UNKNOWN, 1, at=5_000, name="ci\n1", counter=9)
    ix.apply(3, "/project/a", Phase.RUNNING, Result.UNKNOWN, 2, at=7_000)
    ix.apply(4, "/project/a", Phase.FINISHED, Result.SUCCESS, 3, at=2**32 * 1000 - 1)
    back, header = decode(encode(snapshot(ix)))
    assert header.version == 2
    assert (header.run_names, header.fact_widths["counter"]) == (1, 1)
    assert back.get(4).end_time == (2**32 - 1) * 1000  # type: ignore[union-attr]  # the last second held
    assert list(back.entries()) == list(ix.entries())
    assert back.get(3).name == "ci\n1"  # type: ignore[union-attr]
    old, _ = decode(encode(snapshot(ix), version=1))
    diff = compare(ix, old)
    assert (diff.differing, diff.only_in_a, diff.only_in_b) == (2, 0, 0)  # the facts are gone
    assert compare(ix, old, with_seq=False).differing == 2


def test_compare_reports_differences() -> None:
    a = build(history(20, 3))
    b = build(history(20, 3))
    b.apply(5, a.get(5).group, Phase.CANCELLED, Result.STOPPED, 9)  # type: ignore[union-attr]
    b.apply(99, "/project/new", Phase.QUEUED, Result.UNKNOWN, 1)
    diff = compare(a, b)
    assert not diff.equal
    assert (diff.only_in_a, diff.only_in_b, diff.differing) == (0, 1, 1)
    assert any("run 5:" in line for line in diff.examples)


class TornWrites:
    """A storage whose next write leaves only the first half of the object, then fails:
    what a non-atomic store would do if the dumping process died mid-write."""

    def __init__(self, inner: PosixStorage) -> None:
        self.inner = inner
        self.tear_next = False

    async def stat(self, key: str) -> ObjectInfo:
        return await self.inner.stat(key)

    async def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        return await self.inner.read(key, start, length)

    async def write(
        self, key: str, data: bytes | BinaryIO, size: int = -1, persist: bool = True
    ) -> None:
        assert isinstance(data, bytes)
        if self.tear_next:
            self.tear_next = False
            await self.inner.write(key, data[: len(data) // 2])
            raise OSError("killed mid-write")
        await self.inner.write(key, data, size, persist)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    def list(
        self, prefix: str, start_after: str = "", recursive: bool = True
    ) -> AsyncIterator[ObjectInfo]:
        return self.inner.list(prefix, start_after, recursive)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_dumper_policy_lock_and_retention(tmp_path: Path) -> None:
    store = DumpStore(PosixStorage(tmp_path), prefix="dm/")
    ix, clock, lock = RunIndex(), Clock(), asyncio.Lock()
    dumper = Dumper(
        ix, store, lock, DumpPolicy(every_seconds=60, every_changes=10, keep=2), clock=clock
    )
    assert await dumper.once() is None  # nothing changed
    for e in history(3, 1):  # 9 changes
        ix.apply(*e)
    assert await dumper.once() is None
    ix.apply(100, "/project/a", Phase.QUEUED, Result.UNKNOWN, 1)  # 10th change
    first = await dumper.once()
    assert first is not None
    assert first.number == 1
    assert first.key == dump_key(1, "dm/")
    ix.apply(101, "/project/a", Phase.QUEUED, Result.UNKNOWN, 1)
    assert await dumper.once() is None
    clock.now += 60
    assert (await dumper.once()) is not None
    clock.now += 3600
    assert await dumper.once() is None  # time passed, but nothing changed
    for _ in range(3):
        assert (await dumper.once(force=True)) is not None
    assert await store.numbers() == [4, 5]
    loaded = await store.load_latest()
    assert loaded is not None
    assert loaded.number == 5
    assert compare(loaded.index, ix).equal
    assert not lock.locked()


async def test_interrupted_dump_falls_back_to_previous(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torn = TornWrites(PosixStorage(tmp_path))
    store = DumpStore(torn)
    ix = build(history(30, 2))
    ix.mark_offset("runs.phases/0", 90)
    dumper = Dumper(ix, store, asyncio.Lock(), DumpPolicy(keep=1))
    assert (await dumper.once(force=True)) is not None
    ix.apply(500, "/project/late", Phase.QUEUED, Result.UNKNOWN, 1)
    ix.mark_offset("runs.phases/0", 91)
    torn.tear_next = True
    with pytest.raises(OSError, match="mid-write"):
        await dumper.once(force=True)
    assert await store.numbers() == [1, 2]  # nothing was pruned after the failure
    with caplog.at_level(logging.WARNING, logger="indexer.store"):
        loaded = await store.load_latest()
    assert loaded is not None
    assert loaded.number == 1
    assert loaded.skipped == (dump_key(2),)
    assert loaded.header.offsets == {"runs.phases/0": 90}
    assert loaded.index.get(500) is None
    assert "dump index/dumps/00000000000000000002.rsix is unusable" in caplog.text
    assert "truncated" in caplog.text
    # The next successful dump takes a fresh number and prunes past the torn one.
    again = await dumper.once(force=True)
    assert again is not None
    assert again.number == 3
    assert await store.numbers() == [3]


async def test_corrupt_dump_detected_by_checksum(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = PosixStorage(tmp_path)
    store = DumpStore(storage)
    good = encode(snapshot(build(history(10, 4))))
    await store.write(good)
    rotten = bytearray(good)
    rotten[len(rotten) // 2] ^= 0x40
    await store.write(bytes(rotten))
    with caplog.at_level(logging.WARNING, logger="indexer.store"):
        loaded = await store.load_latest()
    assert loaded is not None
    assert loaded.number == 1
    assert "checksum mismatch" in caplog.text


async def test_no_dump_and_no_valid_dump(tmp_path: Path) -> None:
    storage = PosixStorage(tmp_path)
    store = DumpStore(storage)
    assert await store.load_latest() is None
    await storage.write("index/dumps/unrelated.txt", b"x")  # strays are ignored
    assert await store.load_latest() is None
    await store.write(b"RSIX garbage")
    with pytest.raises(NoValidDump):
        await store.load_latest()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 1000),
    cut=st.lists(st.floats(0, 1), min_size=3, max_size=3),
    redeliver=st.integers(0, 30),
)
def test_dump_plus_tail_equals_full_rebuild(
    tmp_path_factory: pytest.TempPathFactory, seed: int, cut: list[float], redeliver: int
) -> None:
    """Three partitions (by run id); dump after a prefix of each, load, replay each tail from
    the offsets in the dump (with some records redelivered), compare with one full rebuild."""
    events = history(120, seed)
    parts = [[e for e in events if e[0] % 3 == p] for p in range(3)]
    full = build(events[::-1] if seed % 2 else events)  # order must not matter
    live = RunIndex()
    for p, part in enumerate(parts):
        for e in part[: int(len(part) * cut[p])]:
            live.apply(*e)
        live.mark_offset(f"runs.phases/{p}", int(len(part) * cut[p]))

    async def scenario() -> RunIndex:
        store = DumpStore(PosixStorage(tmp_path_factory.mktemp("ost")))
        await Dumper(live, store, asyncio.Lock()).once(force=True)
        loaded = await store.load_latest()
        assert loaded is not None
        ix = loaded.index
        for p, part in enumerate(parts):
            start = loaded.header.offsets[f"runs.phases/{p}"]
            for e in part[max(0, start - redeliver) :]:
                ix.apply(*e)
        return ix

    rebuilt = asyncio.run(scenario())
    diff = compare(rebuilt, full)
    assert diff.equal, diff.examples


class Reentrant:
    """Like a lease lock for its own holder: entering again while held does not wait."""

    async def __aenter__(self) -> Reentrant:
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(0)


async def test_concurrent_dumps_in_one_process_take_distinct_numbers(tmp_path: Path) -> None:
    store = DumpStore(PosixStorage(tmp_path))
    dumper = Dumper(build(history(50, 5)), store, Reentrant(), DumpPolicy(keep=10))
    results = await asyncio.gather(*(dumper.once(force=True) for _ in range(4)))
    assert sorted(r.number for r in results if r is not None) == [1, 2, 3, 4]
    assert await store.numbers() == [1, 2, 3, 4]
