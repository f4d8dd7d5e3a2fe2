"""Runs' histories in one partition: what the materializer did with every event, kept per run.

The materializer notes one entry per event it judged for an existing run (applied, duplicate,
refused; ``api.history.HistoryEntry``). Entries wait in memory until the next checkpoint, which
stores each touched run's whole history as one value of the ``history`` datatype (key = run id,
value = one JSON entry per line), atomically with the state and the log offsets. So:

* a restart loses nothing and records nothing twice: entries of records the checkpoint covers are
  stored, the others are noted again when the tail is applied again;
* ``runstream replay`` rebuilds the histories (it runs the same materializer over the log);
* a read is one point read of one value (plus what is pending in memory), never a partition scan.

Appending to a stored history needs its old value: it is kept in memory for runs that are active
(``known``) — a run created here starts empty — and read back from storage only for a run this
worker has not seen since it loaded the partition (a late event for a finished run, or the first
event of an active run after a restart).

Storage cost: about 120 bytes per event before the data file's compression (see
``bench/bench_history.py``); a run's value is rewritten at each checkpoint that touched it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping

import msgspec

from api.history import HistoryEntry, Outcome
from events.catalogue import Event

__all__ = ["HISTORY", "HistoryLog", "Pending", "decode_history", "encode_entries"]

HISTORY = "history"  # the datatype
ENCODE_SLICE = 500  # runs encoded between two yields to the event loop

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(HistoryEntry)

#: Entries noted since the last checkpoint, per run id, in the order they were applied.
Pending = dict[str, list[HistoryEntry]]


def encode_entries(entries: Iterable[HistoryEntry]) -> bytes:
    return b"".join(_encoder.encode(e) + b"\n" for e in entries)


def decode_history(raw: bytes) -> list[HistoryEntry]:
    """Entries of a stored value (raises ``msgspec.DecodeError`` on corrupt data)."""
    return [_decoder.decode(line) for line in raw.splitlines() if line]


class HistoryLog:
    """Pending entries and the known stored values of one partition's runs. Not thread-safe;
    one event loop."""

    def __init__(self) -> None:
        self.pending: Pending = {}
        # run id → its stored value as of the last checkpoint (b"" for a run created since).
        self.known: dict[str, bytes] = {}

    # ------------------------------------------------------------------ noting (hot path)
    def note(
        self,
        event: Event,
        offset: int,
        index: int,
        outcome: Outcome,
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

    def created(self, run_id: str) -> None:
        """Run ``run_id`` was just created here: it has no stored history to read back."""
        self.known.setdefault(run_id, b"")

    # ------------------------------------------------------------------ checkpoints
    def take(self) -> Pending:
        """The pending entries, out of the log (for a snapshot)."""
        taken, self.pending = self.pending, {}
        return taken

    def give_back(self, taken: Pending) -> None:
        """A snapshot was not written: its entries come before those noted since."""
        for run_id, entries in taken.items():
            self.pending[run_id] = entries + self.pending.get(run_id, [])

    async def values(
        self, taken: Pending, stored: Callable[[str], Awaitable[bytes]]
    ) -> dict[str, bytes]:
        """The new stored value of every run in ``taken``: its old value (known, else
        ``stored(run_id)``, b"" when absent) followed by the new entries."""
        out: dict[str, bytes] = {}
        for i, (run_id, entries) in enumerate(taken.items(), 1):
            old = self.known.get(run_id)
            if old is None:
                old = await stored(run_id)
            out[run_id] = old + encode_entries(entries)
            if i % ENCODE_SLICE == 0:
                await asyncio.sleep(0)
        return out

    def committed(self, values: Mapping[str, bytes], keep: Callable[[str], bool]) -> None:
        """``values`` are stored now: remember those of runs ``keep`` says are still active
        (or have entries pending), forget the others (finished: storage has them)."""
        known = self.known
        for run_id, value in values.items():
            if keep(run_id) or run_id in self.pending:
                known[run_id] = value
            else:
                known.pop(run_id, None)

    def forget_final(self, run_ids: Iterable[str]) -> None:
        """Runs that finished with nothing pending: their value need not stay in memory."""
        for run_id in run_ids:
            if run_id not in self.pending:
                self.known.pop(run_id, None)

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
