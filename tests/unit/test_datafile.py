"""The SSTable data file format: round trips, splitting, point lookups, corruption."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datamanager import datafile
from datamanager.errors import CorruptData
from datamanager.merge import merge_entries
from events import format_run_id


def entries(n: int, size: int = 100, start: int = 1) -> list[tuple[str, bytes]]:
    return [
        (format_run_id(i), (b"%d:" % i) * (size // 8) + os.urandom(4))
        for i in range(start, start + n)
    ]


def lookup(f: datafile.EncodedFile, entry_id: str) -> bytes | None:
    blocks = datafile.decode_index(f.data[f.index_offset : f.index_offset + f.index_length])
    block = datafile.find_block(blocks, entry_id)
    if block is None:
        return None
    ids, values = datafile.decode_block(
        f.data[block.offset : block.offset + block.length], block.crc
    )
    return datafile.lookup(ids, values, entry_id)


entry_lists = st.dictionaries(
    st.text(min_size=1, max_size=12), st.binary(max_size=300), max_size=200
).map(lambda d: sorted(d.items()))


@settings(max_examples=150, deadline=None)
@given(entry_lists, st.sampled_from([64, 1024, 1 << 16]), st.sampled_from([200, 4096, 1 << 20]))
def test_round_trip_and_point_reads(
    items: list[tuple[str, bytes]], block: int, max_size: int
) -> None:
    files = datafile.encode_files(items, max_file_size=max_size, block_size=block)
    decoded = [e for f in files for e in datafile.decode_file(f.data)]
    assert decoded == items
    assert sum(f.count for f in files) == len(items)
    for f in files:
        for entry_id, value in datafile.decode_file(f.data):
            assert lookup(f, entry_id) == value
            assert f.first_id <= entry_id <= f.last_id
    for a, b in itertools.pairwise(files):
        assert a.last_id < b.first_id


def test_no_entries_no_files() -> None:
    assert datafile.encode_files([], max_file_size=1 << 20) == []


def test_split_at_max_size() -> None:
    items = [(format_run_id(i), os.urandom(200)) for i in range(1, 20_001)]  # incompressible
    max_size = 256 << 10
    files = datafile.encode_files(items, max_file_size=max_size, block_size=8 << 10)
    assert len(files) > 3
    for f in files:
        assert len(f.data) <= max_size
    # Every file except the last is reasonably full: splitting is not wasteful.
    assert all(len(f.data) > max_size // 2 for f in files[:-1])
    assert [e for f in files for e in datafile.decode_file(f.data)] == items


def test_a_block_bigger_than_the_max_gets_a_file_of_its_own() -> None:
    items = [("a", os.urandom(5000)), ("b", os.urandom(5000)), ("c", b"small")]
    files = datafile.encode_files(items, max_file_size=1000, block_size=100)
    assert [f.count for f in files] == [1, 1, 1]
    assert [e for f in files for e in datafile.decode_file(f.data)] == items


def test_missing_ids_are_not_found() -> None:
    [f] = datafile.encode_files(
        entries(1000, start=10, size=50)[::2], max_file_size=1 << 20, block_size=1024
    )
    assert lookup(f, format_run_id(10)) is not None
    assert lookup(f, format_run_id(11)) is None  # between two present ids
    assert lookup(f, format_run_id(1)) is None  # before the first
    assert lookup(f, format_run_id(99_999)) is None  # after the last


def test_ids_must_be_strictly_increasing() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        datafile.encode_files([("b", b""), ("a", b"")], max_file_size=1 << 20)
    with pytest.raises(ValueError, match="strictly increasing"):
        datafile.encode_files([("a", b""), ("a", b"")], max_file_size=1 << 20)


def test_non_ascii_ids() -> None:
    items = sorted({"é": b"1", "z": b"2", "日本": b"3", "a": b""}.items())
    [f] = datafile.encode_files(items, max_file_size=1 << 20)
    assert datafile.decode_file(f.data) == items
    assert lookup(f, "日本") == b"3"


def test_footer_describes_the_file() -> None:
    [f] = datafile.encode_files(entries(50), max_file_size=1 << 20)
    footer = datafile.decode_footer(f.data)
    assert (footer.index_offset, footer.index_length) == (f.index_offset, f.index_length)
    assert footer.entry_count == 50
    assert f.data.endswith(datafile.MAGIC)


@pytest.mark.parametrize("where", ["block", "index", "footer", "magic"])
def test_corruption_is_detected(where: str) -> None:
    [f] = datafile.encode_files(entries(500), max_file_size=1 << 20, block_size=4096)
    data = bytearray(f.data)
    pos = {
        "block": 10,
        "index": f.index_offset + 5,
        "footer": len(data) - 20,
        "magic": len(data) - 1,
    }[where]
    data[pos] ^= 0xFF
    with pytest.raises(CorruptData):
        datafile.decode_file(bytes(data))


def test_truncated_file_is_corrupt() -> None:
    with pytest.raises(CorruptData):
        datafile.decode_file(b"RSDF")


def test_meta_is_stored_in_every_file() -> None:
    meta = {"partition": "p", "seq": 3, "offsets": {"runs.events/0": 42}}
    files = datafile.encode_files(
        [(format_run_id(i), os.urandom(100)) for i in range(1, 2001)],
        max_file_size=32 << 10,
        block_size=2048,
        meta=meta,
    )
    assert len(files) > 1
    assert all(datafile.read_meta(f.data) == meta for f in files)
    [plain] = datafile.encode_files([("a", b"")], max_file_size=1 << 20)
    assert datafile.read_meta(plain.data) == {}


# ------------------------------------------------------------ merging changes into a file
def _merged(data: bytes, changes: dict[str, bytes | None]) -> list[tuple[str, bytes]]:
    """What a full decode, merge and encode of ``data`` holds: the reference."""
    return merge_entries(datafile.decode_file(data), changes)


def _index(f: datafile.EncodedFile) -> list[datafile.BlockRef]:
    return datafile.decode_index(f.data[f.index_offset : f.index_offset + f.index_length])


change_maps = st.dictionaries(
    st.text(min_size=1, max_size=12), st.one_of(st.none(), st.binary(max_size=300)), max_size=60
)


@settings(max_examples=200, deadline=None)
@given(
    entry_lists.filter(bool),
    change_maps,
    st.sampled_from([64, 1024, 1 << 16]),
    st.sampled_from([200, 4096, 1 << 20]),
)
def test_a_merge_holds_what_a_full_rewrite_holds(
    items: list[tuple[str, bytes]], changes: dict[str, bytes | None], block: int, max_size: int
) -> None:
    [old] = datafile.encode_files(items, max_file_size=1 << 30, block_size=block)
    files = datafile.merge_file(old.data, changes, max_file_size=max_size, block_size=block)
    want = _merged(old.data, changes)
    assert [e for f in files for e in datafile.decode_file(f.data)] == want
    assert sum(f.count for f in files) == len(want)
    for f in files:
        assert len(_index(f)) == 1 or len(f.data) <= max_size
        for entry_id, value in datafile.decode_file(f.data):
            assert lookup(f, entry_id) == value
            assert f.first_id <= entry_id <= f.last_id
    for a, b in itertools.pairwise(files):
        assert a.last_id < b.first_id


def test_a_merge_carries_the_blocks_no_change_falls_into_over_as_they_are() -> None:
    [old] = datafile.encode_files(entries(2000, size=200), max_file_size=1 << 30, block_size=4096)
    blocks = _index(old)
    assert len(blocks) > 50
    middle = blocks[len(blocks) // 2]
    changes: dict[str, bytes | None] = {middle.first_id: b"changed"}
    [new] = datafile.merge_file(old.data, changes, max_file_size=1 << 30, block_size=4096)
    carried = {(b.first_id, b.last_id, b.crc) for b in blocks} & {
        (b.first_id, b.last_id, b.crc) for b in _index(new)
    }
    # The changed block is cut again (with its neighbour when what is left of it is small).
    assert len(carried) >= len(blocks) - 2
    assert middle.crc not in {b.crc for b in _index(new)}
    assert lookup(new, middle.first_id) == b"changed"


def test_small_blocks_do_not_pile_up_over_many_merges() -> None:
    """Checkpoint after checkpoint, a few runs change, some end and new ones come: the file
    keeps about as many blocks as writing it whole would give."""
    items = entries(1000, size=200)
    [f] = datafile.encode_files(items, max_file_size=1 << 30, block_size=4096)
    data, live, nxt = f.data, dict(items), 1001
    rng = __import__("random").Random(7)
    for _ in range(300):
        changes: dict[str, bytes | None] = {}
        for entry_id in rng.sample(sorted(live), 5):
            changes[entry_id] = None if rng.random() < 0.3 else os.urandom(150 + rng.randrange(100))  # fmt: skip
        for entry_id, value in entries(3, size=200, start=nxt):
            changes[entry_id] = value
        nxt += 3
        for entry_id, value in changes.items():
            if value is None:
                live.pop(entry_id, None)
            else:
                live[entry_id] = value
        [f] = datafile.merge_file(data, changes, max_file_size=1 << 30, block_size=4096)
        data = f.data
    assert datafile.decode_file(data) == sorted(live.items())
    [whole] = datafile.encode_files(sorted(live.items()), max_file_size=1 << 30, block_size=4096)
    assert len(_index(f)) <= 2 * len(_index(whole))


def test_a_merge_that_deletes_every_entry_leaves_no_file() -> None:
    items = entries(30)
    [old] = datafile.encode_files(items, max_file_size=1 << 30, block_size=512)
    gone: dict[str, bytes | None] = {entry_id: None for entry_id, _ in items}
    assert datafile.merge_file(old.data, gone, max_file_size=1 << 30, block_size=512) == []
