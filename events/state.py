"""The materializer's state of one run, and its stored form.

``RunState`` holds the run, its config, the last ``run.phase_changed`` sequence number, the last
``task.ready`` sequence number and a bounded window of the ids of recently applied events (for idempotent apply). The window has two
generations: ``recent_ids`` (a tuple, at most ``ID_GENERATION`` ids, newest last) and
``older_ids`` (the generation before). When ``recent_ids`` is full it becomes ``older_ids`` and
a new generation starts, so at least the last ``ID_GENERATION`` and at most the last
``2 * ID_GENERATION`` ids are remembered; adding an id costs a small tuple copy, never a walk of
the whole window. The window is deterministic: the same events give the same window.

The stored form is :class:`StoredState`: the run and its config as declared in ``events.model``
with one difference, their ``tasks`` maps are stored as arrays in task order (a task carries its
id); ``older_ids`` is sorted and ``open_tasks`` is derived again on reading; ``ready_seq`` is
written only when not 0 (so the states of runs that never had a ready task keep the bytes they
had before ``task.ready`` existed, and an older stored state reads as ``ready_seq`` 0). The bytes are JSON
with sorted keys at every level, so equal states give identical bytes.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec
import orjson

from events.errors import DecodeError, DecodeReason, validation_message
from events.model import (
    FINISHED_TASK_STATUSES,
    Count,
    Name,
    Phase,
    Result,
    Run,
    RunConfig,
    Shape,
)

__all__ = [
    "ID_GENERATION",
    "STATE_FORMAT",
    "RunState",
    "StoredState",
    "state_from_dict",
    "state_to_bytes",
    "state_to_dict",
    "state_to_json",
]

#: Size of one generation of the recent event id window (see the module docstring).
ID_GENERATION = 32
#: Version of the stored state form; bump it (and read the old one) when the form changes.
STATE_FORMAT: Final = 1


class RunState(Shape):
    """One run as the reducer sees it. ``open_tasks`` is derived: the number of tasks not
    finished yet."""

    run: Run
    config: RunConfig
    seq: int = 0
    recent_ids: tuple[str, ...] = ()
    older_ids: frozenset[str] = frozenset()
    open_tasks: int = 0
    ready_seq: int = 0

    def has_seen(self, event_id: str) -> bool:
        """True when ``event_id`` is in the recent-id window (then applying it is a no-op)."""
        return event_id in self.recent_ids or event_id in self.older_ids


class StoredState(Shape, omit_defaults=True):
    """The stored form of a :class:`RunState` (``run.tasks`` and ``config.tasks`` as arrays).
    Only ``ready_seq`` has a default (omitted when 0)."""

    format: Literal[1]
    seq: Count
    recent_ids: tuple[Name, ...]
    older_ids: tuple[Name, ...]
    run: Run
    config: RunConfig
    ready_seq: Count = 0


_to_builtins = msgspec.to_builtins
_convert = msgspec.convert
_dumps = orjson.dumps
_SORTED = orjson.OPT_SORT_KEYS
_encode_sorted = msgspec.json.Encoder(order="sorted").encode
_replace = msgspec.structs.replace


def state_to_bytes(state: RunState) -> bytes:
    """The stored bytes of ``state``: ``state_to_json(state_to_dict(state))``, in one pass.

    msgspec encodes the stored form straight from the shapes, with every map and struct in sorted
    key order, the ``tasks`` maps handed to it as their values in task order (an encoder takes a
    field's value as it is). No intermediate dict: 8.4 µs for a 10-task run instead of 13-15.
    The bytes are orjson's, which ``tests/unit/test_state_bytes.py`` checks on generated states
    and the golden states pin, except for one thing: a float of 1e16 or more, which orjson
    writes ``1e+16`` and msgspec ``1e16``. Floats can only sit in a task's opaque ``steps``; a
    run whose steps hold one takes the two-pass way, so stored bytes never change with the
    encoder (``runstream verify`` compares states by their bytes).
    """
    config = state.config
    for task in config.tasks.values():
        if task.steps and _has_float(task.steps):
            return state_to_json(state_to_dict(state))
    run = state.run
    return _encode_sorted(
        StoredState(
            format=STATE_FORMAT,
            seq=state.seq,
            recent_ids=state.recent_ids,
            older_ids=tuple(sorted(state.older_ids)),
            run=_replace(run, tasks=tuple(run.tasks.values())),
            config=_replace(config, tasks=tuple(config.tasks.values())),
            ready_seq=state.ready_seq,
        )
    )


def _has_float(value: Any) -> bool:
    """True when a float is anywhere in ``value`` (plain JSON values)."""
    kind = type(value)
    if kind is float:
        return True
    if kind is dict:
        value = value.values()
    elif kind is not list and kind is not tuple:
        return False
    return any(_has_float(item) for item in value)


def state_to_dict(state: RunState) -> dict[str, Any]:
    """The stored form as plain JSON values (maps must be dumped with sorted keys)."""
    stored = StoredState(
        format=STATE_FORMAT,
        seq=state.seq,
        recent_ids=state.recent_ids,
        older_ids=tuple(sorted(state.older_ids)),
        run=state.run,
        config=state.config,
        ready_seq=state.ready_seq,
    )
    out: dict[str, Any] = _to_builtins(stored)
    for part in (out["run"], out["config"]):
        part["tasks"] = list(part["tasks"].values())
    return out


def state_to_json(form: dict[str, Any]) -> bytes:
    """The bytes of a stored form: JSON with sorted keys at every level.

    orjson writes them (untyped JSON is enough here, and its bytes are the ones every stored
    state has had since format 1); msgspec only for what orjson cannot hold, an integer beyond
    64 bits inside an opaque task step.
    """
    try:
        return _dumps(form, option=_SORTED)
    except TypeError:
        return _encode_sorted(form)


def state_from_dict(obj: Any) -> RunState:
    """Inverse of :func:`state_to_dict`; raises ``DecodeError(SCHEMA)`` on a malformed form."""
    if type(obj) is dict:
        obj = {**obj, "run": _keyed(obj.get("run")), "config": _keyed(obj.get("config"))}
    try:
        stored = _convert(obj, StoredState)
    except msgspec.ValidationError as exc:
        raise DecodeError(DecodeReason.SCHEMA, validation_message(exc, StoredState)) from None
    run, config = stored.run, stored.config
    if run.phase is not Phase.SETUPERROR and run.tasks.keys() != config.tasks.keys():
        raise DecodeError(DecodeReason.SCHEMA, "run tasks and config tasks differ")
    if run.phase is Phase.SETUPERROR and run.result is not Result.UNKNOWN:
        raise DecodeError(DecodeReason.SCHEMA, "a setuperror run has no result")
    return RunState(
        run=run,
        config=config,
        seq=stored.seq,
        recent_ids=stored.recent_ids,
        older_ids=frozenset(stored.older_ids),
        open_tasks=sum(t.status not in FINISHED_TASK_STATUSES for t in run.tasks.values()),
        ready_seq=stored.ready_seq,
    )


def _keyed(part: Any) -> Any:
    """``part`` (a stored run or config) with its ``tasks`` array as the map by task id."""
    if type(part) is not dict or type(part.get("tasks")) is not list:
        return part  # the conversion says what is wrong
    tasks = part["tasks"]
    keyed = {t.get("id") if type(t) is dict else None: t for t in tasks}
    if len(keyed) != len(tasks):
        raise DecodeError(DecodeReason.SCHEMA, "duplicate task ids in stored state")
    return {**part, "tasks": keyed}
