"""The data file format: an SSTable of one datatype's entries (see docs/datafile-format.md).

A file is ``block* index footer``. Entries are sorted by id and grouped into blocks of about
``block_size`` raw bytes, each compressed with zstd. The index lists, per block, its first and
last id, offset, compressed length, entry count and crc32, plus the writer's ``meta`` (the
partition, checkpoint sequence and log offsets covered); the fixed 36-byte footer locates the
index. A point read is one ranged read of the index (cacheable) and one of a block; a snapshot
load reads the file whole. A raw block is laid out for cheap bulk splitting:
``u32 count | u32 id_len[count] | u32 value_len[count] | ids... | values...``.

This module is pure (no I/O): it encodes and decodes bytes.
"""

from __future__ import annotations

import bisect
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise
from typing import Any

import orjson
import zstandard

from datamanager.errors import CorruptData

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "FOOTER_SIZE",
    "MAGIC",
    "VERSION",
    "BlockRef",
    "EncodedFile",
    "Footer",
    "decode_block",
    "decode_file",
    "decode_footer",
    "decode_index",
    "encode_files",
    "find_block",
    "lookup",
    "merge_file",
    "read_meta",
]

MAGIC = b"RSDF"
VERSION = 1
DEFAULT_BLOCK_SIZE = 64 << 10
# index_offset u64, index_length u32, index_crc u32, entry_count u64, version u16, flags u16,
# footer_crc u32 (over the previous 28 bytes), magic 4s.
_FOOTER = struct.Struct("<QIIQHHI4s")
FOOTER_SIZE = _FOOTER.size
_U32 = struct.Struct("<I")
_SWAP = sys.byteorder != "little"  # the arrays are little-endian on disk


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockRef:
    """One block in the index."""

    first_id: str
    last_id: str
    offset: int
    length: int
    count: int
    crc: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Footer:
    index_offset: int
    index_length: int
    index_crc: int
    entry_count: int
    version: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodedFile:
    """One encoded data file and what a manifest records about it."""

    data: bytes
    first_id: str
    last_id: str
    count: int
    index_offset: int
    index_length: int


def encode_files(
    entries: Iterable[tuple[str, bytes]],
    *,
    max_file_size: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
    level: int = 3,
    meta: Mapping[str, Any] | None = None,
) -> list[EncodedFile]:
    """Encode entries (strictly increasing ids) into files of at most ``max_file_size`` bytes.

    A file always holds at least one block, so one block larger than the maximum makes a file
    of its own. Raises ``ValueError`` if ids are not strictly increasing. No entries, no files.
    ``meta`` (JSON-serializable) is stored in every file's index: the checkpoint records its
    partition, sequence and the log offsets the file covers there (``read_meta``).
    """
    compressor = zstandard.ZstdCompressor(level=level)
    blocks = (
        _Block(compressor.compress(raw), first, last, count)
        for raw, first, last, count in _raw_blocks(entries, block_size)
    )
    return _files(blocks, max_file_size, meta)


def merge_file(
    data: bytes,
    changes: Mapping[str, bytes | None],
    *,
    max_file_size: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
    level: int = 3,
    meta: Mapping[str, Any] | None = None,
) -> list[EncodedFile]:
    """The whole data file ``data`` with ``changes`` applied (a value puts, ``None`` deletes),
    encoded again into files of at most ``max_file_size`` bytes: the entries
    ``encode_files(merge_entries(decode_file(data), changes))`` would hold, at the cost of
    the blocks the changes fall into rather than of the whole file.

    A change falls into the first block whose last id is at or past its id (the last block
    takes the ids past every block, as ``datamanager.merge.assign`` does for files). A block no
    change falls into is carried over as it is, compressed bytes and checksum unchanged; the
    others are decoded, merged and cut into blocks again. A piece under half a block left at the
    end of such a stretch takes in the next block rather than stay a small block of its own, so
    small blocks do not pile up over checkpoints. Raises ``CorruptData`` for a bad file.
    """
    footer = decode_footer(data)
    end = footer.index_offset + footer.index_length
    refs = decode_index(data[footer.index_offset : end], footer.index_crc)
    view = memoryview(data)
    order = sorted(changes)
    compressor = zstandard.ZstdCompressor(level=level)

    def blocks() -> Iterable[_Block]:
        # Merged entries not in a block yet (less than a block's worth), in id order.
        pending: list[tuple[str, bytes]] = []
        c = 0  # the next change (in ``order``) to place
        for i, ref in enumerate(refs):
            last = i == len(refs) - 1
            stop = len(order) if last else bisect.bisect_right(order, ref.last_id, c)
            mine, c = order[c:stop], stop
            if not mine and (not pending or _raw_size(pending) >= block_size // 2):
                yield from _cut(pending, block_size, compressor, final=True)[0]
                pending = []
                yield _Block(bytes(view[ref.offset : ref.offset + ref.length]), ref.first_id, ref.last_id, ref.count, ref.crc)  # fmt: skip
                continue
            ids, values = decode_block(view[ref.offset : ref.offset + ref.length], ref.crc)
            pending.extend(_merge_sorted(zip(ids, values, strict=True), mine, changes))
            full, pending = _cut(pending, block_size, compressor, final=False)
            yield from full
        yield from _cut(pending, block_size, compressor, final=True)[0]

    return _files(blocks(), max_file_size, meta)


@dataclass(slots=True)
class _Block:
    """A compressed block and what the index says of it (its crc computed when not given)."""

    data: bytes
    first_id: str
    last_id: str
    count: int
    crc: int | None = None


def _cut(
    entries: list[tuple[str, bytes]],
    block_size: int,
    compressor: zstandard.ZstdCompressor,
    *,
    final: bool,
) -> tuple[list[_Block], list[tuple[str, bytes]]]:
    """``entries`` (sorted) cut into compressed blocks of about ``block_size`` raw bytes, and
    what is left: unless ``final``, a last piece under ``block_size`` is not made a block but
    returned, to go on with what follows."""
    out: list[_Block] = []
    start, raw = 0, 0
    for n, (entry_id, value) in enumerate(entries):
        raw += len(entry_id) + len(value) + 8  # as _raw_size counts
        if raw >= block_size:
            out.append(_block(entries[start : n + 1], compressor))
            start, raw = n + 1, 0
    if start < len(entries) and final:
        out.append(_block(entries[start:], compressor))
        start = len(entries)
    return out, entries[start:]


def _raw_size(entries: Iterable[tuple[str, bytes]]) -> int:
    """About the raw bytes ``entries`` take in a block (``_raw_blocks`` counts the same way)."""
    return sum(len(entry_id) + len(value) + 8 for entry_id, value in entries)


def _block(entries: list[tuple[str, bytes]], compressor: zstandard.ZstdCompressor) -> _Block:
    ((raw, first, last, count),) = _raw_blocks(entries, 1 << 62)
    return _Block(compressor.compress(raw), first, last, count)


def _merge_sorted(
    old: Iterable[tuple[str, bytes]], ids: list[str], changes: Mapping[str, bytes | None]
) -> Iterator[tuple[str, bytes]]:
    """``old`` (sorted by id) with the changes of ``ids`` (sorted) applied, in id order."""
    i, n = 0, len(ids)
    for entry_id, value in old:
        while i < n and ids[i] < entry_id:
            new = changes[ids[i]]
            if new is not None:
                yield ids[i], new
            i += 1
        if i < n and ids[i] == entry_id:
            new = changes[entry_id]
            if new is not None:
                yield entry_id, new
            i += 1
        else:
            yield entry_id, value
    for entry_id in ids[i:]:
        new = changes[entry_id]
        if new is not None:
            yield entry_id, new


def _files(
    blocks: Iterable[_Block], max_file_size: int, meta: Mapping[str, Any] | None
) -> list[EncodedFile]:
    """``blocks`` (in id order) laid out in files of at most ``max_file_size`` bytes."""
    files: list[EncodedFile] = []
    placed: list[tuple[bytes, BlockRef]] = []
    size = 0
    for b in blocks:
        data = b.data
        if placed and size + len(data) + _index_estimate(len(placed)) > max_file_size:
            files.append(_finish(placed, meta))
            placed, size = [], 0
        ref = BlockRef(
            first_id=b.first_id, last_id=b.last_id, offset=size, length=len(data), count=b.count,
            crc=zlib.crc32(data) if b.crc is None else b.crc,
        )  # fmt: skip
        placed.append((data, ref))
        size += len(data)
    if placed:
        files.append(_finish(placed, meta))
    return files


def _index_estimate(nblocks: int) -> int:
    return FOOTER_SIZE + 96 * (nblocks + 1)


def _raw_blocks(
    entries: Iterable[tuple[str, bytes]], block_size: int
) -> Iterable[tuple[bytes, str, str, int]]:
    ids: list[bytes] = []
    values: list[bytes] = []
    raw = 0
    prev: str | None = None
    first = ""
    for entry_id, value in entries:
        if prev is not None and entry_id <= prev:
            raise ValueError(f"ids not strictly increasing: {prev!r} then {entry_id!r}")
        if not ids:
            first = entry_id
        prev = entry_id
        ids.append(entry_id.encode())
        values.append(value)
        raw += len(ids[-1]) + len(value) + 8
        if raw >= block_size:
            yield _pack(ids, values), first, entry_id, len(ids)
            ids, values, raw = [], [], 0
    if ids and prev is not None:
        yield _pack(ids, values), first, prev, len(ids)


def _pack(ids: list[bytes], values: list[bytes]) -> bytes:
    id_lens = array("I", map(len, ids))
    value_lens = array("I", map(len, values))
    if _SWAP:
        id_lens.byteswap()
        value_lens.byteswap()
    return b"".join((_U32.pack(len(ids)), id_lens.tobytes(), value_lens.tobytes(), *ids, *values))


def _finish(blocks: list[tuple[bytes, BlockRef]], meta: Mapping[str, Any] | None) -> EncodedFile:
    refs = [ref for _, ref in blocks]
    index = orjson.dumps(
        {
            "v": VERSION,
            "meta": dict(meta or {}),
            "blocks": [[r.first_id, r.last_id, r.offset, r.length, r.count, r.crc] for r in refs],
        }
    )
    index_offset = sum(len(data) for data, _ in blocks)
    count = sum(r.count for r in refs)
    fields = (index_offset, len(index), zlib.crc32(index), count, VERSION, 0)
    head = struct.pack("<QIIQHH", *fields)
    footer = _FOOTER.pack(*fields, zlib.crc32(head), MAGIC)
    return EncodedFile(
        data=b"".join([*(data for data, _ in blocks), index, footer]),
        first_id=refs[0].first_id,
        last_id=refs[-1].last_id,
        count=count,
        index_offset=index_offset,
        index_length=len(index),
    )


def decode_footer(tail: bytes) -> Footer:
    """Parse the last ``FOOTER_SIZE`` bytes of ``tail``. Raises ``CorruptData``."""
    if len(tail) < FOOTER_SIZE:
        raise CorruptData("data file shorter than its footer")
    fields = _FOOTER.unpack_from(tail, len(tail) - FOOTER_SIZE)
    index_offset, index_length, index_crc, count, version, _flags, footer_crc, magic = fields
    if magic != MAGIC:
        raise CorruptData(f"bad data file magic {magic!r}")
    if zlib.crc32(tail[len(tail) - FOOTER_SIZE : len(tail) - 8]) != footer_crc:
        raise CorruptData("data file footer checksum mismatch")
    if version != VERSION:
        raise CorruptData(f"unsupported data file version {version}")
    return Footer(
        index_offset=index_offset, index_length=index_length, index_crc=index_crc,
        entry_count=count, version=version,
    )  # fmt: skip


def decode_index(data: bytes, crc: int | None = None) -> list[BlockRef]:
    """Parse an index; verify ``crc`` when given. Raises ``CorruptData``."""
    if crc is not None and zlib.crc32(data) != crc:
        raise CorruptData("data file index checksum mismatch")
    try:
        rows = orjson.loads(data)["blocks"]
        return [
            BlockRef(first_id=a, last_id=b, offset=o, length=n, count=c, crc=k)
            for a, b, o, n, c, k in rows
        ]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptData(f"data file index does not parse: {exc}") from exc


def read_meta(data: bytes) -> dict[str, Any]:
    """The ``meta`` a whole data file was written with. Raises ``CorruptData``."""
    footer = decode_footer(data)
    end = footer.index_offset + footer.index_length
    index = data[footer.index_offset : end]
    if zlib.crc32(index) != footer.index_crc:
        raise CorruptData("data file index checksum mismatch")
    meta = orjson.loads(index).get("meta", {})
    if not isinstance(meta, dict):
        raise CorruptData("data file meta is not an object")
    return meta


def decode_block(data: bytes | memoryview, crc: int) -> tuple[list[str], list[bytes]]:
    """Decompress and split one block into (ids, values). Raises ``CorruptData``."""
    if zlib.crc32(data) != crc:
        raise CorruptData("data block checksum mismatch")
    try:
        raw = zstandard.ZstdDecompressor().decompress(data)
    except zstandard.ZstdError as exc:
        raise CorruptData(f"data block does not decompress: {exc}") from exc
    return _split(raw)


def _split(raw: bytes) -> tuple[list[str], list[bytes]]:
    (count,) = _U32.unpack_from(raw, 0)
    id_lens = array("I")
    id_lens.frombytes(raw[4 : 4 + 4 * count])
    value_lens = array("I")
    value_lens.frombytes(raw[4 + 4 * count : 4 + 8 * count])
    if _SWAP:
        id_lens.byteswap()
        value_lens.byteswap()
    base = 4 + 8 * count
    id_ends = list(accumulate(id_lens))
    ids_bytes = raw[base : base + (id_ends[-1] if count else 0)]
    vbase = base + len(ids_bytes)
    value_ends = list(accumulate(value_lens, initial=vbase))
    if value_ends[-1] != len(raw):
        raise CorruptData("data block lengths do not add up")
    starts = [0, *id_ends[:-1]]
    if ids_bytes.isascii():
        # Fixed-width ASCII ids (run ids): decode once and slice the str.
        text = ids_bytes.decode()
        ids = [text[a:b] for a, b in zip(starts, id_ends, strict=True)]
    else:
        ids = [ids_bytes[a:b].decode() for a, b in zip(starts, id_ends, strict=True)]
    values = [raw[a:b] for a, b in pairwise(value_ends)]
    return ids, values


def find_block(blocks: Sequence[BlockRef], entry_id: str) -> BlockRef | None:
    """The block that would hold ``entry_id``, or None when it is outside every block."""
    i = bisect.bisect_left([b.last_id for b in blocks], entry_id)
    if i == len(blocks) or blocks[i].first_id > entry_id:
        return None
    return blocks[i]


def lookup(ids: list[str], values: list[bytes], entry_id: str) -> bytes | None:
    """The value of ``entry_id`` in a decoded block, or None."""
    i = bisect.bisect_left(ids, entry_id)
    return values[i] if i < len(ids) and ids[i] == entry_id else None


def decode_file(data: bytes) -> list[tuple[str, bytes]]:
    """Every entry of a whole data file, in id order. Raises ``CorruptData``."""
    footer = decode_footer(data)
    end = footer.index_offset + footer.index_length
    blocks = decode_index(data[footer.index_offset : end], footer.index_crc)
    view = memoryview(data)
    out: list[tuple[str, bytes]] = []
    for b in blocks:
        ids, values = decode_block(view[b.offset : b.offset + b.length], b.crc)
        out.extend(zip(ids, values, strict=True))
    return out
