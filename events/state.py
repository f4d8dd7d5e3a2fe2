"""The materializer's state of one run, and its stored (dict) form.

``RunState`` holds the run, its config, the last ``run.phase_changed`` sequence number and a
bounded window of the ids of recently applied events (for idempotent apply). The window has two
generations: ``recent_ids`` (a tuple, at most ``ID_GENERATION`` ids, newest last) and
``older_ids`` (the generation before). When ``recent_ids`` is full it becomes ``older_ids`` and
a new generation starts, so at least the last ``ID_GENERATION`` and at most the last
``2 * ID_GENERATION`` ids are remembered; adding an id costs a small tuple copy, never a walk of
the whole window. The window is deterministic: the same events give the same window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from events.model import (
    FINISHED_TASK_STATUSES,
    Phase,
    Result,
    Run,
    RunConfig,
    RunConfigTask,
    RunTask,
)
from events.schema import (
    PHASES,
    RESULTS,
    STATUSES,
    decode_setup_error,
    decode_task,
    encode_setup_error,
    encode_task,
    fail,
    fields,
    p_bool,
    p_count,
    p_name,
    p_names,
    p_opt_run_id,
    p_str,
    p_str_map,
)

__all__ = ["ID_GENERATION", "STATE_FORMAT", "RunState", "state_from_dict", "state_to_dict"]

#: Size of one generation of the recent event id window (see the module docstring).
ID_GENERATION = 32
#: Version of the stored state form; bump it (and read the old one) when the form changes.
STATE_FORMAT = 1


@dataclass(frozen=True, kw_only=True)
class RunState:
    """One run as the reducer sees it (no slots: the reducer copies it per event, see
    ``events.model``). ``open_tasks`` is derived: the number of tasks not finished yet."""

    run: Run
    config: RunConfig
    seq: int = 0
    recent_ids: tuple[str, ...] = ()
    older_ids: frozenset[str] = frozenset()
    open_tasks: int = 0

    def has_seen(self, event_id: str) -> bool:
        """True when ``event_id`` is in the recent-id window (then applying it is a no-op)."""
        return event_id in self.recent_ids or event_id in self.older_ids


def _opt_time(v: Any) -> int | None:
    return None if v is None else p_count(v)


def _enum(table: dict[str, Any]) -> Any:
    def parse(v: Any) -> Any:
        try:
            return table[v]
        except (KeyError, TypeError):
            fail(f"unknown value {v!r}")

    return parse


def _list(v: Any) -> list[Any]:
    if type(v) is not list:
        fail("want a list")
    return v


_R: Any = object()  # required
_TASK_SPEC = {
    "id": (p_name, _R),
    "status": (_enum(STATUSES), _R),
    "skip": (p_bool, _R),
    "waiting_approval": (p_bool, _R),
    "approved": (p_bool, _R),
    "annotations": (p_str_map, _R),
    "start_time": (_opt_time, _R),
    "end_time": (_opt_time, _R),
}
_RUN_SPEC = {
    "id": (p_name, _R),
    "name": (p_name, _R),
    "group": (p_str, _R),
    "counter": (p_count, _R),
    "annotations": (p_str_map, _R),
    "phase": (_enum(PHASES), _R),
    "result": (_enum(RESULTS), _R),
    "stop": (p_bool, _R),
    "tasks": (_list, _R),
    "enqueue_time": (_opt_time, _R),
    "start_time": (_opt_time, _R),
    "end_time": (_opt_time, _R),
}
_CONFIG_SPEC = {
    "id": (p_name, _R),
    "name": (p_name, _R),
    "group": (p_str, _R),
    "setup_errors": (_list, _R),
    "annotations": (p_str_map, _R),
    "static_environment": (p_str_map, _R),
    "environment": (p_str_map, _R),
    "tasks": (_list, _R),
    "recreated_from": (p_opt_run_id, _R),
}
_STATE_SPEC = {
    "format": (p_count, _R),
    "run": (lambda v: v, _R),
    "config": (lambda v: v, _R),
    "seq": (p_count, _R),
    "recent_ids": (p_names, _R),
    "older_ids": (p_names, _R),
}


def _task_to_dict(t: RunTask) -> dict[str, Any]:
    return {
        "id": t.id,
        "status": t.status.value,
        "skip": t.skip,
        "waiting_approval": t.waiting_approval,
        "approved": t.approved,
        "annotations": t.annotations,
        "start_time": t.start_time,
        "end_time": t.end_time,
    }


def state_to_dict(state: RunState) -> dict[str, Any]:
    """The stored form (JSON-ready; maps must be dumped with sorted keys for determinism)."""
    run, rc = state.run, state.config
    return {
        "format": STATE_FORMAT,
        "seq": state.seq,
        "recent_ids": list(state.recent_ids),
        "older_ids": sorted(state.older_ids),
        "run": {
            "id": run.id,
            "name": run.name,
            "group": run.group,
            "counter": run.counter,
            "annotations": run.annotations,
            "phase": run.phase.value,
            "result": run.result.value,
            "stop": run.stop,
            "tasks": [_task_to_dict(t) for t in run.tasks.values()],
            "enqueue_time": run.enqueue_time,
            "start_time": run.start_time,
            "end_time": run.end_time,
        },
        "config": {
            "id": rc.id,
            "name": rc.name,
            "group": rc.group,
            "setup_errors": [encode_setup_error(e) for e in rc.setup_errors],
            "annotations": rc.annotations,
            "static_environment": rc.static_environment,
            "environment": rc.environment,
            "tasks": [encode_task(t, with_level=True) for t in rc.tasks.values()],
            "recreated_from": rc.recreated_from,
        },
    }


def state_from_dict(obj: Any) -> RunState:
    """Inverse of :func:`state_to_dict`; raises ``DecodeError(SCHEMA)`` on a malformed form."""
    top = fields(obj, _STATE_SPEC, "state")
    if top["format"] != STATE_FORMAT:
        fail(f"state format {top['format']} is not {STATE_FORMAT}")
    run_f = fields(top["run"], _RUN_SPEC, "run")
    tasks = [RunTask(**fields(t, _TASK_SPEC, "run task")) for t in run_f["tasks"]]
    run_f["tasks"] = {t.id: t for t in tasks}
    run = Run(**run_f)
    rc_f = fields(top["config"], _CONFIG_SPEC, "config")
    rc_tasks: list[RunConfigTask] = [decode_task(t, with_level=True) for t in rc_f["tasks"]]
    rc_f["tasks"] = {t.id: t for t in rc_tasks}
    rc_f["setup_errors"] = tuple(decode_setup_error(e) for e in rc_f["setup_errors"])
    config = RunConfig(**rc_f)
    if len(run.tasks) != len(tasks) or len(config.tasks) != len(rc_tasks):
        fail("duplicate task ids in stored state")
    if run.phase not in (Phase.SETUPERROR,) and run.tasks.keys() != config.tasks.keys():
        fail("run tasks and config tasks differ")
    if run.phase is Phase.SETUPERROR and run.result is not Result.UNKNOWN:
        fail("a setuperror run has no result")
    return RunState(
        run=run,
        config=config,
        seq=top["seq"],
        recent_ids=top["recent_ids"],
        older_ids=frozenset(top["older_ids"]),
        open_tasks=sum(t.status not in FINISHED_TASK_STATUSES for t in tasks),
    )
