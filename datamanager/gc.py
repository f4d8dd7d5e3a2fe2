"""Garbage collection of one partition's manifests and data files.

Kept: the current manifest and its ``keep - 1`` predecessors (following ``previous``), and
every data file they reference. Anything else is deleted only when all of these hold:

* its object is older than ``grace`` (a checkpoint in progress is never touched);
* its checkpoint sequence is ≤ the pointer's (a concurrent writer's newer files are never
  touched, as Agola's ``checkpointClean`` did);
* for a data file, the oldest kept manifest is itself older than ``grace``: a file a reader
  might still use stopped being referenced no later than that manifest's creation, so a
  reader that opened a manifest up to ``grace`` ago is never broken.

Deleting is idempotent: a file already gone is not an error.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import ost
from datamanager import keys
from datamanager.errors import StorageError
from datamanager.kv import Kv
from datamanager.manifest import Manifest, Pointer

__all__ = ["GcReport", "collect_garbage"]


@dataclass(frozen=True, slots=True, kw_only=True)
class GcReport:
    kept_manifests: tuple[str, ...]
    deleted_manifests: tuple[str, ...]
    deleted_files: tuple[str, ...]


async def _chain(store: ost.ObjectStorage, head: str, keep: int) -> list[tuple[str, Manifest]]:
    chain: list[tuple[str, Manifest]] = []
    key: str | None = head
    while key is not None and len(chain) < keep:
        try:
            manifest = Manifest.decode(await store.read(key))
        except ost.NotExist:
            break  # an older manifest already collected: the chain ends here
        chain.append((key, manifest))
        key = manifest.previous
    return chain


async def collect_garbage(
    store: ost.ObjectStorage,
    kv: Kv,
    *,
    base: str,
    partition: str,
    keep: int,
    grace: float,
    now: float,
) -> GcReport:
    """Collect one partition (see the module docstring). A partition without a pointer is
    left alone. Raises ``StorageError`` (retriable per the ost error) or ``EtcdUnavailable``."""
    got = await kv.get(keys.partition_pointer_key(partition))
    if got is None:
        return GcReport(kept_manifests=(), deleted_manifests=(), deleted_files=())
    pointer = Pointer.decode(got.value)
    if not pointer.manifest:  # claimed, never checkpointed
        return GcReport(kept_manifests=(), deleted_manifests=(), deleted_files=())
    try:
        chain = await _chain(store, pointer.manifest, keep)
        cutoff = now - grace

        def collectable(info: ost.ObjectInfo) -> bool:
            seq = keys.parse_seq(info.key)
            old = info.last_modified.timestamp() < cutoff
            return seq is not None and seq <= pointer.seq and old

        kept = {key for key, _ in chain}
        prefix = keys.manifests_prefix(base, partition)
        dead_manifests = [
            i.key async for i in store.list(prefix) if i.key not in kept and collectable(i)
        ]
        dead_files: list[str] = []
        # A short chain has no superseded predecessors: only never-referenced orphans remain.
        if len(chain) < keep or chain[-1][1].created_at < cutoff:
            referenced = set().union(*(m.referenced_keys() for _, m in chain))
            prefix = keys.data_prefix(base, partition)
            dead_files = [
                i.key
                async for i in store.list(prefix)
                if i.key not in referenced and collectable(i)
            ]
        # Files first: a manifest that still exists must not name a missing file for long.
        for key in [*dead_files, *dead_manifests]:
            with contextlib.suppress(ost.NotExist):
                await store.delete(key)
    except ost.OstError as exc:
        raise StorageError(f"gc of {partition}: {exc}", retriable=exc.retriable) from exc
    return GcReport(
        kept_manifests=tuple(key for key, _ in chain),
        deleted_manifests=tuple(dead_manifests),
        deleted_files=tuple(dead_files),
    )
