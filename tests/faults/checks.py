"""The three checks of every fault, counted rather than only asserted.

Against an oracle (``tests.oracle.Oracle`` fed with every acknowledged event in produce order):

1. materialized state: the current checkpoints hold exactly the oracle's runs, byte for byte;
2. index: the index a worker starts from (newest dump + tail) has every run's group, phase and
   result as the oracle, and equals an index rebuilt from the whole log;
3. phase stream: per run, ``runs.phases`` holds seq 1..n exactly once, in order, equal to the
   oracle's derived events.

*Lost* counts effects missing or behind (events the oracle applied that a checkpoint lacks, runs
missing from the state or the index, sequence numbers missing from the stream); *duplicated*
counts effects present too often (extra runs, repeated sequence numbers, events applied beyond
the oracle). Anything else that differs is *diverged*. The verdict passes only when all are 0.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from agents import keys
from agents.config import Settings
from agents.indexing import build_index
from agents.readback import decode_states, materialized_states, read_topic
from agents.resources import Resources
from events import parse_run_id
from events.catalogue import Event, TaskReady
from events.codec import decode_record, encode
from events.errors import DecodeError
from events.state import RunState
from indexer import DumpStore, RunIndex, compare
from partition.materializer import phase_seq
from tests.oracle import Oracle

__all__ = ["FaultRow", "Tally", "verify_pipeline"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultRow:
    """One line of the printed table."""

    fault: str
    events: int
    recovery_s: float | None
    lost: int
    duplicated: int
    verdict: str
    note: str = ""


@dataclass(slots=True)
class Tally:
    lost: int = 0
    duplicated: int = 0
    diverged: int = 0
    examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def example(self, text: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(text)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.diverged == 0

    def row(self, fault: str, events: int, recovery_s: float | None, note: str = "") -> FaultRow:
        how = "; ".join([note, *self.notes] if note else self.notes)
        verdict = "PASS" if self.ok else f"FAIL (diverged {self.diverged})"
        return FaultRow(
            fault=fault,
            events=events,
            recovery_s=recovery_s,
            lost=self.lost,
            duplicated=self.duplicated,
            verdict=verdict,
            note=how,
        )

    def assert_ok(self) -> None:
        assert self.ok, (
            f"lost {self.lost}, duplicated {self.duplicated}, diverged {self.diverged}: "
            f"{self.examples}"
        )


def _ids(state: RunState) -> set[str]:
    """The event ids the run remembers having applied (its dedup window: every id of a workload
    run, whose runs have far fewer events than the window holds)."""
    return set(state.recent_ids) | set(state.older_ids)


def tally_states(got: dict[str, bytes], oracle: Oracle, t: Tally) -> None:
    want = oracle.encoded()
    decoded = decode_states({rid: raw for rid, raw in got.items() if want.get(rid) != raw})
    for rid in want.keys() - got.keys():
        t.lost += len(_ids(oracle.states[rid]))
        t.example(f"state: run {rid} missing")
    for rid in got.keys() - want.keys():
        t.duplicated += len(_ids(decoded[rid]))
        t.example(f"state: run {rid} not in the oracle")
    for rid in got.keys() & want.keys():
        if got[rid] == want[rid]:
            continue
        have, expect = _ids(decoded[rid]), _ids(oracle.states[rid])
        t.lost += len(expect - have)
        t.duplicated += len(have - expect)
        if have == expect:
            t.diverged += 1
        t.example(f"state: run {rid} lacks {sorted(expect - have)}, extra {sorted(have - expect)}")


def _ready_seq(event: Event) -> int:
    data = event.data
    return data.seq if isinstance(data, TaskReady) else -1


def derived_events(records: dict[int, list[tuple[int, bytes | None, bytes, Any]]]) -> list[Event]:
    """Every derived event (``run.phase_changed``, ``task.ready``) of ``runs.phases`` or
    ``runs.tasks`` records."""
    out: list[Event] = []
    for p in sorted(records):
        for _, _, value, _ in records[p]:
            with contextlib.suppress(DecodeError):
                out.extend(e for e in decode_record(value) if phase_seq(e) >= 0 or _ready_seq(e) >= 0)  # fmt: skip
    return out


def tally_phases(stream: list[Event], oracle: Oracle, t: Tally) -> None:
    """Per run and per kind of derived event (phase changes, ready tasks): seq 1..n exactly once,
    in order, byte for byte the oracle's."""
    for kind, seq_of in (("phases", phase_seq), ("ready", _ready_seq)):
        by_run: dict[str, list[Event]] = {}
        for ev in stream:
            if seq_of(ev) >= 0:
                by_run.setdefault(ev.run_id, []).append(ev)
        wanted = {rid: [e for e in evs if seq_of(e) >= 0] for rid, evs in oracle.derived.items()}
        for rid in {r for r, evs in wanted.items() if evs} | by_run.keys():
            want = [encode(e) for e in wanted.get(rid, [])]
            evs = by_run.get(rid, [])
            seqs = [seq_of(e) for e in evs]
            expected = set(range(1, len(want) + 1))
            missing = expected - set(seqs)
            t.lost += len(missing)
            repeats = len(seqs) - len(set(seqs)) + len(set(seqs) - expected)
            t.duplicated += repeats
            if missing or repeats:
                t.example(f"{kind}: run {rid} seqs {seqs}, want 1..{len(want)}")
            elif seqs != sorted(seqs) or [encode(e) for e in evs] != want:
                t.diverged += 1
                t.example(f"{kind}: run {rid} out of order or different from the oracle: {seqs}")


async def tally_index(s: Settings, resources: Resources, oracle: Oracle, t: Tally) -> None:
    store = DumpStore(await resources.store(), prefix=keys.index_prefix(s.etcd_prefix))
    index, loaded = await build_index(s, store)
    t.notes.append(f"index from dump #{loaded.number} + tail" if loaded else "index: no dump")
    tally_index_entries(index, oracle, t)
    rebuilt, _ = await build_index(s, store, from_dump=False)
    diff = compare(index, rebuilt)
    if not diff.equal:
        t.diverged += diff.differing + diff.only_in_a + diff.only_in_b
        t.example(f"index: dump+tail differs from the full rebuild: {diff.examples[:3]}")


def tally_index_entries(index: RunIndex, oracle: Oracle, t: Tally) -> None:
    for rid, st in oracle.states.items():
        entry = index.get(parse_run_id(rid))
        want = (st.run.group, st.run.phase, st.run.result)
        if entry is None:
            t.lost += 1
            t.example(f"index: run {rid} missing")
        elif (entry.group, entry.phase, entry.result) != want:
            t.lost += 1  # the index is behind the state (a phase change it did not see)
            t.example(f"index: run {rid} is {entry}, want {want}")
    extra = len(index) - sum(1 for rid in oracle.states if index.get(parse_run_id(rid)))
    if extra:
        t.duplicated += extra
        t.example(f"index: {extra} runs not in the oracle")


async def verify_pipeline(
    s: Settings, resources: Resources, oracle: Oracle, *, index: bool = True
) -> Tally:
    """Run the three checks (state, phase stream and, unless ``index`` is False, the index)."""
    t = Tally()
    dm = await resources.datamanager()
    tally_states(await materialized_states(dm, s.topic_events, range(s.partitions)), oracle, t)
    phases = derived_events(await read_topic(s.kafka, s.topic_phases))
    tasks = derived_events(await read_topic(s.kafka, s.topic_tasks))
    tally_phases(phases + tasks, oracle, t)
    misplaced = sum(_ready_seq(e) >= 0 for e in phases) + sum(phase_seq(e) >= 0 for e in tasks)
    if misplaced:  # ready tasks belong on runs.tasks, phase changes on runs.phases
        t.diverged += misplaced
        t.example(f"{misplaced} derived events on the other kind's topic")
    if index:
        await tally_index(s, resources, oracle, t)
    return t
