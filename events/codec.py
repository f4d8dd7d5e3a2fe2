"""The one codec: events, commits and run state as compact orjson bytes.

Wire forms:

* an event is the envelope ``{"type", "version", "id", "run_id", "at", "data"}`` (exactly these
  keys; ``at`` is integer ms since the epoch, UTC; ``run_id`` the 16-digit form);
* a *commit* (several events appended together in one Kafka record, DESIGN.md "Commits on the
  wire") is a JSON array of envelopes. ``decode_record`` accepts either form; a commit with any
  bad event is rejected whole.

Decoding raises :class:`~events.errors.DecodeError` with a machine-readable ``reason``; older
versions are upcast (``events.upcast``) so the result always holds the current payload.
Encoding writes the current version only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from events._fast import dict_setter
from events.catalogue import CURRENT_VERSIONS, Event, EventType
from events.errors import DecodeError, DecodeReason
from events.ids import RUN_ID_WIDTH
from events.schema import DECODERS, ENCODERS
from events.state import RunState, state_from_dict, state_to_dict
from events.upcast import upcast

__all__ = [
    "DEFAULT_MAX_RECORD_SIZE",
    "decode",
    "decode_record",
    "decode_state",
    "encode",
    "encode_commit",
    "encode_state",
]

#: Kafka's default ``max.message.bytes`` (1 MiB): a larger record is refused as ``oversize``.
DEFAULT_MAX_RECORD_SIZE = 1_048_576

_loads = orjson.loads
_dumps = orjson.dumps
_JSONDecodeError = orjson.JSONDecodeError
_KINDS = {k.value: k for k in EventType}
_CURRENT = {k.value: v for k, v in CURRENT_VERSIONS.items()}
# One lookup per event finds the decoder of the current version: (kind, version, decoder).
_BY_TYPE = {k.value: (k, CURRENT_VERSIONS[k], DECODERS[k]) for k in EventType}
_NO_RUN = "0" * RUN_ID_WIDTH
_STATUS = EventType.TASK_STATUS_CHANGED.value
_STATUS_ENTRY = _BY_TYPE[_STATUS]
_valid_run_ids: set[str] = set()
_VALID_RUN_IDS_MAX = 1 << 16
_new = object.__new__
_set_event = dict_setter(Event)


def _schema(message: str) -> DecodeError:
    return DecodeError(DecodeReason.SCHEMA, message)


def _event(obj: Any) -> Event:
    """The event for one decoded envelope; takes ``obj`` over as the event's field dict."""
    if type(obj) is not dict or len(obj) != 6:
        raise _schema("an event is an object with exactly type, version, id, run_id, at, data")
    try:
        t = obj["type"]
        version = obj["version"]
        data = obj["data"]
        eid = obj["id"]
        rid = obj["run_id"]
        at = obj["at"]
    except KeyError as exc:
        raise _schema(f"envelope is missing {exc}") from None
    # Most events are task status changes: one string comparison instead of hashing the type.
    entry = _STATUS_ENTRY if t == _STATUS else _BY_TYPE.get(t) if type(t) is str else None
    if entry is None:
        raise DecodeError(DecodeReason.UNKNOWN_TYPE, f"unknown event type {t!r}")
    kind, current, decoder = entry
    if type(version) is not int:
        raise _schema("version must be an integer")
    if type(data) is not dict:
        raise _schema("data must be an object")
    if version != current:
        data = upcast(kind, version, data)
        obj["version"] = current
    if type(eid) is not str or not eid:
        raise _schema("id must be a non-empty string")
    if type(rid) is not str or (rid not in _valid_run_ids and not _check_run_id(rid)):
        raise _schema(
            "run_id 0 does not exist"
            if rid == _NO_RUN
            else f"run_id must be {RUN_ID_WIDTH} decimal digits"
        )
    if type(at) is not int or at < 0:
        raise _schema("at must be a non-negative integer (ms since the epoch)")
    obj["type"] = kind
    obj["data"] = decoder(data)
    event = _new(Event)  # events._fast.build, inlined: this runs once per event
    _set_event(event, obj)
    return event


def _check_run_id(rid: str) -> bool:
    """True for a valid run id, remembered in ``_valid_run_ids``: the events of a run come
    together, and a set lookup costs less than the checks (the hash is kept by the string, and
    callers hash the run id anyway). The set only ever holds valid ids; it is emptied when full."""
    if len(rid) != RUN_ID_WIDTH or not rid.isdigit() or not rid.isascii() or rid == _NO_RUN:
        return False
    if len(_valid_run_ids) >= _VALID_RUN_IDS_MAX:
        _valid_run_ids.clear()
    _valid_run_ids.add(rid)
    return True


def decode(raw: bytes) -> Event:
    """One event from its envelope bytes. Raises ``DecodeError``."""
    try:
        obj = _loads(raw)
    except _JSONDecodeError as exc:
        raise DecodeError(DecodeReason.INVALID_JSON, str(exc)) from None
    return _event(obj)


def decode_record(raw: bytes, *, max_size: int = DEFAULT_MAX_RECORD_SIZE) -> list[Event]:
    """The events of one Kafka record: a single envelope or a commit (a JSON array of them).

    All or nothing: raises ``DecodeError`` (``oversize`` above ``max_size`` bytes) if the record
    or any event of the commit is bad; the message then names the event's position.
    """
    if len(raw) > max_size:
        raise DecodeError(DecodeReason.OVERSIZE, f"{len(raw)} bytes > {max_size}")
    try:
        obj = _loads(raw)
    except _JSONDecodeError as exc:
        raise DecodeError(DecodeReason.INVALID_JSON, str(exc)) from None
    if type(obj) is not list:
        return [_event(obj)]
    if not obj:
        raise _schema("a commit holds at least one event")
    out: list[Event] = []
    append = out.append
    try:
        for item in obj:
            append(_event(item))
    except DecodeError as exc:  # the events before it are in ``out``: len(out) is its position
        raise DecodeError(exc.reason, f"commit event {len(out)}: {exc.message}") from None
    return out


def _envelope(event: Event) -> dict[str, Any]:
    if event.version != _CURRENT[event.type]:
        raise ValueError(f"{event.type} v{event.version} is not the current version")
    return {
        "type": event.type.value,
        "version": event.version,
        "id": event.id,
        "run_id": event.run_id,
        "at": event.at,
        "data": ENCODERS[event.type](event.data),
    }


def encode(event: Event) -> bytes:
    """The envelope bytes of ``event`` (current version only, else ``ValueError``)."""
    return _dumps(_envelope(event))


def encode_commit(events: Sequence[Event]) -> bytes:
    """One commit (JSON array) of ``events``, in order. Raises ``ValueError`` when empty."""
    if not events:
        raise ValueError("a commit holds at least one event")
    return _dumps([_envelope(e) for e in events])


def encode_state(state: RunState) -> bytes:
    """Deterministic bytes of ``state``: equal states give identical bytes (sorted maps)."""
    return _dumps(state_to_dict(state), option=orjson.OPT_SORT_KEYS)


def decode_state(raw: bytes) -> RunState:
    """Inverse of :func:`encode_state`. Raises ``DecodeError`` (``invalid_json`` or ``schema``)."""
    try:
        obj = _loads(raw)
    except _JSONDecodeError as exc:
        raise DecodeError(DecodeReason.INVALID_JSON, str(exc)) from None
    return state_from_dict(obj)
