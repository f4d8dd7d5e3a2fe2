"""Manifests: the list of live data files of one partition, and the log offsets they cover.

A manifest is written after its data files and before the etcd pointer moves to it, so a
manifest that the pointer names is always complete. Manifests chain through ``previous``.
Encoded as JSON (orjson); decoding validates the shape and raises ``CorruptData``.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson

from datamanager.errors import CorruptData

__all__ = ["MANIFEST_VERSION", "FileRef", "Manifest", "Pointer"]

MANIFEST_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class FileRef:
    """One data file: its object key, id range, entry count and where its index sits."""

    key: str
    first_id: str
    last_id: str
    count: int
    size: int
    index_offset: int
    index_length: int

    def to_json(self) -> list[Any]:
        return [
            self.key, self.first_id, self.last_id, self.count, self.size,
            self.index_offset, self.index_length,
        ]  # fmt: skip

    @classmethod
    def from_json(cls, row: list[Any]) -> FileRef:
        key, first, last, count, size, ioff, ilen = row
        return cls(
            key=key, first_id=first, last_id=last, count=count, size=size,
            index_offset=ioff, index_length=ilen,
        )  # fmt: skip


def _frozen_files(files: Mapping[str, tuple[FileRef, ...]]) -> Mapping[str, tuple[FileRef, ...]]:
    return MappingProxyType({dt: tuple(refs) for dt, refs in sorted(files.items()) if refs})


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """A checkpoint of one partition.

    ``seq`` counts checkpoints (1 is the first); ``offsets`` are the caller's log positions
    (e.g. ``{"runs.events/3": next_offset_to_read}``) covered by these files; ``files`` maps a
    datatype to its files ordered by id (ranges do not overlap); ``previous`` is the key of the
    manifest this one replaced. ``created_at`` is unix seconds (the writer's clock).
    """

    partition: str
    seq: int
    offsets: Mapping[str, int] = field(default_factory=dict)
    files: Mapping[str, tuple[FileRef, ...]] = field(default_factory=dict)
    previous: str | None = None
    created_at: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "offsets", MappingProxyType(dict(self.offsets)))
        object.__setattr__(self, "files", _frozen_files(self.files))

    @classmethod
    def empty(cls, partition: str) -> Manifest:
        """The state of a partition that has never been checkpointed (seq 0, no files)."""
        return cls(partition=partition, seq=0)

    def datatypes(self) -> list[str]:
        return list(self.files)

    def file_for(self, datatype: str, entry_id: str) -> FileRef | None:
        """The file whose id range holds ``entry_id``, or None."""
        refs = self.files.get(datatype, ())
        i = bisect.bisect_left([r.last_id for r in refs], entry_id)
        if i == len(refs) or refs[i].first_id > entry_id:
            return None
        return refs[i]

    def count(self, datatype: str) -> int:
        return sum(r.count for r in self.files.get(datatype, ()))

    def referenced_keys(self) -> set[str]:
        return {r.key for refs in self.files.values() for r in refs}

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "version": MANIFEST_VERSION,
                "partition": self.partition,
                "seq": self.seq,
                "previous": self.previous,
                "created_at": self.created_at,
                "offsets": dict(self.offsets),
                "files": {dt: [r.to_json() for r in refs] for dt, refs in self.files.items()},
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        try:
            doc = orjson.loads(data)
            if doc["version"] != MANIFEST_VERSION:
                raise CorruptData(f"unsupported manifest version {doc['version']}")
            return cls(
                partition=doc["partition"],
                seq=int(doc["seq"]),
                previous=doc["previous"],
                created_at=float(doc["created_at"]),
                offsets={str(k): int(v) for k, v in doc["offsets"].items()},
                files={
                    dt: tuple(FileRef.from_json(row) for row in rows)
                    for dt, rows in doc["files"].items()
                },
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CorruptData(f"manifest does not parse: {exc}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class Pointer:
    """The etcd value naming a partition's current manifest."""

    seq: int
    manifest: str

    def encode(self) -> bytes:
        return orjson.dumps({"seq": self.seq, "manifest": self.manifest})

    @classmethod
    def decode(cls, data: bytes) -> Pointer:
        try:
            doc = orjson.loads(data)
            return cls(seq=int(doc["seq"]), manifest=str(doc["manifest"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CorruptData(f"partition pointer does not parse: {exc}") from exc
