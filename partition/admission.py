"""What one partition's materializer lets in, and how it reports what it refuses. No Faust here.

Two duties, one object per partition of ``runs.events`` (``PartitionMaterializer.admission``):

* **Run ids the index can hold.** Run ids are dense (an etcd sequence); the run index
  (``indexer.RunIndex``) refuses an id ``max_gap`` or more away from the ids it holds rather than
  allocate the gap. A ``run.created`` with a producer-chosen id that far from every run of the
  partition (``0000000900000000`` among ids near 1,000) would be stored but never indexed, so it is
  refused here, with a reason, before it is applied (:meth:`Admission.far`). The window is the
  partition's own runs (active and final), so replaying the log judges every creation the same
  way. A partition with no run yet admits any id: there is nothing to measure it against.
* **Refusals are visible.** Every event the reducer refuses is counted by a code from a bounded
  set (:class:`RefusalCode`, the ``reason`` label of ``runstream_events_rejected_total``) and
  logged at warning with its run id, event id, type, code and reason — at most
  ``lines_per_second`` lines a second per partition; the next line logged says how many were
  left out (``suppressed``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from enum import StrEnum

from events import parse_run_id
from events.catalogue import Event, EventType
from indexer.index import DEFAULT_MAX_GAP
from partition import metrics
from partition.finals import FinalIds

__all__ = ["Admission", "RefusalCode", "refusal_code"]

log = logging.getLogger("runstream.refusals")

_CREATIONS = frozenset({EventType.RUN_CREATED, EventType.SETUP_ERRORS_REPORTED})


class RefusalCode(StrEnum):
    """Why an event was refused, as a small fixed set (a metric label; the log has the text)."""

    UNKNOWN_RUN = "unknown_run"  # an event for a run never created (in this partition)
    RUN_FINAL = "run_final"  # the run is in a final phase: it never changes again
    RUN_ID_USED = "run_id_used"  # a creation for a run id that already exists
    RUN_ID_OUT_OF_RANGE = "run_id_out_of_range"  # a creation the index cannot hold
    BAD_CREATION = "bad_creation"  # the creation cannot form a run (group, tasks, ...)
    WRONG_PHASE = "wrong_phase"  # start, cancel, stop or a task status in the wrong phase
    UNKNOWN_TASK = "unknown_task"  # the run has no such task
    TASK_TRANSITION = "task_transition"  # a task status change that is not allowed
    APPROVAL = "approval"  # approval: not waiting, already approved, or still waiting
    NOT_ALLOWED = "not_allowed"  # a derived type sent by a producer, or the wrong run
    TASK_NOT_READY = "task_not_ready"  # a claim or report for a task not ready (parents, stop)
    TASK_HELD = "task_held"  # a claim or report for a task another executor holds
    LEASE_LAPSED = "lease_lapsed"  # an executor whose lease lapsed reports for the task it lost
    STALE_RELEASE = "stale_release"  # a release for an attempt that is over (applied once)
    OTHER = "other"  # a reason this version does not classify (tests keep it unused)


# (what the reducer's reason contains, code), first match wins; creations are classified first.
_RULES = (
    ("before its creation", RefusalCode.UNKNOWN_RUN),
    # The reasons of issue 20 name executors and tasks: matched before the rules below, whose
    # words an executor id could contain.
    ("stale release of task", RefusalCode.STALE_RELEASE),
    (" is held by executor ", RefusalCode.TASK_HELD),
    (": its lease lapsed", RefusalCode.LEASE_LAPSED),
    ("cannot be claimed: it ended", RefusalCode.TASK_TRANSITION),
    ("without a holder: not ready to claim", RefusalCode.TASK_NOT_READY),
    ("is not ready: a parent", RefusalCode.TASK_NOT_READY),
    ("is stopping: task", RefusalCode.TASK_NOT_READY),
    ("final", RefusalCode.RUN_FINAL),
    ("has no task", RefusalCode.UNKNOWN_TASK),
    ("cannot go from", RefusalCode.TASK_TRANSITION),
    ("approv", RefusalCode.APPROVAL),
    ("only a ", RefusalCode.WRONG_PHASE),
    ("not running", RefusalCode.WRONG_PHASE),
    ("already stopping", RefusalCode.WRONG_PHASE),
    ("cannot be applied", RefusalCode.NOT_ALLOWED),
    ("applied to run", RefusalCode.NOT_ALLOWED),
)


def refusal_code(kind: EventType, reason: str) -> RefusalCode:
    """The code of a refusal of an event of type ``kind`` for ``reason`` (the reducer's text)."""
    if kind in _CREATIONS:
        if "already exists" in reason or "is final" in reason or "final phase" in reason:
            return RefusalCode.RUN_ID_USED
        if "index cannot hold" in reason:
            return RefusalCode.RUN_ID_OUT_OF_RANGE
        return RefusalCode.BAD_CREATION
    for text, code in _RULES:
        if text in reason:
            return code
    return RefusalCode.OTHER


class Admission:
    """The id window and the refusal reporter of one partition."""

    def __init__(
        self,
        partition: int,
        *,
        ids: Iterable[int] = (),
        max_gap: int = DEFAULT_MAX_GAP,
        lines_per_second: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.partition = partition
        self.max_gap = max_gap
        self.lines_per_second = lines_per_second
        self._clock = clock
        self.low = self.high = 0  # 0: no run yet
        for i in ids:
            self.created(i)
        self._second = -1.0
        self._lines = 0
        self.suppressed = 0  # lines left out since the last one logged

    @classmethod
    def of(cls, partition: int, active: Iterable[str], finals: FinalIds) -> Admission:
        """The admission of a partition holding the runs ``active`` and ``finals``."""
        adm = cls(partition, ids=(parse_run_id(r) for r in active))
        bounds = finals.bounds()
        if bounds is not None:
            adm.created(bounds[0])
            adm.created(bounds[1])
        return adm

    # ---------------------------------------------------------------------- the id window
    def created(self, run_id: int) -> None:
        """A run was created with ``run_id``: the window grows to include it."""
        if self.high == 0:
            self.low = self.high = run_id
        else:
            self.low, self.high = min(self.low, run_id), max(self.high, run_id)

    def far(self, event: Event) -> str | None:
        """The reason to refuse ``event``, a creation the index cannot hold, or ``None``."""
        if event.type not in _CREATIONS or self.high == 0:
            return None
        n = parse_run_id(event.run_id)
        if self.low - self.max_gap < n < self.high + self.max_gap:
            return None
        return (
            f"run id {event.run_id} is {self.max_gap} or more ids away from this partition's "
            f"runs ({self.low}..{self.high}): the index cannot hold it; run ids come from the "
            "sequence (send a creation request to runs.requests to get one)"
        )

    # ------------------------------------------------------------------------ refusals
    def refused(self, event: Event, reason: str) -> RefusalCode:
        """Count and (rate-limited) log one refused event; returns its code."""
        code = refusal_code(event.type, reason)
        metrics.EVENTS_REJECTED.labels(code.value).inc()
        now = self._clock()
        second = now - now % 1.0
        if second != self._second:
            self._second, self._lines = second, 0
        if self._lines >= self.lines_per_second:
            self.suppressed += 1
            return code
        self._lines += 1
        log.warning(
            "event refused: %s",
            reason,
            extra={
                "partition": self.partition,
                "run_id": event.run_id,
                "event_id": event.id,
                "type": event.type.value,
                "code": code.value,
                "reason": reason,
                "suppressed": self.suppressed,
            },
        )
        self.suppressed = 0
        return code
