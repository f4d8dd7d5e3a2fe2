"""Errors of the datamanager. One root, ``DataManagerError``; ``retriable`` says whether a retry
can help. Adapters (``datamanager.etcd``) translate grpc/aetcd errors into these, and object
storage errors are translated where the datamanager calls ``ost``."""

from __future__ import annotations

__all__ = [
    "CorruptData",
    "DataManagerError",
    "EtcdUnavailable",
    "Fenced",
    "LockNotHeld",
    "MissingManifest",
    "NotExist",
    "StorageError",
]


class DataManagerError(Exception):
    """Root of every datamanager error."""

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class NotExist(DataManagerError):
    """No entry with this datatype and id in the snapshot (or no such manifest)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} does not exist")
        self.what = what


class Fenced(DataManagerError):
    """The partition's etcd pointer moved since this writer opened it: another owner took the
    partition. The writer must discard its work and stop; the files it wrote are left for GC."""


class EtcdUnavailable(DataManagerError):
    """etcd did not answer (connection refused, timeout, no leader). Retriable."""

    retriable = True


class StorageError(DataManagerError):
    """Object storage failed; ``retriable`` is copied from the underlying ``ost`` error."""


class CorruptData(DataManagerError):
    """A data file or manifest failed its checksum or does not parse."""


class MissingManifest(CorruptData):
    """The partition's etcd pointer names a manifest the object storage does not hold, and keeps
    naming it: this etcd prefix was used with other storage, or the storage lost data. Not
    retriable: no retry makes the object appear."""

    def __init__(self, *, pointer: str, manifest: str, storage: str) -> None:
        super().__init__(
            f"the etcd pointer {pointer} names manifest {manifest}, which the object storage "
            f"{storage} does not hold"
        )
        self.pointer = pointer
        self.manifest = manifest
        self.storage = storage


class LockNotHeld(DataManagerError):
    """The lease lock is not (or no longer) held by this holder."""
