"""runstream's run domain: pure types, events, codec and reducer (no I/O)."""

from events.model import Phase, Result, TaskStatus

__all__ = ["Phase", "Result", "TaskStatus"]
