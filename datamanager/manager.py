"""The DataManager: a database of one partition's entries on object storage + an etcd pointer.

The Kafka log is the write-ahead log; the datamanager holds the checkpoints. API (what the
materializer calls)::

    dm = DataManager(store, kv, base="rundata", max_file_size=8 << 20, keep_manifests=3,
                     gc_grace=600.0)
    writer = await dm.open_partition("runs.events-3")   # reads the pointer + manifest
    writer.manifest.offsets, writer.manifest.seq        # where to resume the log
    await writer.checkpoint(puts={"run": {id: bytes}}, deletes={"run": [id]},
                            offsets={"runs.events/3": next_offset})      # -> Manifest
    await writer.checkpoint(puts={}, deletes={}, offsets={...},
                            appends={"log": {id: bytes}})   # new files only, folded later
    await writer.get("run", id)          # bytes, raises NotExist
    await writer.get_range("log", lo, hi)  # [(id, bytes)] with lo <= id < hi, appended too
    async for id, value in writer.iterate("run"): ...
    await writer.load("run")             # list[(id, bytes)], fast bulk snapshot load
    await dm.collect_garbage("runs.events-3")

A checkpoint runs three ordered steps: (1) write the touched data files, (2) write the
manifest, (3) move the etcd pointer by compare-and-swap on the mod revision remembered at
open. A failed swap means another owner took the partition: ``Fenced`` is raised and the work
is discarded (its files are garbage for ``collect_garbage``). A crash at any step leaves the
previous manifest current and complete; a later checkpoint simply writes new files.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import ost
from datamanager import datafile, keys
from datamanager.errors import (
    CorruptData,
    EtcdUnavailable,
    Fenced,
    MissingManifest,
    StorageError,
)
from datamanager.gc import GcReport, collect_garbage
from datamanager.kv import Kv
from datamanager.manifest import FileRef, Manifest, Pointer
from datamanager.merge import assign, combine, merge_entries
from datamanager.reader import IndexCache, Snapshot, storage_call

__all__ = ["DataManager", "PartitionWriter"]


class DataManager:
    """Factory of partition writers and readers, and the garbage collector's entry point."""

    def __init__(
        self,
        store: ost.ObjectStorage,
        kv: Kv,
        *,
        base: str,
        max_file_size: int = 8 << 20,
        block_size: int = datafile.DEFAULT_BLOCK_SIZE,
        keep_manifests: int = 3,
        gc_grace: float = 600.0,
        io_concurrency: int = 8,
        max_tail_files: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if keep_manifests < 1:
            raise ValueError("keep_manifests must be at least 1")
        self.store = store
        self.kv = kv
        self.base = ost.check_key(base)
        self.max_file_size = max_file_size
        self.block_size = block_size
        self.keep_manifests = keep_manifests
        self.gc_grace = gc_grace
        self.io_concurrency = io_concurrency
        self.max_tail_files = max(1, max_tail_files)
        self.clock = clock
        self.index_cache = IndexCache()

    async def current(self, partition: str) -> tuple[Manifest, str | None, int | None]:
        """The partition's current manifest, its key and the pointer's mod revision
        (``Manifest.empty``, None, None when it was never checkpointed)."""
        missing: tuple[str, int] | None = None  # (manifest, pointer revision) last missed
        for _ in range(3):
            got = await self.kv.get(keys.partition_pointer_key(partition))
            if got is None:
                return Manifest.empty(partition), None, None
            pointer = Pointer.decode(got.value)
            if not pointer.manifest:  # claimed by an owner before its first checkpoint
                return Manifest.empty(partition), None, got.mod_revision
            if missing == (pointer.manifest, got.mod_revision):
                # The pointer did not move: the manifest was not collected, it is absent.
                raise MissingManifest(
                    pointer=getattr(self.kv, "prefix", "") + keys.partition_pointer_key(partition),
                    manifest=pointer.manifest,
                    storage=repr(self.store),
                )
            try:
                data = await self.store.read(pointer.manifest)
            except ost.NotExist:
                # Superseded and collected between the two reads (read the pointer again), or
                # never in this storage.
                missing = (pointer.manifest, got.mod_revision)
                continue
            except ost.OstError as exc:
                raise storage_error(pointer.manifest, exc) from exc
            return Manifest.decode(data), pointer.manifest, got.mod_revision
        raise CorruptData(f"the pointer of {partition} keeps naming a missing manifest")

    async def open_partition(self, name: str, *, claim: bool = False) -> PartitionWriter:
        """Load the current manifest and remember the pointer revision as the fencing token.

        With ``claim=True`` the new owner also bumps the pointer's revision (re-putting the same
        value by compare-and-swap, or creating an empty pointer), so that a previous owner that
        is still alive — a zombie after a rebalance — is fenced at its next checkpoint instead of
        fencing the new owner. Raises ``EtcdUnavailable`` when the claim keeps losing races.
        """
        for _ in range(20):
            manifest, key, revision = await self.current(name)
            if not claim:
                return PartitionWriter(self, manifest, key, revision)
            pointer_key = keys.partition_pointer_key(name)
            value = Pointer(seq=manifest.seq, manifest=key or "").encode()
            claimed = await self.kv.compare_and_swap(pointer_key, value, mod_revision=revision)
            if claimed is not None:
                return PartitionWriter(self, manifest, key, claimed)
        raise EtcdUnavailable(f"could not claim partition {name}: the pointer keeps moving")

    async def read_partition(self, name: str) -> Snapshot:
        """A read-only snapshot of the current manifest (no fencing token)."""
        manifest, _, _ = await self.current(name)
        return self.snapshot(manifest)

    def snapshot(self, manifest: Manifest) -> Snapshot:
        return Snapshot(
            self.store,
            manifest,
            index_cache=self.index_cache,
            read_concurrency=self.io_concurrency,
        )

    async def collect_garbage(self, partition: str, *, now: float | None = None) -> GcReport:
        """Keep the last ``keep_manifests`` manifests; delete other manifests and unreferenced
        data files once they are older than ``gc_grace`` (see ``datamanager.gc``)."""
        return await collect_garbage(
            self.store,
            self.kv,
            base=self.base,
            partition=partition,
            keep=self.keep_manifests,
            grace=self.gc_grace,
            now=self.clock() if now is None else now,
        )


def storage_error(what: str, exc: ost.OstError) -> StorageError:
    return StorageError(f"{what}: {exc}", retriable=exc.retriable)


class PartitionWriter:
    """The owner's handle on one partition: reads, and checkpoints fenced by the pointer."""

    def __init__(
        self, dm: DataManager, manifest: Manifest, key: str | None, revision: int | None
    ) -> None:
        self.dm = dm
        self.partition = manifest.partition
        self.manifest = manifest
        self.manifest_key = key
        self.revision = revision
        self.fenced = False
        self._snapshot = dm.snapshot(manifest)
        # A manifest whose swap had an unknown outcome (etcd failed mid-request).
        self._pending: tuple[Manifest, str] | None = None
        self._lock = asyncio.Lock()

    async def get(self, datatype: str, entry_id: str) -> bytes:
        return await self._snapshot.get(datatype, entry_id)

    async def get_range(self, datatype: str, lo: str, hi: str) -> list[tuple[str, bytes]]:
        return await self._snapshot.get_range(datatype, lo, hi)

    def iterate(self, datatype: str) -> AsyncIterator[tuple[str, bytes]]:
        return self._snapshot.iterate(datatype)

    async def load(self, datatype: str) -> list[tuple[str, bytes]]:
        return await self._snapshot.load(datatype)

    async def load_all(self) -> dict[str, list[tuple[str, bytes]]]:
        return await self._snapshot.load_all()

    async def checkpoint(
        self,
        puts: Mapping[str, Mapping[str, bytes]],
        deletes: Mapping[str, Iterable[str]],
        offsets: Mapping[str, int],
        *,
        appends: Mapping[str, Mapping[str, bytes]] | None = None,
    ) -> Manifest:
        """Write the changes and offsets as the partition's next manifest (steps: data files,
        manifest, compare-and-swap). Returns the new manifest.

        ``appends``: entries of append-only datatypes (a log: each id written once, never
        deleted). They are written as new files of their own, listed under
        ``keys.tail_datatype(datatype)``, so a checkpoint costs what it adds, not a rewrite of the
        files the ids fall into; once ``max_tail_files`` are listed, the checkpoint folds them
        (and its own) into the datatype's sorted files. Read them with :meth:`get_range`.
        Writing the same id again (a retried checkpoint) must give the same value.

        Raises ``Fenced`` if the pointer moved since ``open_partition`` (this writer is dead),
        ``EtcdUnavailable`` / ``StorageError`` (retriable: call again with the same changes),
        ``ValueError`` if an id is both put and deleted, or a datatype both changed and appended.
        """
        changes = combine(puts, deletes)
        added = {dt: entries for dt, entries in (appends or {}).items() if entries}
        if both := set(added) & set(changes):
            raise ValueError(f"datatypes both changed and appended: {sorted(both)}")
        async with self._lock:
            if self.fenced:
                raise Fenced(f"{self.partition}: this writer was fenced")
            if self._pending is not None:
                await self._resolve_pending()
            seq = self.manifest.seq + 1
            token = uuid.uuid4().hex[:12]
            files = dict(self.manifest.files)
            all_offsets = {**self.manifest.offsets, **offsets}
            # Every data file names the checkpoint and the log offsets it covers (docs/datafile-format.md).
            meta = {"partition": self.partition, "seq": seq, "offsets": all_offsets}
            for datatype, dt_changes in sorted(changes.items()):
                keys.check_name("datatype", datatype)
                files[datatype] = await self._write_datatype(datatype, dt_changes, seq, token, meta)
            for datatype, entries in sorted(added.items()):
                await self._append(files, datatype, entries, seq, token, meta)
            new = Manifest(
                partition=self.partition,
                seq=seq,
                offsets=all_offsets,
                files=files,
                previous=self.manifest_key,
                created_at=self.dm.clock(),
            )
            key = keys.manifest_key(self.dm.base, self.partition, seq, token)
            await storage_call(key, lambda: self.dm.store.write(key, new.encode()))
            await self._swap(new, key)
            return new

    async def _swap(self, new: Manifest, key: str) -> None:
        pointer = Pointer(seq=new.seq, manifest=key).encode()
        self._pending = (new, key)
        revision = await self.dm.kv.compare_and_swap(
            keys.partition_pointer_key(self.partition), pointer, mod_revision=self.revision
        )
        self._pending = None
        if revision is None:
            self.fenced = True
            raise Fenced(f"{self.partition}: the pointer moved; another owner took the partition")
        self._adopt(new, key, revision)

    def _adopt(self, new: Manifest, key: str, revision: int) -> None:
        self.manifest, self.manifest_key, self.revision = new, key, revision
        self._snapshot = self.dm.snapshot(new)

    async def _resolve_pending(self) -> None:
        """After an ambiguous swap: adopt our manifest if the pointer names it."""
        assert self._pending is not None
        new, key = self._pending
        got = await self.dm.kv.get(keys.partition_pointer_key(self.partition))
        self._pending = None
        if got is not None and Pointer.decode(got.value).manifest == key:
            self._adopt(new, key, got.mod_revision)
        elif (got.mod_revision if got else None) != self.revision:
            self.fenced = True
            raise Fenced(f"{self.partition}: the pointer moved; another owner took the partition")

    async def _append(
        self,
        files: dict[str, tuple[FileRef, ...]],
        datatype: str,
        entries: Mapping[str, bytes],
        seq: int,
        token: str,
        meta: Mapping[str, Any],
    ) -> None:
        """Step 1 for one append-only datatype: new files for ``entries`` under its tail, or,
        when the tail is full, the tail's entries and these folded into its sorted files."""
        tail = keys.tail_datatype(datatype)
        listed = self.manifest.files.get(tail, ())
        if len(listed) < self.dm.max_tail_files:
            new = await self._write_datatype(tail, dict(entries), seq, token, meta, fresh=True)
            files[tail] = listed + new
            return
        sem = asyncio.Semaphore(self.dm.io_concurrency)

        async def read(ref: FileRef) -> list[tuple[str, bytes]]:
            async with sem:
                return await self._snapshot.read_file(ref)

        folded: dict[str, bytes | None] = {}
        for part in await asyncio.gather(*(read(ref) for ref in listed)):
            folded.update(part)
        folded.update(entries)
        files[datatype] = await self._write_datatype(datatype, folded, seq, token, meta)
        files.pop(tail, None)

    async def _write_datatype(
        self,
        datatype: str,
        changes: dict[str, bytes | None],
        seq: int,
        token: str,
        meta: Mapping[str, Any],
        *,
        fresh: bool = False,
    ) -> tuple[FileRef, ...]:
        """Step 1 for one datatype: rewrite the touched files; return the new file list.
        ``fresh``: write ``changes`` as new files only (the appended files of a tail)."""
        old = () if fresh else self.manifest.files.get(datatype, ())
        plan = assign(old, changes)
        sem = asyncio.Semaphore(self.dm.io_concurrency)
        counter = iter(range(1_000_000))

        async def rewrite(i: int | None, group: dict[str, bytes | None]) -> list[FileRef]:
            async with sem:
                data = None if i is None else await self._snapshot.read_bytes(old[i])
            encoded = await asyncio.to_thread(self._encode, data, group, meta)
            return await asyncio.gather(
                *(self._put(datatype, seq, token, next(counter), f, sem) for f in encoded)
            )

        if not old:
            return tuple(await rewrite(None, plan.fresh))
        indexes = sorted(plan.groups)
        results = await asyncio.gather(*(rewrite(i, plan.groups[i]) for i in indexes))
        replaced = dict(zip(indexes, results, strict=True))
        out: list[FileRef] = []
        for i, ref in enumerate(old):
            out.extend(replaced.get(i, [ref]))
        return tuple(out)

    def _encode(
        self, data: bytes | None, changes: dict[str, bytes | None], meta: Mapping[str, Any]
    ) -> list[datafile.EncodedFile]:
        """``changes`` merged into the data file ``data`` (``None``: a new file), encoded: only
        the blocks the changes fall into are decoded and compressed again
        (``datafile.merge_file``), so a checkpoint costs what changed, not what the touched
        files hold."""
        size, block = self.dm.max_file_size, self.dm.block_size
        if data is None:
            merged = merge_entries((), changes)
            return datafile.encode_files(merged, max_file_size=size, block_size=block, meta=meta)
        return datafile.merge_file(data, changes, max_file_size=size, block_size=block, meta=meta)

    async def _put(
        self,
        datatype: str,
        seq: int,
        token: str,
        n: int,
        f: datafile.EncodedFile,
        sem: asyncio.Semaphore,
    ) -> FileRef:
        key = keys.data_file_key(self.dm.base, self.partition, datatype, seq, token, n)
        async with sem:
            await storage_call(key, lambda: self.dm.store.write(key, f.data))
        return FileRef(
            key=key,
            first_id=f.first_id,
            last_id=f.last_id,
            count=f.count,
            size=len(f.data),
            index_offset=f.index_offset,
            index_length=f.index_length,
        )
