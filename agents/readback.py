"""Reading what the pipeline produced: log end offsets, checkpoints, materialized runs, phase
changes. Used by ``runstream verify``, the tests and the benchmarks; never writes anything."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from agents.kafka import bare_consumer, end_offsets, partitions_of, read_range, stop_consumer
from events.catalogue import Event
from events.codec import decode_record, decode_state
from events.errors import DecodeError
from events.state import RunState
from partition.materializer import ACTIVE, FINAL, offsets_key, partition_name, phase_seq

__all__ = [
    "checkpointed_offsets",
    "end_offsets",
    "materialized_states",
    "partitions_of",
    "read_topic",
    "state_digest",
    "stop_consumer",
]


async def checkpointed_offsets(dm: Any, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """The ``topic`` offset each partition's current checkpoint covers (0 when none)."""
    out = {}
    for p in partitions:
        manifest, _, _ = await dm.current(partition_name(topic, p))
        out[p] = manifest.offsets.get(offsets_key(topic, p), 0)
    return out


async def materialized_states(dm: Any, topic: str, partitions: Iterable[int]) -> dict[str, bytes]:
    """run id → encoded state of every run in the current checkpoints (active and final)."""
    out: dict[str, bytes] = {}
    for p in partitions:
        snap = await dm.read_partition(partition_name(topic, p))
        for datatype in (ACTIVE, FINAL):
            for run_id, raw in await snap.load(datatype):
                out[run_id] = raw
    return out


def decode_states(encoded: dict[str, bytes]) -> dict[str, RunState]:
    return {rid: decode_state(raw) for rid, raw in encoded.items()}


def state_digest(encoded: dict[str, bytes]) -> str:
    """A content hash of a set of run states (order independent)."""
    h = hashlib.blake2b(digest_size=16)
    for rid in sorted(encoded):
        h.update(rid.encode())
        h.update(hashlib.blake2b(encoded[rid], digest_size=16).digest())
    return h.hexdigest()


async def read_topic(
    bootstrap: str, topic: str, *, until: dict[int, int] | None = None
) -> dict[int, list[tuple[int, bytes | None, bytes, list[tuple[str, bytes]]]]]:
    """Every record of ``topic`` up to ``until`` (default: the current end offsets), per
    partition: (offset, key, value, headers)."""
    until = until if until is not None else await end_offsets(bootstrap, topic)
    out: dict[int, list[tuple[int, bytes | None, bytes, list[tuple[str, bytes]]]]] = {
        p: [] for p in until
    }
    if not any(until.values()):
        return out
    async with bare_consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        ranges = {p: (0, end) for p, end in until.items()}
        async for p, msgs in read_range(
            consumer, topic, ranges, max_records=50_000, timeout_ms=2000
        ):
            out[p].extend((m.offset, m.key, m.value, list(m.headers or ())) for m in msgs)
    return out


def phase_changes(records: dict[int, list[tuple[int, bytes | None, bytes, Any]]]) -> list[Event]:
    """The ``run.phase_changed`` events of ``runs.phases`` records, in log order per partition."""
    out: list[Event] = []
    for p in sorted(records):
        for _, _, value, _ in records[p]:
            try:
                out.extend(e for e in decode_record(value) if phase_seq(e) >= 0)
            except DecodeError:
                continue
    return out
