"""Which partition of ``runs.events`` a run lives in: the partition Kafka's default partitioner
(the Java client's, and librdkafka's ``murmur2_random``) picks for the run id as the record key,
``murmur2(key) & 0x7fffffff % partitions``.

Declared here, not taken from a Kafka client, because the engine judges every record by it
(``partition.materializer.route_refusal``) and must not change when a client library does;
``tests/unit/test_quirks.py`` checks that aiokafka's partitioner still agrees.
"""

from __future__ import annotations

__all__ = ["key_partition", "murmur2", "partition_for"]

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """MurmurHash2 of ``data`` as Kafka computes it (``org.apache.kafka.common.utils.Utils``)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    end = length - length % 4
    for i in range(0, end, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length - end
    if extra >= 3:
        h ^= data[end + 2] << 16
    if extra >= 2:
        h ^= data[end + 1] << 8
    if extra >= 1:
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for the record key ``key`` (any bytes)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def partition_for(run_id: str, partitions: int) -> int:
    """The partition of ``runs.events`` holding ``run_id``: its key's partition."""
    return key_partition(run_id.encode(), partitions)
