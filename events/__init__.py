"""runstream's run domain: pure types, events, codec and reducer (no I/O)."""

from events.ids import RUN_ID_WIDTH, format_run_id, is_run_id, parse_run_id
from events.model import Phase, Result, TaskStatus

__all__ = [
    "RUN_ID_WIDTH",
    "Phase",
    "Result",
    "TaskStatus",
    "format_run_id",
    "is_run_id",
    "parse_run_id",
]
