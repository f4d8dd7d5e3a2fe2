"""The run domain: phases, results and task statuses (more types arrive with issue 3)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Phase", "Result", "TaskStatus"]


class Phase(StrEnum):
    """A run's phase. ``setuperror``, ``cancelled`` and ``finished`` are final."""

    SETUPERROR = "setuperror"
    QUEUED = "queued"
    CANCELLED = "cancelled"
    RUNNING = "running"
    FINISHED = "finished"

    def is_final(self) -> bool:
        return self in (Phase.SETUPERROR, Phase.CANCELLED, Phase.FINISHED)


class Result(StrEnum):
    """A run's result, independent of its phase (a running run can already be failed)."""

    UNKNOWN = "unknown"
    STOPPED = "stopped"
    SUCCESS = "success"
    FAILED = "failed"

    def is_set(self) -> bool:
        return self is not Result.UNKNOWN


class TaskStatus(StrEnum):
    NOTSTARTED = "notstarted"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    RUNNING = "running"
    STOPPED = "stopped"
    SUCCESS = "success"
    FAILED = "failed"

    def is_finished(self) -> bool:
        return self in (
            TaskStatus.SKIPPED,
            TaskStatus.CANCELLED,
            TaskStatus.STOPPED,
            TaskStatus.SUCCESS,
            TaskStatus.FAILED,
        )
