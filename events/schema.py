"""Wire form of the domain values and payloads: plain JSON-ready dicts to typed objects and back.

Decoders take the dict ``orjson.loads`` produced (and may take it over or change it); they raise
``DecodeError(SCHEMA)`` on anything but the documented shape: unknown keys, missing required keys
and wrong types are all refused, so a new field needs a new version. Encoders return dicts with
every field, in a fixed order. The hot payloads (task status, requests, phase changes) have
hand-written decoders; the rest go through a small field table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from events._fast import build, dict_setter
from events.catalogue import (
    CancelRequested,
    EventType,
    Payload,
    PhaseChanged,
    RunCreated,
    SetupErrorsReported,
    StartRequested,
    StopRequested,
    TaskAnnotationsSet,
    TaskApproved,
    TaskStatusChanged,
)
from events.errors import DecodeError, DecodeReason
from events.ids import is_run_id
from events.model import (
    DependCondition,
    Phase,
    Result,
    RunConfigTask,
    SetupError,
    TaskDepend,
    TaskStatus,
)

__all__ = [
    "DECODERS",
    "ENCODERS",
    "decode_setup_error",
    "decode_task",
    "encode_setup_error",
    "encode_task",
    "fail",
]

Parser = Callable[[Any], Any]
_REQUIRED: Any = object()

STATUSES = {s.value: s for s in TaskStatus}
PHASES = {p.value: p for p in Phase}
RESULTS = {r.value: r for r in Result}
_CONDITIONS = {c.value: c for c in DependCondition}


_new = object.__new__
_set_depend = dict_setter(TaskDepend)
_set_config_task = dict_setter(RunConfigTask)
_set_status = dict_setter(TaskStatusChanged)
_set_phase = dict_setter(PhaseChanged)


def fail(message: str) -> NoReturn:
    raise DecodeError(DecodeReason.SCHEMA, message)


# -- field parsers (cold path) -------------------------------------------------------------------


def p_str(v: Any) -> str:
    if type(v) is not str:
        fail(f"want a string, got {type(v).__name__}")
    return v


def p_name(v: Any) -> str:
    if type(v) is not str or not v:
        fail("want a non-empty string")
    return v


def p_opt_run_id(v: Any) -> str | None:
    if v is not None and (type(v) is not str or not is_run_id(v)):
        fail(f"want a run id or null, got {v!r}")
    return v


def p_bool(v: Any) -> bool:
    if type(v) is not bool:
        fail(f"want a boolean, got {type(v).__name__}")
    return v


def p_count(v: Any) -> int:
    if type(v) is not int or v < 0:
        fail(f"want a non-negative integer, got {v!r}")
    return v


def p_str_map(v: Any) -> dict[str, str]:
    if type(v) is not dict or not all(type(x) is str for x in v.values()):
        fail("want an object of strings")
    return v


def p_names(v: Any) -> tuple[str, ...]:
    if type(v) is not list:
        fail("want a list of strings")
    return tuple(p_name(x) for x in v)


def _list_of(item: Parser) -> Parser:
    def parse(v: Any) -> tuple[Any, ...]:
        if type(v) is not list:
            fail("want a list")
        return tuple(item(x) for x in v)

    return parse


def _condition(v: Any) -> DependCondition:
    try:
        return _CONDITIONS[v]
    except (KeyError, TypeError):
        fail(f"unknown dependency condition {v!r}")


def fields(v: Any, spec: Mapping[str, tuple[Parser, Any]], where: str) -> dict[str, Any]:
    """Parse object ``v`` by ``spec`` (key -> (parser, default or _REQUIRED))."""
    if type(v) is not dict:
        fail(f"{where}: want an object")
    unknown = v.keys() - spec.keys()
    if unknown:
        fail(f"{where}: unknown keys {sorted(unknown)}")
    out: dict[str, Any] = {}
    for key, (parse, default) in spec.items():
        if key in v:
            try:
                out[key] = parse(v[key])
            except DecodeError as exc:
                fail(f"{where}.{key}: {exc.message}")
        elif default is _REQUIRED:
            fail(f"{where}: missing {key!r}")
        else:
            out[key] = default() if callable(default) else default
    return out


_SETUP_ERROR_SPEC = {"message": (p_str, _REQUIRED), "task_ids": (p_names, ())}
_TASK_KEYS = frozenset(
    {"id", "name", "depends", "environment", "steps", "ignore_failure", "needs_approval", "skip"}
)
_NONE: list[Any] = []  # default for absent lists; never mutated


def decode_setup_error(v: Any) -> SetupError:
    return SetupError(**fields(v, _SETUP_ERROR_SPEC, "setup error"))


def _depend(v: Any) -> TaskDepend:
    if type(v) is dict:  # the valid case first, with one test per condition
        tid, conds = v.get("task_id"), v.get("conditions", _NONE)
        if type(tid) is str and tid and type(conds) is list and len(v) == 1 + (conds is not _NONE):
            v["conditions"] = tuple([_condition(c) for c in conds]) if conds else ()
            dep = _new(TaskDepend)
            _set_depend(dep, v)
            return dep
        if 0 < len(v) <= 2:
            fail("task.depends: want a non-empty task_id and a list of conditions")
    fail("task.depends: each is an object with task_id and conditions")


def _task_defaults() -> tuple[tuple[str, Any], ...]:
    return (
        ("depends", []),
        ("environment", {}),
        ("steps", []),
        ("ignore_failure", False),
        ("needs_approval", False),
        ("skip", False),
    )


def decode_task(v: Any, *, with_level: bool = False) -> RunConfigTask:
    """A task definition; ``level`` is read only from stored state (events never carry it).

    Hand-written rather than table-driven, with a fast path for the usual case where every key
    is present: a run.created carries 3–10 of these and its cost is spread over every event of
    the run. Takes ``v`` over as the task's field dict.
    """
    if type(v) is not dict:
        fail("task: want an object")
    level = p_count(v.pop("level", 0)) if with_level else 0
    if len(v) != len(_TASK_KEYS):
        if not v.keys() <= _TASK_KEYS:
            fail(f"task: unknown keys {sorted(v.keys() - _TASK_KEYS)}")
        for key, default in _task_defaults():
            v.setdefault(key, default)
    try:
        tid, name, deps, steps = v["id"], v["name"], v["depends"], v["steps"]
        env, ign, appr, skip = v["environment"], v["ignore_failure"], v["needs_approval"], v["skip"]
    except KeyError:
        fail(f"task: want an object with keys among {sorted(_TASK_KEYS)} and an id and a name")
    if (
        type(tid) is not str
        or not tid
        or type(name) is not str
        or not name
        or type(deps) is not list
        or type(steps) is not list
        or type(env) is not dict
        or type(ign) is not bool
        or type(appr) is not bool
        or type(skip) is not bool
    ):
        fail("task: wrong type for id, name, depends, steps, environment or a flag")
    for x in env.values():
        if type(x) is not str:
            fail("task.environment: want an object of strings")
    for step in steps:
        if type(step) is not dict:
            fail("task.steps: every step is an object")
    if not deps:
        v["depends"] = ()
    elif len(deps) == 1:  # the usual case: no list to build
        v["depends"] = (_depend(deps[0]),)
    else:
        v["depends"] = tuple([_depend(d) for d in deps])
    v["steps"] = tuple(steps)
    v["level"] = level
    task = _new(RunConfigTask)  # events._fast.build, inlined: a creation carries several tasks
    _set_config_task(task, v)
    return task


def encode_setup_error(e: SetupError) -> dict[str, Any]:
    return {"message": e.message, "task_ids": list(e.task_ids)}


def encode_task(t: RunConfigTask, *, with_level: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": t.id,
        "name": t.name,
        "depends": [{"task_id": d.task_id, "conditions": list(d.conditions)} for d in t.depends],
        "environment": dict(t.environment),
        "steps": [dict(s) for s in t.steps],
        "ignore_failure": t.ignore_failure,
        "needs_approval": t.needs_approval,
        "skip": t.skip,
    }
    if with_level:
        out["level"] = t.level
    return out


_RUN_CREATED_SPEC: dict[str, tuple[Parser, Any]] = {
    "name": (p_name, _REQUIRED),
    "group": (p_str, _REQUIRED),
    "tasks": (_list_of(decode_task), ()),
    "environment": (p_str_map, dict),
    "static_environment": (p_str_map, dict),
    "annotations": (p_str_map, dict),
    "setup_errors": (_list_of(decode_setup_error), ()),
    "recreated_from": (p_opt_run_id, None),
    "kept_tasks": (p_names, ()),
    "counter": (p_count, 0),
}
_SETUP_ERRORS_SPEC: dict[str, tuple[Parser, Any]] = {
    "group": (p_str, _REQUIRED),
    "errors": (_list_of(decode_setup_error), _REQUIRED),
    "name": (p_name, "Setup Error"),
    "static_environment": (p_str_map, dict),
    "annotations": (p_str_map, dict),
    "counter": (p_count, 0),
}


# -- payload decoders ------------------------------------------------------------------------------


_RUN_CREATED_KEYS = frozenset(_RUN_CREATED_SPEC)


def _str_map_in(d: dict[str, Any], key: str) -> None:
    m = d.setdefault(key, {})
    if type(m) is not dict:
        fail(f"run.created.{key}: want an object of strings")
    for x in m.values():
        if type(x) is not str:
            fail(f"run.created.{key}: want an object of strings")


def _dec_run_created(d: dict[str, Any]) -> RunCreated:
    # Hand-written like decode_task (same shape as _RUN_CREATED_SPEC): creation is per run.
    if not d.keys() <= _RUN_CREATED_KEYS:
        fail(f"run.created: unknown keys {sorted(d.keys() - _RUN_CREATED_KEYS)}")
    name, group = d.get("name"), d.get("group")
    tasks, errs = d.get("tasks", _NONE), d.get("setup_errors", _NONE)
    kept = d.get("kept_tasks", _NONE)
    if type(name) is not str or not name or type(group) is not str:
        fail("run.created: want a non-empty name and a group")
    if type(tasks) is not list or type(errs) is not list or type(kept) is not list:
        fail("run.created: tasks, setup_errors and kept_tasks are lists")
    d["tasks"] = tuple([decode_task(t) for t in tasks])
    d["setup_errors"] = tuple([decode_setup_error(e) for e in errs]) if errs else ()
    d["kept_tasks"] = p_names(kept) if kept else ()
    _str_map_in(d, "environment")
    _str_map_in(d, "static_environment")
    _str_map_in(d, "annotations")
    d["recreated_from"] = p_opt_run_id(d.get("recreated_from"))
    d["counter"] = p_count(d.get("counter", 0))
    return build(RunCreated, d)


def _dec_setup_errors(d: dict[str, Any]) -> SetupErrorsReported:
    return build(SetupErrorsReported, fields(d, _SETUP_ERRORS_SPEC, "run.setup_errors_reported"))


def _empty(instance: Payload) -> Callable[[dict[str, Any]], Payload]:
    """Decoder of a payload without fields; payloads are immutable, so every decode shares one."""

    def decode(d: dict[str, Any]) -> Payload:
        if d:
            fail(f"{type(instance).__name__} carries no data")
        return instance

    return decode


def _dec_task_status(d: dict[str, Any]) -> TaskStatusChanged:
    try:
        task_id = d["task_id"]
        d["status"] = STATUSES[d["status"]]
    except (KeyError, TypeError):
        fail("task.status_changed: want task_id and a known status")
    if len(d) != 2 or type(task_id) is not str or not task_id:
        fail("task.status_changed: want exactly a non-empty task_id and a status")
    payload = _new(TaskStatusChanged)  # events._fast.build, inlined: most events are these
    _set_status(payload, d)
    return payload


def _dec_task_approved(d: dict[str, Any]) -> TaskApproved:
    task_id = d.get("task_id")
    if len(d) != 1 or type(task_id) is not str or not task_id:
        fail("task.approved: want exactly a non-empty task_id")
    return build(TaskApproved, d)


def _dec_task_annotations(d: dict[str, Any]) -> TaskAnnotationsSet:
    spec = {"task_id": (p_name, _REQUIRED), "annotations": (p_str_map, _REQUIRED)}
    return build(TaskAnnotationsSet, fields(d, spec, "task.annotations_set"))


def _dec_phase_changed(d: dict[str, Any]) -> PhaseChanged:
    try:
        d["phase"] = PHASES[d["phase"]]
        d["result"] = RESULTS[d["result"]]
        group, seq = d["group"], d["seq"]
    except (KeyError, TypeError):
        fail("run.phase_changed: want group, a known phase and result, seq")
    if len(d) != 4 or type(group) is not str or type(seq) is not int or seq < 1:
        fail("run.phase_changed: want exactly group (string), phase, result, seq (≥ 1)")
    payload = _new(PhaseChanged)
    _set_phase(payload, d)
    return payload


#: Decoder of each type's *current* version (older versions are upcast first).
DECODERS: Mapping[EventType, Callable[[dict[str, Any]], Payload]] = {
    EventType.RUN_CREATED: _dec_run_created,
    EventType.SETUP_ERRORS_REPORTED: _dec_setup_errors,
    EventType.START_REQUESTED: _empty(StartRequested()),
    EventType.CANCEL_REQUESTED: _empty(CancelRequested()),
    EventType.STOP_REQUESTED: _empty(StopRequested()),
    EventType.TASK_STATUS_CHANGED: _dec_task_status,
    EventType.TASK_APPROVED: _dec_task_approved,
    EventType.TASK_ANNOTATIONS_SET: _dec_task_annotations,
    EventType.PHASE_CHANGED: _dec_phase_changed,
}


# -- payload encoders ------------------------------------------------------------------------------


def _enc_run_created(p: Any) -> dict[str, Any]:
    return {
        "name": p.name,
        "group": p.group,
        "tasks": [encode_task(t) for t in p.tasks],
        "environment": dict(p.environment),
        "static_environment": dict(p.static_environment),
        "annotations": dict(p.annotations),
        "setup_errors": [encode_setup_error(e) for e in p.setup_errors],
        "recreated_from": p.recreated_from,
        "kept_tasks": list(p.kept_tasks),
        "counter": p.counter,
    }


def _enc_setup_errors(p: Any) -> dict[str, Any]:
    return {
        "group": p.group,
        "errors": [encode_setup_error(e) for e in p.errors],
        "name": p.name,
        "static_environment": dict(p.static_environment),
        "annotations": dict(p.annotations),
        "counter": p.counter,
    }


def _enc_empty(p: Any) -> dict[str, Any]:
    return {}


ENCODERS: Mapping[EventType, Callable[[Any], dict[str, Any]]] = {
    EventType.RUN_CREATED: _enc_run_created,
    EventType.SETUP_ERRORS_REPORTED: _enc_setup_errors,
    EventType.START_REQUESTED: _enc_empty,
    EventType.CANCEL_REQUESTED: _enc_empty,
    EventType.STOP_REQUESTED: _enc_empty,
    EventType.TASK_STATUS_CHANGED: lambda p: {"task_id": p.task_id, "status": p.status.value},
    EventType.TASK_APPROVED: lambda p: {"task_id": p.task_id},
    EventType.TASK_ANNOTATIONS_SET: lambda p: {
        "task_id": p.task_id,
        "annotations": dict(p.annotations),
    },
    EventType.PHASE_CHANGED: lambda p: {
        "group": p.group,
        "phase": p.phase.value,
        "result": p.result.value,
        "seq": p.seq,
    },
}
