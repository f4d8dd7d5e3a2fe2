"""The binary dump format (version 2; version 1 still decodes): encode a snapshot of the index,
decode and validate one.

Layout (little-endian; docs/index-format.md is the reference):

    header  32 B   magic "RSIX" | version u16 | flags u16 | meta_len u32 | body_len u64
                   | raw_len u64 | reserved u32
    meta    JSON   offsets covered, counts, base id, column widths, creation time
    body    zstd   group names | gid byte planes | pr bytes | seq byte planes
                   (version 2 goes on: counter | name id | enqueue | start | end byte planes
                   | run names, a JSON array)
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
from indexer.index import COLUMNS, RunIndex
from indexer.model import pr_code_valid

__all__ = ["FORMAT_VERSION", "DumpHeader", "Snapshot", "decode", "encode", "snapshot"]

MAGIC = b"RSIX"
FORMAT_VERSION = 2
_READS = (1, 2)
_FACTS = COLUMNS[3:]  # counter, nid, enq, start, end: version 2 only
_TIMES = frozenset({"enq", "start", "end"})  # stored as zigzag deltas from the previous slot
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
    facts: dict[str, npt.NDArray[np.uint32]]  # the columns of _FACTS
    names: list[str]  # gid → name, index 0 empty
    run_names: list[str]  # nid → run name, index 0 empty
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
    # Version 2 (0 in a version 1 dump): the fact columns' widths, the run-name block.
    fact_widths: dict[str, int] = field(default_factory=dict)
    run_names: int = 0
    run_names_size: int = 0
    size: int  # whole dump, bytes
    raw_size: int  # body before compression


def snapshot(index: RunIndex) -> Snapshot:
    """Copy the state of ``index`` (20 ms at a million runs of 10,000 groups on a 2-core machine;
    call on the loop: the copy is what makes the dump consistent)."""
    n = index.span
    return Snapshot(
        base=index.base,
        gid=index.gid[:n].copy(),
        pr=index.pr[:n].copy(),
        seq=index.seq[:n].copy(),
        facts={col: getattr(index, col)[:n].copy() for col in _FACTS},
        names=list(index.groups.names),
        run_names=list(index.names.names),
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


def _delta(values: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """Each value minus the previous one (mod 2^32), zigzagged: a bijection of uint32 columns
    that turns nearly sorted times (ids are dense, so creation times follow them) into small
    numbers, whose high byte planes zstd codes almost for free."""
    d = np.diff(values.astype(np.uint32), prepend=np.uint32(0)).view(np.int32)
    return ((d << 1) ^ (d >> 31)).view(np.uint32)


def _undelta(zz: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    d = (zz >> np.uint32(1)) ^ (np.uint32(0) - (zz & np.uint32(1)))
    return np.cumsum(d, dtype=np.uint32)


def _unplanes(buf: bytes | memoryview, n: int, width: int) -> npt.NDArray[np.uint32]:
    planes = np.frombuffer(buf, dtype=np.uint8, count=n * width).reshape(width, n)
    # Shifts and ors of whole planes: 5× faster than transposing them into place.
    out: npt.NDArray[np.uint32] = planes[0].astype(np.uint32)
    for k in range(1, width):
        out |= planes[k].astype(np.uint32) << np.uint32(8 * k)
    return out


def encode(
    snap: Snapshot, *, level: int = 3, now: datetime | None = None, version: int = FORMAT_VERSION
) -> bytes:
    """The dump bytes of ``snap``. Group ids are renumbered in sorted-path order (1-based).
    ``version=1`` writes the old layout, without the facts (for compatibility tests and for
    readers not upgraded yet). Raises ``ValueError`` for a version this code cannot write."""
    if version not in _READS:
        raise ValueError(f"cannot write dump format version {version}")
    present = np.flatnonzero(snap.gid)
    first, last = (int(present[0]), int(present[-1]) + 1) if len(present) else (0, 0)
    ng = len(snap.names) - 1
    rank = np.zeros(ng + 1, dtype=np.uint32)
    rank[snap.sorted_gids] = np.arange(1, ng + 1, dtype=np.uint32)
    gid = rank[snap.gid[first:last]]
    seq = snap.seq[first:last]
    gw, sw = _width(ng), _width(int(seq.max()) if len(seq) else 0)
    names = "\n".join(snap.names[g] for g in snap.sorted_gids.tolist()).encode()
    v2 = version >= 2
    facts = {col: _stored(col, snap.facts[col][first:last]) for col in _FACTS} if v2 else {}
    fw = {col: _width(int(a.max()) if len(a) else 0) for col, a in facts.items()}
    # A run name may hold any character, even "\n": a JSON array, not a joined block.
    run_names = orjson.dumps(snap.run_names[1:]) if v2 else b""
    body = b"".join(
        (
            names,
            _planes(gid, gw),
            snap.pr[first:last].tobytes(),
            _planes(seq, sw),
            *(_planes(a, fw[col]) for col, a in facts.items()),
            run_names,
        )
    )
    packed = zstandard.ZstdCompressor(level=level).compress(body)
    meta_v2 = {
        "fact_widths": fw,
        "run_names": len(snap.run_names) - 1,
        "run_names_size": len(run_names),
    }
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
            **(meta_v2 if v2 else {}),
        }
    )
    head = _HEAD.pack(MAGIC, version, 0, len(meta), len(packed), len(body), 0)
    out = b"".join((head, meta, packed))
    return out + hashlib.blake2b(out, digest_size=_DIGEST).digest()


def read_header(data: bytes) -> DumpHeader:
    """Check framing and digest of ``data`` and return its header. Raises ``BadDump``."""
    if len(data) < _HEAD.size + _DIGEST:
        raise BadDump(f"dump too short ({len(data)} bytes): truncated")
    magic, version, flags, meta_len, body_len, raw_len, reserved = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise BadDump(f"not an index dump (magic {magic!r})")
    if version not in _READS:
        raise BadDump(f"unsupported dump format version {version} (this code reads {_READS})")
    if flags or reserved:
        raise BadDump(
            f"dump uses flags {flags:#x} / reserved {reserved:#x} unknown to version {version}"
        )
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
            fact_widths=_fact_widths(meta) if version >= 2 else {},
            run_names=int(meta["run_names"]) if version >= 2 else 0,
            run_names_size=int(meta["run_names_size"]) if version >= 2 else 0,
            size=len(data),
            raw_size=raw_len,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadDump(f"dump meta block is invalid: {exc}") from exc


def _stored(col: str, values: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    return _delta(values) if col in _TIMES else values


def _fact_widths(meta: dict[str, Any]) -> dict[str, int]:
    widths = {str(k): int(v) for k, v in meta["fact_widths"].items()}
    if set(widths) != set(_FACTS):
        raise ValueError(f"fact_widths names {sorted(widths)}, not {sorted(_FACTS)}")
    return widths


def decode(data: bytes) -> tuple[RunIndex, DumpHeader]:
    """The index stored in ``data`` (version 1 or 2) and its header. A version 1 dump gives an
    index whose facts (names, counters, times) are all unknown. Raises ``BadDump`` on any
    inconsistency."""
    h = read_header(data)
    widths = (h.group_width, h.seq_width, *h.fact_widths.values())
    if h.raw_size > _MAX_RAW or any(w not in (1, 2, 4) for w in widths):
        raise BadDump("dump header has impossible sizes")
    start = len(data) - _DIGEST - _body_len(data)
    try:
        body = zstandard.ZstdDecompressor().decompress(
            data[start : len(data) - _DIGEST], max_output_size=h.raw_size
        )
    except zstandard.ZstdError as exc:
        raise BadDump(f"dump body does not decompress: {exc}") from exc
    n = h.span
    per_slot = h.group_width + 1 + h.seq_width + sum(h.fact_widths.values())
    if len(body) != h.raw_size or h.raw_size != h.names_size + n * per_slot + h.run_names_size:
        raise BadDump("dump body size does not match its header")
    view = memoryview(body)
    pos = h.names_size
    gid = _unplanes(view[pos:], n, h.group_width)
    pos += n * h.group_width
    pr = np.frombuffer(view[pos:], dtype=np.uint8, count=n).copy()
    pos += n
    seq = _unplanes(view[pos:], n, h.seq_width)
    pos += n * h.seq_width
    facts: dict[str, npt.NDArray[np.uint32]] | None = None
    if h.version >= 2:
        facts = {}
        for col in _FACTS:
            values = _unplanes(view[pos:], n, h.fact_widths[col])
            facts[col] = _undelta(values) if col in _TIMES else values
            pos += n * h.fact_widths[col]
    names = bytes(view[: h.names_size]).decode().split("\n") if h.groups else []
    run_names = _run_names(h, bytes(view[pos:]))
    _check_columns(h, names, gid, pr)
    if facts is not None and len(gid) and int(facts["nid"].max()) > h.run_names:
        raise BadDump("dump refers to a run name it does not hold")
    try:
        index = RunIndex.from_columns(
            sorted_names=names,
            base=h.base,
            gid=gid,
            pr=pr,
            seq=seq,
            offsets=h.offsets,
            facts=facts,
            run_names=run_names,
        )
    except ValueError as exc:  # names out of order or repeated
        raise BadDump(f"dump names are invalid: {exc}") from exc
    return index, h


def _run_names(h: DumpHeader, block: bytes) -> list[str]:
    if h.version < 2:
        return []
    try:
        names = orjson.loads(block)
    except orjson.JSONDecodeError as exc:
        raise BadDump(f"dump run-name block is invalid: {exc}") from exc
    if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
        raise BadDump("dump run-name block is not an array of strings")
    if len(names) != h.run_names:
        raise BadDump(f"dump holds {len(names)} run names, its header says {h.run_names}")
    return names


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
