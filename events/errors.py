"""Errors of the ``events`` package, all under one root, :class:`EventsError`.

Nothing here does I/O, so no error says whether a retry can help: retrying the same input gives the
same error. ``BadRequest`` is the user-error class the API maps to 400.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

import msgspec

__all__ = [
    "BadRequest",
    "CannotRecreate",
    "DecodeError",
    "DecodeReason",
    "EventsError",
    "validation_message",
]


class EventsError(Exception):
    """Root of every error raised by ``events``."""


class DecodeReason(StrEnum):
    """Why bytes could not become events; the agent puts it beside the bytes in the dead letters."""

    INVALID_JSON = "invalid_json"
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_VERSION = "unsupported_version"
    OVERSIZE = "oversize"
    SCHEMA = "schema"

    def is_permanent(self) -> bool:
        """Always true today: decoding is pure, the same bytes fail the same way after a retry.

        ``unknown_type`` and ``unsupported_version`` may succeed after a *deploy* of a newer
        runstream, which is why the dead letters keep the original bytes.
        """
        return True


class DecodeError(EventsError):
    """Bytes that are not a valid event or commit. ``reason`` is machine readable."""

    def __init__(self, reason: DecodeReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class BadRequest(EventsError):
    """A request that cannot even form a run (no group, relative group, nothing to run...).

    ``str(err)`` is a message meant for the user (the API's 400 body).
    """


class CannotRecreate(BadRequest):
    """A run that cannot be recreated; ``reason`` says why (setuperror, not finished, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"run cannot be restarted: {reason}")
        self.reason = reason


def validation_message(exc: msgspec.ValidationError, root: Any) -> str:
    """msgspec's message for ``exc`` (what was expected, and the field path ``$.data.status``),
    completed with the accepted values when the field is an enum or a literal: msgspec says
    "Invalid enum value 'x'"; a producer needs to read which values are known."""
    message = str(exc)
    path = _PATH.search(message)
    if path is None or not message.startswith("Invalid enum value"):
        return message
    target = _resolve(msgspec.inspect.type_info(root), _SEGMENT.findall(path.group(1)))
    if isinstance(target, msgspec.inspect.EnumType):
        values = [str(m.value) for m in target.cls]
    elif isinstance(target, msgspec.inspect.LiteralType):
        values = [str(v) for v in target.values]
    else:
        return message
    return f"{message} (want one of: {', '.join(values)})"


_PATH = re.compile(r" - at `\$([^`]*)`$")
_SEGMENT = re.compile(r"\.([^.\[]+)|\[([^\]]*)\]")


def _resolve(t: Any, path: list[tuple[str, str]]) -> Any:
    """The type at ``path`` (segments ``.field``, ``[3]``, ``[...]``) in type info ``t``, or None."""
    mi = msgspec.inspect
    if isinstance(t, mi.Metadata):
        t = t.type
    if not path:
        return t
    if isinstance(t, mi.UnionType):  # the first member that has the path
        found = (_resolve(u, path) for u in t.types)
        return next((r for r in found if r is not None), None)
    (name, index), rest = path[0], path[1:]
    if name and isinstance(t, mi.StructType):
        child = next((f.type for f in t.fields if f.encode_name == name), None)
    elif index and isinstance(t, (mi.ListType, mi.VarTupleType, mi.SetType, mi.FrozenSetType)):
        child = t.item_type
    elif index and isinstance(t, mi.DictType):
        child = t.value_type
    else:
        return None
    return None if child is None else _resolve(child, rest)
