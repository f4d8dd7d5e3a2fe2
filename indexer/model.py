"""Value types of the index: entries, pages, sort order, statistics, and the phase/result codes.

:class:`RunEntry` is also what ``GET /api/v1/runs`` lists: the API encodes the index's entries
as they are (one declaration, the OpenAPI component comes from it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated

import numpy as np
import numpy.typing as npt
from msgspec import Meta

from events import RUN_ID_WIDTH, Phase, Result
from events.model import Count, Millis, RunId, Shape

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


_INDEXED = "; from the index, to the second"


# Positional (kw_only=False): a page makes up to 100 entries with ``map`` over its columns.
class RunEntry(Shape, kw_only=False):
    """A run as the index lists it: enough for a runs page without a read per run. ``name`` is
    "" and ``counter`` 0 for runs indexed before phase changes carried them."""

    id: RunId
    group: str
    phase: Phase
    result: Result
    name: Annotated[str, Meta(description='the run\'s name ("" when the index was not told)')]
    counter: Annotated[Count, Meta(description="the run's number in its root group (0: none)")]
    enqueue_time: Annotated[Millis, Meta(description="when it was created" + _INDEXED)] | None
    start_time: Annotated[Millis, Meta(description="when it started running" + _INDEXED)] | None
    end_time: Annotated[Millis, Meta(description="when it reached a final phase" + _INDEXED)] | None

    @property
    def run_id(self) -> int:
        """The run id as the index keys it (``id`` is its fixed-width text form)."""
        return int(self.id)


#: A run id's text form (``events.format_run_id`` without its range check: the index holds ids
#: in range only).
format_id = f"{{:0{RUN_ID_WIDTH}d}}".format


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
    """The :class:`RunEntry` of what the index holds for ``run_id``; times are milliseconds to
    the second, None when unknown or not reached yet."""
    return RunEntry(
        format_id(run_id), group, phase, result, name, counter, enqueue_time, start_time, end_time
    )


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
