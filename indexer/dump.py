"""The binary dump format (version 1): encode a snapshot of the index, decode and validate one.

Layout (little-endian; docs/index-format.md is the reference):

    header  32 B   magic "RSIX" | version u16 | flags u16 | meta_len u32 | body_len u64
                   | raw_len u64 | reserved u32
    meta    JSON   offsets covered, counts, base id, column widths, creation time
    body    zstd   group names | gid byte planes | pr bytes | seq byte planes
    digest  16 B   BLAKE2b-128 of everything before it

Decoding is bulk (numpy views over the decompressed body), never a per-run loop.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import zstandard

from indexer.errors import BadDump
from indexer.index import RunIndex
from indexer.model import pr_code_valid

__all__ = ["FORMAT_VERSION", "DumpHeader", "Snapshot", "decode", "encode", "snapshot"]

MAGIC = b"RSIX"
FORMAT_VERSION = 1
_HEAD = struct.Struct("<4sHHIQQI")
_DIGEST = 16
_MAX_RAW = 1 << 36  # refuse to inflate a lying header into 64 GiB


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """A consistent copy of an index's state, safe to encode in another thread."""

    base: int
    gid: npt.NDArray[np.uint32]
    pr: npt.NDArray[np.uint8]
    seq: npt.NDArray[np.uint32]
    names: list[str]  # gid → name, index 0 empty
    sorted_gids: npt.NDArray[np.uint32]
    offsets: dict[str, int]
    runs: int
    changes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DumpHeader:
    """What a dump says about itself (its meta block)."""

    version: int
    created_at: str
    offsets: dict[str, int] = field(default_factory=dict)
    runs: int
    groups: int
    base: int
    span: int
    group_width: int
    seq_width: int
    names_size: int
    size: int  # whole dump, bytes
    raw_size: int  # body before compression


def snapshot(index: RunIndex) -> Snapshot:
    """Copy the state of ``index`` (a few milliseconds at a million runs; call on the loop)."""
    n = index.span
    return Snapshot(
        base=index.base,
        gid=index.gid[:n].copy(),
        pr=index.pr[:n].copy(),
        seq=index.seq[:n].copy(),
        names=list(index.groups.names),
        sorted_gids=index.groups.sorted_gids().copy(),
        offsets=index.offsets,
        runs=index.count,
        changes=index.changes,
    )


def _width(max_value: int) -> int:
    return 1 if max_value < 1 << 8 else 2 if max_value < 1 << 16 else 4


def _planes(values: npt.NDArray[Any], width: int) -> bytes:
    """Values as ``width`` byte planes, low bytes first: zstd finds the structure far better."""
    narrow = values.astype(f"<u{width}")
    return narrow.view(np.uint8).reshape(-1, width).T.tobytes()


def _unplanes(buf: bytes | memoryview, n: int, width: int) -> npt.NDArray[np.uint32]:
    planes = np.frombuffer(buf, dtype=np.uint8, count=n * width).reshape(width, n)
    return np.ascontiguousarray(planes.T).view(f"<u{width}").reshape(n).astype(np.uint32)


def encode(snap: Snapshot, *, level: int = 3, now: datetime | None = None) -> bytes:
    """The dump bytes of ``snap``. Group ids are renumbered in sorted-path order (1-based)."""
    present = np.flatnonzero(snap.gid)
    first, last = (int(present[0]), int(present[-1]) + 1) if len(present) else (0, 0)
    ng = len(snap.names) - 1
    rank = np.zeros(ng + 1, dtype=np.uint32)
    rank[snap.sorted_gids] = np.arange(1, ng + 1, dtype=np.uint32)
    gid = rank[snap.gid[first:last]]
    seq = snap.seq[first:last]
    gw, sw = _width(ng), _width(int(seq.max()) if len(seq) else 0)
    names = "\n".join(snap.names[g] for g in snap.sorted_gids.tolist()).encode()
    body = b"".join((names, _planes(gid, gw), snap.pr[first:last].tobytes(), _planes(seq, sw)))
    packed = zstandard.ZstdCompressor(level=level).compress(body)
    meta = orjson.dumps(
        {
            "created_at": (now or datetime.now(UTC)).isoformat(),
            "offsets": snap.offsets,
            "runs": snap.runs,
            "groups": ng,
            "base": snap.base + first,
            "span": last - first,
            "group_width": gw,
            "seq_width": sw,
            "names_size": len(names),
        }
    )
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, 0, len(meta), len(packed), len(body), 0)
    out = b"".join((head, meta, packed))
    return out + hashlib.blake2b(out, digest_size=_DIGEST).digest()


def read_header(data: bytes) -> DumpHeader:
    """Check framing and digest of ``data`` and return its header. Raises ``BadDump``."""
    if len(data) < _HEAD.size + _DIGEST:
        raise BadDump(f"dump too short ({len(data)} bytes): truncated")
    magic, version, flags, meta_len, body_len, raw_len, reserved = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise BadDump(f"not an index dump (magic {magic!r})")
    if version != FORMAT_VERSION:
        raise BadDump(
            f"unsupported dump format version {version} (this code reads {FORMAT_VERSION})"
        )
    if flags or reserved:
        raise BadDump(f"dump uses flags {flags:#x} / reserved {reserved:#x} unknown to version 1")
    want = _HEAD.size + meta_len + body_len + _DIGEST
    if len(data) != want:
        raise BadDump(f"dump is {len(data)} bytes, its header says {want}: truncated or padded")
    digest = hashlib.blake2b(memoryview(data)[:-_DIGEST], digest_size=_DIGEST).digest()
    if digest != data[-_DIGEST:]:
        raise BadDump("dump checksum mismatch: the object is corrupt")
    try:
        meta = orjson.loads(data[_HEAD.size : _HEAD.size + meta_len])
        return DumpHeader(
            version=version,
            created_at=str(meta["created_at"]),
            offsets={str(k): int(v) for k, v in meta["offsets"].items()},
            runs=int(meta["runs"]),
            groups=int(meta["groups"]),
            base=int(meta["base"]),
            span=int(meta["span"]),
            group_width=int(meta["group_width"]),
            seq_width=int(meta["seq_width"]),
            names_size=int(meta["names_size"]),
            size=len(data),
            raw_size=raw_len,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadDump(f"dump meta block is invalid: {exc}") from exc


def decode(data: bytes) -> tuple[RunIndex, DumpHeader]:
    """The index stored in ``data`` and its header. Raises ``BadDump`` on any inconsistency."""
    h = read_header(data)
    if h.raw_size > _MAX_RAW or h.group_width not in (1, 2, 4) or h.seq_width not in (1, 2, 4):
        raise BadDump("dump header has impossible sizes")
    start = len(data) - _DIGEST - _body_len(data)
    try:
        body = zstandard.ZstdDecompressor().decompress(
            data[start : len(data) - _DIGEST], max_output_size=h.raw_size
        )
    except zstandard.ZstdError as exc:
        raise BadDump(f"dump body does not decompress: {exc}") from exc
    n = h.span
    if len(body) != h.raw_size or h.raw_size != h.names_size + n * (
        h.group_width + 1 + h.seq_width
    ):
        raise BadDump("dump body size does not match its header")
    view = memoryview(body)
    pos = h.names_size
    gid = _unplanes(view[pos:], n, h.group_width)
    pos += n * h.group_width
    pr = np.frombuffer(view[pos:], dtype=np.uint8, count=n).copy()
    seq = _unplanes(view[pos + n :], n, h.seq_width)
    names = bytes(view[: h.names_size]).decode().split("\n") if h.groups else []
    _check_columns(h, names, gid, pr)
    index = RunIndex.from_columns(
        sorted_names=names, base=h.base, gid=gid, pr=pr, seq=seq, offsets=h.offsets
    )
    return index, h


def _body_len(data: bytes) -> int:
    return int(_HEAD.unpack_from(data)[4])


def _check_columns(
    h: DumpHeader, names: list[str], gid: npt.NDArray[np.uint32], pr: npt.NDArray[np.uint8]
) -> None:
    if len(names) != h.groups:
        raise BadDump(f"dump names {len(names)} groups, its header {h.groups}")
    if len(gid) and int(gid.max()) > h.groups:
        raise BadDump("dump refers to a group it does not name")
    present = gid != 0
    if int(np.count_nonzero(present)) != h.runs:
        raise BadDump("dump run count does not match its columns")
    if not bool(pr_code_valid()[pr[present]].all()):
        raise BadDump("dump holds a phase/result code this version does not know")
