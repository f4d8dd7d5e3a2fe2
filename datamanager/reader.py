"""Reading a partition snapshot: point reads, iteration and bulk loading from one manifest.

A ``Snapshot`` is immutable: it reads the files one manifest names, and those files never
change (every checkpoint writes new ones). A point read costs one ranged read of the file's
index (cached, ``IndexCache``) and one ranged read of a block; a bulk load reads whole files
concurrently and decodes them in a thread.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import ost
from datamanager import datafile, keys
from datamanager.errors import CorruptData, NotExist, StorageError
from datamanager.manifest import FileRef, Manifest

__all__ = ["IndexCache", "Snapshot", "storage_call"]

T = TypeVar("T")


async def storage_call(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """Await an ``ost`` call, translating its errors (a missing file is corruption here:
    a manifest only names files that exist)."""
    try:
        return await call()
    except ost.NotExist as exc:
        raise CorruptData(f"{what}: object missing: {exc.key}") from exc
    except ost.OstError as exc:
        raise StorageError(f"{what}: {exc}", retriable=exc.retriable) from exc


class IndexCache:
    """A bounded LRU of decoded data file indexes, keyed by object key (files are immutable)."""

    def __init__(self, max_files: int = 4096) -> None:
        self._max = max_files
        self._items: OrderedDict[str, list[datafile.BlockRef]] = OrderedDict()

    def get(self, key: str) -> list[datafile.BlockRef] | None:
        blocks = self._items.get(key)
        if blocks is not None:
            self._items.move_to_end(key)
        return blocks

    def put(self, key: str, blocks: list[datafile.BlockRef]) -> None:
        self._items[key] = blocks
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)


class Snapshot:
    """Read access to the data of one manifest."""

    def __init__(
        self,
        store: ost.ObjectStorage,
        manifest: Manifest,
        *,
        index_cache: IndexCache | None = None,
        read_concurrency: int = 8,
    ) -> None:
        self.store = store
        self.manifest = manifest
        self._indexes = index_cache if index_cache is not None else IndexCache()
        self._concurrency = read_concurrency

    async def get(self, datatype: str, entry_id: str) -> bytes:
        """The value of ``entry_id``, appended ones included (the newest file that holds it).
        Raises ``NotExist``, ``CorruptData``, ``StorageError``."""
        for ref in reversed(self.manifest.files.get(keys.tail_datatype(datatype), ())):
            if ref.first_id <= entry_id <= ref.last_id:
                value = await self._lookup(ref, entry_id)
                if value is not None:
                    return value
        found = self.manifest.file_for(datatype, entry_id)
        value = None if found is None else await self._lookup(found, entry_id)
        if value is None:
            raise NotExist(f"{datatype} {entry_id!r}")
        return value

    async def _lookup(self, ref: FileRef, entry_id: str) -> bytes | None:
        block = datafile.find_block(await self._index(ref), entry_id)
        if block is None:
            return None
        ids, values = await self._block(ref, block)
        return datafile.lookup(ids, values, entry_id)

    async def get_range(self, datatype: str, lo: str, hi: str) -> list[tuple[str, bytes]]:
        """Every entry with ``lo <= id < hi``, in id order, from the sorted files of
        ``datatype`` and from its appended files (``keys.tail_datatype``); an id in more than
        one file (a retried append) is given once. Reads only the blocks whose id range meets
        ``[lo, hi)``. Raises ``CorruptData``, ``StorageError``."""
        found: dict[str, bytes] = {}
        for dt in (datatype, keys.tail_datatype(datatype)):
            for ref in self.manifest.files.get(dt, ()):
                if ref.last_id < lo or ref.first_id >= hi:
                    continue
                for block in await self._index(ref):
                    if block.last_id < lo or block.first_id >= hi:
                        continue
                    ids, values = await self._block(ref, block)
                    start = bisect.bisect_left(ids, lo)
                    for i in range(start, len(ids)):
                        if ids[i] >= hi:
                            break
                        found[ids[i]] = values[i]
        return sorted(found.items())

    async def _block(self, ref: FileRef, block: datafile.BlockRef) -> tuple[list[str], list[bytes]]:
        data = await storage_call(
            ref.key, lambda: self.store.read(ref.key, block.offset, block.length)
        )
        return datafile.decode_block(data, block.crc)

    async def _index(self, ref: FileRef) -> list[datafile.BlockRef]:
        blocks = self._indexes.get(ref.key)
        if blocks is None:
            data = await storage_call(
                ref.key, lambda: self.store.read(ref.key, ref.index_offset, ref.index_length)
            )
            blocks = datafile.decode_index(data)
            self._indexes.put(ref.key, blocks)
        return blocks

    async def iterate(self, datatype: str) -> AsyncIterator[tuple[str, bytes]]:
        """Every entry of ``datatype`` in id order, one data file in memory at a time (all of
        them at once while appended files are not folded yet)."""
        if self.manifest.files.get(keys.tail_datatype(datatype)):
            for entry in await self.load(datatype):
                yield entry
            return
        for ref in self.manifest.files.get(datatype, ()):
            for entry in await self.read_file(ref):
                yield entry

    async def load(self, datatype: str) -> list[tuple[str, bytes]]:
        """Every entry of ``datatype`` in id order, appended ones included, read concurrently
        (snapshot loading)."""
        tail = self.manifest.files.get(keys.tail_datatype(datatype), ())
        base = await self._load_files(self.manifest.files.get(datatype, ()))
        if not tail:
            return base
        merged = dict(base)
        merged.update(await self._load_files(tail))  # in order: a newer file wins
        return sorted(merged.items())

    async def _load_files(self, refs: tuple[FileRef, ...]) -> list[tuple[str, bytes]]:
        sem = asyncio.Semaphore(self._concurrency)

        async def one(ref: FileRef) -> list[tuple[str, bytes]]:
            async with sem:
                return await self.read_file(ref)

        parts = await asyncio.gather(*(one(ref) for ref in refs))
        if len(parts) == 1:
            return parts[0]
        return [entry for part in parts for entry in part]

    async def load_all(self) -> dict[str, list[tuple[str, bytes]]]:
        """Every datatype of the partition (``load`` for each; appended files under their
        datatype)."""
        names = {keys.untailed(dt) for dt in self.manifest.datatypes()}
        return {dt: await self.load(dt) for dt in sorted(names)}

    async def read_file(self, ref: FileRef) -> list[tuple[str, bytes]]:
        return await asyncio.to_thread(datafile.decode_file, await self.read_bytes(ref))

    async def read_bytes(self, ref: FileRef) -> bytes:
        """The whole data file ``ref``, as stored (its size checked against the manifest's)."""
        data = await storage_call(ref.key, lambda: self.store.read(ref.key))
        if len(data) != ref.size:
            raise CorruptData(f"{ref.key}: {len(data)} bytes, manifest says {ref.size}")
        return data
