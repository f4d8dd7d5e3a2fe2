"""Value types of the index: entries, pages, sort order, statistics, and the phase/result codes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from events import Phase, Result, format_run_id

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "IndexStats",
    "Order",
    "Page",
    "RunEntry",
    "make_entry",
    "pr_code",
    "pr_code_valid",
    "pr_decode",
]

DEFAULT_LIMIT = 25
MAX_LIMIT = 100

# Stable on-disk codes (docs/index-format.md): never reorder, only append. Phase in bits 0-2,
# result in bits 3-4 of one byte.
PHASE_CODES: dict[Phase, int] = {
    Phase.SETUPERROR: 0,
    Phase.QUEUED: 1,
    Phase.CANCELLED: 2,
    Phase.RUNNING: 3,
    Phase.FINISHED: 4,
}
RESULT_CODES: dict[Result, int] = {
    Result.UNKNOWN: 0,
    Result.STOPPED: 1,
    Result.SUCCESS: 2,
    Result.FAILED: 3,
}
_PR_CODE = {
    (p, r): pc | (rc << 3) for p, pc in PHASE_CODES.items() for r, rc in RESULT_CODES.items()
}
_PR_DECODE: dict[int, tuple[Phase, Result]] = {v: k for k, v in _PR_CODE.items()}


def pr_code_valid() -> npt.NDArray[np.bool_]:
    """A 256-entry mask: which bytes are the code of some (phase, result)."""
    mask = np.zeros(256, dtype=np.bool_)
    mask[list(_PR_DECODE)] = True
    return mask


def pr_code(phase: Phase, result: Result) -> int:
    """The byte that stores ``phase`` and ``result``. Raises ``KeyError`` for an unknown member."""
    return _PR_CODE[(phase, result)]


def pr_decode(code: int) -> tuple[Phase, Result]:
    """Inverse of :func:`pr_code`. Raises ``KeyError`` for a byte no pair maps to."""
    return _PR_DECODE[code]


class Order(StrEnum):
    """Listing order by run id."""

    ASC = "asc"
    DESC = "desc"

    def is_desc(self) -> bool:
        return self is Order.DESC


@dataclass(frozen=True, slots=True, kw_only=True)
class RunEntry:
    """What the index knows about one run. ``name`` is "" and ``counter`` 0 when the index was
    not told (runs indexed from phase changes written before they carried them); times are
    milliseconds since the Unix epoch to the second (the index keeps seconds), None when
    unknown or not reached yet."""

    run_id: int
    group: str
    phase: Phase
    result: Result
    name: str = ""
    counter: int = 0
    enqueue_time: int | None = None
    start_time: int | None = None
    end_time: int | None = None

    @property
    def id_text(self) -> str:
        """The run id in its fixed-width text form."""
        return format_run_id(self.run_id)


_FIELDS = (
    "run_id",
    "group",
    "phase",
    "result",
    "name",
    "counter",
    "enqueue_time",
    "start_time",
    "end_time",
)
_new = object.__new__
(
    _set_id,
    _set_group,
    _set_phase,
    _set_result,
    _set_name,
    _set_counter,
    _set_enq,
    _set_start,
    _set_end,
) = (RunEntry.__dict__[name].__set__ for name in _FIELDS)


def make_entry(
    run_id: int,
    group: str,
    phase: Phase,
    result: Result,
    name: str = "",
    counter: int = 0,
    enqueue_time: int | None = None,
    start_time: int | None = None,
    end_time: int | None = None,
) -> RunEntry:
    """``RunEntry(run_id=..., ...)``, about 2× cheaper: a page builds up to 100 of them, and the
    generated ``__init__`` of a frozen dataclass routes every field through keyword passing and
    ``object.__setattr__``. Writes the slots directly (the instance is new, so nothing is mutated
    after creation); ``tests/unit/test_index_query.py`` checks it equals the real constructor."""
    entry = _new(RunEntry)
    _set_id(entry, run_id)
    _set_group(entry, group)
    _set_phase(entry, phase)
    _set_result(entry, result)
    _set_name(entry, name)
    _set_counter(entry, counter)
    _set_enq(entry, enqueue_time)
    _set_start(entry, start_time)
    _set_end(entry, end_time)
    return entry


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """One page of a listing. ``next_cursor`` is None on the last page."""

    runs: tuple[RunEntry, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexStats:
    """Figures for ``runstream index stats``."""

    runs: int
    groups: int
    span: int  # slots between the lowest and highest run id held (holes cost memory too)
    memory_bytes: int
    changes: int  # updates applied since the index was created or loaded
    offsets: dict[str, int] = field(default_factory=dict)

    @property
    def bytes_per_run(self) -> float:
        return self.memory_bytes / self.runs if self.runs else 0.0
