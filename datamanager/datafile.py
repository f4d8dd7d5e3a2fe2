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
from collections.abc import Iterable, Mapping, Sequence
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
    files: list[EncodedFile] = []
    blocks: list[tuple[bytes, BlockRef]] = []
    size = 0
    for raw_block, first, last, count in _raw_blocks(entries, block_size):
        data = compressor.compress(raw_block)
        if blocks and size + len(data) + _index_estimate(len(blocks)) > max_file_size:
            files.append(_finish(blocks, meta))
            blocks, size = [], 0
        ref = BlockRef(
            first_id=first, last_id=last, offset=size, length=len(data), count=count,
            crc=zlib.crc32(data),
        )  # fmt: skip
        blocks.append((data, ref))
        size += len(data)
    if blocks:
        files.append(_finish(blocks, meta))
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
