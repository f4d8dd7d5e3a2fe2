"""Every etcd key and object key of the datamanager, built in one place.

Numbers are zero-padded to 20 digits so text order is numeric order (a listing of manifests
is in sequence order). Object keys live under the DataManager's ``base``; etcd keys are
relative to the ``Kv``'s own prefix (the adapter prepends it).

Object storage (under ``<base>/``)::

    <partition>/manifests/<seq:020>-<token>.json      a manifest (one per checkpoint attempt)
    <partition>/data/<datatype>/<seq:020>-<token>-<n:04>.sst
                                                      data files written by checkpoint <seq>

etcd::

    datamanager/partitions/<partition>                the pointer to the current manifest
    counters/<name, %-escaped>                        a counter's last number (``counters``)
    counters/<name, %-escaped>/void/<n:020>           a number a failed creation kept
    sequences/<name>                                  an id allocator's next free id
    locks/<name>                                      a lease lock
"""

from __future__ import annotations

import re
from urllib.parse import quote

__all__ = [
    "check_name",
    "counter_key",
    "counter_void_key",
    "data_file_key",
    "data_prefix",
    "lock_key",
    "manifest_key",
    "manifests_prefix",
    "parse_seq",
    "partition_pointer_key",
    "sequence_key",
]

SEQ_WIDTH = 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def check_name(kind: str, name: str) -> str:
    """Partition, datatype, sequence and lock names: ``[A-Za-z0-9][A-Za-z0-9._-]*``, ≤ 200 chars.

    Raises ``ValueError`` otherwise (a "/" would break the key layout).
    """
    if not _NAME.match(name):
        raise ValueError(f"invalid {kind} name {name!r}: want [A-Za-z0-9][A-Za-z0-9._-]*")
    return name


def _seq(seq: int) -> str:
    return f"{seq:0{SEQ_WIDTH}d}"


def manifests_prefix(base: str, partition: str) -> str:
    return f"{base}/{check_name('partition', partition)}/manifests/"


def manifest_key(base: str, partition: str, seq: int, token: str) -> str:
    return f"{manifests_prefix(base, partition)}{_seq(seq)}-{token}.json"


TAIL_SUFFIX = ".tail"


def tail_datatype(datatype: str) -> str:
    """The datatype that holds the appended files of ``datatype`` (``PartitionWriter.checkpoint``'s
    ``appends``) until they are folded into its sorted files."""
    return f"{check_name('datatype', datatype)}{TAIL_SUFFIX}"


def untailed(datatype: str) -> str:
    """The datatype whose appended files ``datatype`` lists (itself if it is no tail)."""
    return datatype.removesuffix(TAIL_SUFFIX)


def data_prefix(base: str, partition: str) -> str:
    return f"{base}/{check_name('partition', partition)}/data/"


def data_file_key(base: str, partition: str, datatype: str, seq: int, token: str, n: int) -> str:
    dt = check_name("datatype", datatype)
    return f"{data_prefix(base, partition)}{dt}/{_seq(seq)}-{token}-{n:04d}.sst"


def parse_seq(key: str) -> int | None:
    """The checkpoint sequence a manifest or data file key was written by, or None."""
    name = key.rsplit("/", 1)[-1]
    head = name[:SEQ_WIDTH]
    return int(head) if len(head) == SEQ_WIDTH and head.isdigit() else None


def partition_pointer_key(partition: str) -> str:
    return f"datamanager/partitions/{check_name('partition', partition)}"


def sequence_key(name: str) -> str:
    return f"sequences/{check_name('sequence', name)}"


def lock_key(name: str) -> str:
    return f"locks/{check_name('lock', name)}"


def counter_key(name: str) -> str:
    """A counter's key; ``name`` is free text (a root group such as ``/project/x``), escaped so
    that no counter's key is a prefix of another's."""
    return f"counters/{quote(name, safe='')}"


def counter_void_key(name: str, n: int) -> str:
    return f"{counter_key(name)}/void/{_seq(n)}"
