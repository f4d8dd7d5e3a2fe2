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
