"""Runs' histories in one partition: what the materializer did with every event, kept per run.

The materializer notes one entry per event it judged for an existing run (applied, duplicate,
refused; ``HistoryEntry``, below). Entries wait in memory until the next checkpoint, which
appends each touched run's new entries as one *chunk* of the ``history`` datatype, atomically
with the state and the log offsets. A chunk's key is ``<run id>/<offset>``, the log offset of
its first entry, so a run's chunks sort together and in log order, and a checkpoint writes only
new objects: the datamanager keeps appended entries in files of their own
(``PartitionWriter.checkpoint``'s ``appends``) and folds them into the sorted files every few
checkpoints, instead of rewriting every touched run's whole history at every checkpoint. So:

* a restart loses nothing and records nothing twice: entries of records the checkpoint covers are
  stored, the others are noted again when the tail is applied again (a chunk written twice by a
  retried checkpoint has the same key and value);
* ``runstream replay`` rebuilds the histories (it runs the same materializer over the log);
* a read is one range read of the run's chunks (plus what is pending in memory), never a
  partition scan; a value stored by the version before chunks (key = the bare run id, the whole
  history) is read the same way, as the run's first chunk.

Storage cost: about 120 bytes per event before the data file's compression (see
``bench/bench_history.py``); each entry is written once, and rewritten only when its files are
folded.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Protocol

import msgspec

from events.catalogue import Event
from events.model import Shape
from partition.slices import Slices

__all__ = [
    "HISTORY",
    "HistoryEntry",
    "HistoryLog",
    "HistoryOutcome",
    "HistoryStore",
    "Pending",
    "chunk_key",
    "chunk_range",
    "decode_history",
    "encode_entries",
    "merged",
    "stored_history",
]

HISTORY = "history"  # the datatype


class HistoryOutcome(StrEnum):
    """What the owner did with an event judged for an existing run, as the run's history
    records it (the ``outcome`` of ``GET /api/v1/runs/{run_id}/history``)."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REFUSED = "refused"


class HistoryEntry(Shape):
    """One event judged for the run."""

    offset: int  # of the record in the run's partition of runs.events
    index: int  # of the event inside that record (0 for a single event)
    event_id: str
    type: str
    at: int  # the event's time, ms since the epoch
    outcome: HistoryOutcome
    reason: str = ""  # why it was refused
    seq: int | None = None  # the run's revision once applied


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(HistoryEntry)

#: Entries noted since the last checkpoint, per run id, in the order they were applied.
Pending = dict[str, list[HistoryEntry]]


def encode_entries(entries: Iterable[HistoryEntry]) -> bytes:
    """One JSON entry per line, each ending with a newline."""
    return _encoder.encode_lines(entries)


def decode_history(raw: bytes) -> list[HistoryEntry]:
    """Entries of a stored value (raises ``msgspec.DecodeError`` on corrupt data)."""
    return [_decoder.decode(line) for line in raw.splitlines() if line]


def chunk_key(run_id: str, offset: int) -> str:
    """The key of the chunk of ``run_id``'s history whose first entry is at log ``offset``."""
    return f"{run_id}/{offset:020d}"


def chunk_range(run_id: str) -> tuple[str, str]:
    """``(lo, hi)``: every key of ``run_id``'s chunks (and its pre-chunk value, key = the run
    id) is in ``lo <= key < hi`` ("/" sorts just before "0"; run ids are fixed-width digits)."""
    return run_id, run_id + "0"


class HistoryStore(Protocol):
    """What reading stored histories needs (``datamanager.PartitionWriter``)."""

    async def get_range(self, datatype: str, lo: str, hi: str) -> list[tuple[str, bytes]]: ...


async def stored_history(store: HistoryStore, run_id: str) -> list[HistoryEntry]:
    """The entries of ``run_id`` that checkpoints stored, in log order (raises what
    ``get_range`` raises, ``msgspec.DecodeError`` on corrupt data)."""
    chunks = await store.get_range(HISTORY, *chunk_range(run_id))
    return merged([e for _, raw in chunks for e in decode_history(raw)], [])


class HistoryLog:
    """Pending entries of one partition's runs. Not thread-safe; one event loop."""

    def __init__(self) -> None:
        self.pending: Pending = {}

    # ------------------------------------------------------------------ noting (hot path)
    def note(
        self,
        event: Event,
        offset: int,
        index: int,
        outcome: HistoryOutcome,
        *,
        reason: str = "",
        seq: int | None = None,
    ) -> None:
        entry = HistoryEntry(
            offset=offset,
            index=index,
            event_id=event.id,
            type=str(event.type),
            at=event.at,
            outcome=outcome,
            reason=reason,
            seq=seq,
        )
        got = self.pending.get(event.run_id)
        if got is None:
            self.pending[event.run_id] = [entry]
        else:
            got.append(entry)

    # ------------------------------------------------------------------ checkpoints
    def take(self) -> Pending:
        """The pending entries, out of the log (for a snapshot)."""
        taken, self.pending = self.pending, {}
        return taken

    def give_back(self, taken: Pending) -> None:
        """A snapshot was not written: its entries come before those noted since."""
        for run_id, entries in taken.items():
            self.pending[run_id] = entries + self.pending.get(run_id, [])

    @staticmethod
    async def chunks(taken: Pending) -> dict[str, bytes]:
        """One chunk per run of ``taken``: key (``chunk_key``) → its encoded entries."""
        out: dict[str, bytes] = {}
        slices = Slices()  # the event loop is handed back every millisecond
        for run_id, entries in taken.items():
            out[chunk_key(run_id, entries[0].offset)] = encode_entries(entries)
            await slices.step()
        return out

    # ------------------------------------------------------------------ reading
    def in_memory(self, run_id: str, writing: Pending | None) -> list[HistoryEntry]:
        """Entries not in storage yet: those of the snapshot being written, then the pending."""
        out = list(writing.get(run_id, ())) if writing else []
        out.extend(self.pending.get(run_id, ()))
        return out


def merged(stored: list[HistoryEntry], recent: list[HistoryEntry]) -> list[HistoryEntry]:
    """``stored`` then ``recent``, each event once, in log order (a read that raced a
    checkpoint may see an entry in both)."""
    seen: set[tuple[int, int]] = set()
    out: list[HistoryEntry] = []
    for e in sorted((*stored, *recent), key=lambda e: (e.offset, e.index)):
        pos = (e.offset, e.index)
        if pos not in seen:
            seen.add(pos)
            out.append(e)
    return out
