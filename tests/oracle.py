"""The oracle: the pure reducer applied directly to a list of events, no Kafka, no storage."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from events.catalogue import Event
from events.codec import encode_state
from events.reducer import Applied, apply
from events.state import RunState


@dataclass
class Oracle:
    states: dict[str, RunState] = field(default_factory=dict)
    derived: dict[str, list[Event]] = field(default_factory=dict)
    rejected: int = 0
    duplicates: int = 0

    def feed(self, events: Iterable[Event]) -> Oracle:
        for ev in events:
            out = apply(self.states.get(ev.run_id), ev)
            if not isinstance(out, Applied):
                self.rejected += 1
                continue
            if out.duplicate:
                self.duplicates += 1
                continue
            self.states[ev.run_id] = out.state
            self.derived.setdefault(ev.run_id, []).extend(out.derived)
        return self

    def encoded(self) -> dict[str, bytes]:
        return {rid: encode_state(s) for rid, s in self.states.items()}


def history(events: Iterable[Event]) -> dict[str, list[tuple[str, str, str, str, int | None]]]:
    """Per run, what its history must say: (event id, type, outcome, reason, seq) of every event
    judged for a run that exists (applied, duplicate, refused), in order; events for a run id
    that does not exist are nobody's history."""
    states: dict[str, RunState] = {}
    finals: set[str] = set()
    out: dict[str, list[tuple[str, str, str, str, int | None]]] = {}
    for ev in events:
        rid, state = ev.run_id, states.get(ev.run_id)
        if rid in finals:
            out[rid].append((ev.id, str(ev.type), "refused", "run is final", None))
            continue
        res = apply(state, ev)
        if not isinstance(res, Applied):
            if state is not None:
                out[rid].append((ev.id, str(ev.type), "refused", res.reason, None))
            continue
        outcome = "duplicate" if res.duplicate else "applied"
        out.setdefault(rid, []).append((ev.id, str(ev.type), outcome, "", res.state.seq))
        states[rid] = res.state
        if res.state.run.phase.is_final():
            finals.add(rid)
    return out
