"""runstream datamanager: a database on object storage + etcd.

Batched data files (``datafile``), manifests and checkpoints fenced by an etcd pointer
(``manager``), garbage collection (``gc``), id sequences (``sequence``) and lease locks
(``lock``). Only ``datamanager.etcd`` imports aetcd; everything else talks to the ``Kv`` port.
"""

from datamanager.counters import Counters
from datamanager.errors import (
    CorruptData,
    DataManagerError,
    EtcdUnavailable,
    Fenced,
    LockNotHeld,
    MissingManifest,
    NotExist,
    StorageError,
)
from datamanager.etcd import EtcdKv
from datamanager.gc import GcReport
from datamanager.kv import Kv, KvValue
from datamanager.lock import LeaseLock
from datamanager.manager import DataManager, PartitionWriter
from datamanager.manifest import FileRef, Manifest, Pointer
from datamanager.reader import Snapshot
from datamanager.sequence import IdAllocator

__all__ = [
    "CorruptData",
    "Counters",
    "DataManager",
    "DataManagerError",
    "EtcdKv",
    "EtcdUnavailable",
    "Fenced",
    "FileRef",
    "GcReport",
    "IdAllocator",
    "Kv",
    "KvValue",
    "LeaseLock",
    "LockNotHeld",
    "Manifest",
    "MissingManifest",
    "NotExist",
    "PartitionWriter",
    "Pointer",
    "Snapshot",
    "StorageError",
]
