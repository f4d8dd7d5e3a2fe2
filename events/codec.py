"""The one codec: events, commits and run state as compact JSON bytes (msgspec).

Wire forms:

* an event is the envelope ``{"type", "version", "id", "run_id", "at", "data"}`` (exactly these
  keys; ``at`` is integer ms since the epoch, UTC; ``run_id`` the 16-digit form);
* a *commit* (several events appended together in one Kafka record, docs/events.md "Commits:
  several events in one record") is a JSON array of envelopes. ``decode_record`` accepts either
  form; a commit with any bad event does not decode at all (the whole record is one dead letter:
  a refusal is the reducer's, of an event that decoded).

Decoding validates and builds the typed events in one pass, from the Structs of
``events.catalogue`` (a tagged union on ``type``). It raises :class:`~events.errors.DecodeError`
with a machine-readable ``reason`` and a message naming the field path and what was expected.
When the one pass fails, the record is looked at again event by event (:func:`_diagnose`): that
finds the reason (unknown type, unsupported version, schema) and upcasts older versions
(``events.upcast``), so the result always holds the current payloads. Encoding writes the current
version only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import msgspec

from events.catalogue import CURRENT_VERSIONS, EVENT_TYPES, AnyEvent, Event, EventType
from events.errors import DecodeError, DecodeReason, validation_message
from events.ids import RUN_ID_WIDTH, is_run_id
from events.model import RUN_ID_PATTERN, RunConfigTask
from events.state import RunState, state_from_dict, state_to_bytes
from events.upcast import upcast

__all__ = [
    "DEFAULT_MAX_RECORD_SIZE",
    "decode",
    "decode_record",
    "decode_state",
    "decode_task",
    "encode",
    "encode_commit",
    "encode_state",
]

#: Kafka's default ``max.message.bytes`` (1 MiB): a larger record is refused as ``oversize``.
DEFAULT_MAX_RECORD_SIZE = 1_048_576

Commit = Annotated[list[AnyEvent], msgspec.Meta(min_length=1)]

_record = msgspec.json.Decoder(Commit | AnyEvent)
_event = msgspec.json.Decoder(AnyEvent)
_any = msgspec.json.Decoder()
_task = msgspec.json.Decoder(RunConfigTask)
_encode = msgspec.json.Encoder().encode
_ValidationError = msgspec.ValidationError
_MsgspecDecodeError = msgspec.DecodeError
_KINDS = {k.value: k for k in EventType}
_KNOWN = ", ".join(_KINDS)
_CURRENT = dict(CURRENT_VERSIONS)
_ZERO_ID = "0" * RUN_ID_WIDTH
#: What msgspec would say if the envelope's run id were checked with its pattern (model.RunId).
_BAD_RUN_ID = f"Expected `str` matching regex '{RUN_ID_PATTERN}' - at `$.run_id`"


def decode(raw: bytes) -> Event:
    """One event from its envelope bytes. Raises ``DecodeError``."""
    try:
        event: Event = _event.decode(raw)
        rid = event.run_id  # the envelope's run id: its length is checked, its digits here
        if rid.isdigit() and rid.isascii() and rid != _ZERO_ID:
            return event
        raise DecodeError(DecodeReason.SCHEMA, _BAD_RUN_ID)
    except _ValidationError:
        pass
    except _MsgspecDecodeError as exc:
        raise DecodeError(DecodeReason.INVALID_JSON, str(exc)) from None
    obj = _parse(raw)
    return _diagnose(obj)


def decode_record(raw: bytes, *, max_size: int = DEFAULT_MAX_RECORD_SIZE) -> list[Event]:
    """The events of one Kafka record: a single envelope or a commit (a JSON array of them).

    All or nothing: raises ``DecodeError`` (``oversize`` above ``max_size`` bytes) if the record
    or any event of the commit is bad; the message then names the event's position.
    """
    if len(raw) > max_size:
        raise DecodeError(DecodeReason.OVERSIZE, f"{len(raw)} bytes > {max_size}")
    try:
        out = _record.decode(raw)
    except _ValidationError:
        pass
    except _MsgspecDecodeError as exc:
        raise DecodeError(DecodeReason.INVALID_JSON, str(exc)) from None
    else:
        commit = isinstance(out, list)
        events: list[Event] = list(out) if isinstance(out, list) else [out]
        for i, event in enumerate(events):
            rid = event.run_id  # as in decode
            if not (rid.isdigit() and rid.isascii() and rid != _ZERO_ID):
                where = f"commit event {i}: " if commit else ""
                raise DecodeError(DecodeReason.SCHEMA, where + _BAD_RUN_ID)
        return events
    obj = _parse(raw)
    if type(obj) is not list:
        return [_diagnose(obj)]
    if not obj:
        raise DecodeError(DecodeReason.SCHEMA, "a commit holds at least one event")
    events = []
    for i, item in enumerate(obj):
        try:
            events.append(_diagnose(item))
        except DecodeError as exc:
            raise DecodeError(exc.reason, f"commit event {i}: {exc.message}") from None
    return events


def _parse(raw: bytes) -> Any:
    """``raw`` as plain JSON values; an unreadable number is invalid JSON here, as it was for
    orjson (msgspec calls it a validation error)."""
    try:
        return _any.decode(raw)
    except _MsgspecDecodeError as exc:  # ValidationError included
        raise DecodeError(DecodeReason.INVALID_JSON, str(exc)) from None


def _diagnose(obj: Any) -> Event:
    """The event of one envelope the one-pass decoder refused (or a whole record that is not an
    envelope): the reason, in the order a reader needs it (is the type known? is the version
    readable?), then the upcast event, or msgspec's message on the current shape."""
    root: Any = AnyEvent
    if type(obj) is dict and "type" in obj:
        name = obj["type"]
        kind = _KINDS.get(name) if type(name) is str else None
        if kind is None:
            raise DecodeError(
                DecodeReason.UNKNOWN_TYPE, f"unknown event type {name!r} (known: {_KNOWN})"
            )
        root = EVENT_TYPES[kind]
        version, data = obj.get("version"), obj.get("data")
        if type(version) is int and version != _CURRENT[kind] and type(data) is dict:
            obj = {**obj, "version": _CURRENT[kind], "data": upcast(kind, version, data)}
    try:
        event: Event = _event.decode(_encode(obj))
    except _ValidationError as exc:
        raise DecodeError(DecodeReason.SCHEMA, validation_message(exc, root)) from None
    if not is_run_id(event.run_id):
        raise DecodeError(DecodeReason.SCHEMA, _BAD_RUN_ID)
    return event


def decode_task(obj: Any) -> RunConfigTask:
    """A task definition from plain JSON values (``POST /runs``); raises ``DecodeError(SCHEMA)``
    naming the field and what was expected. A task never carries a ``level``."""
    try:
        task: RunConfigTask = _task.decode(_encode(obj))
        return task
    except _ValidationError as exc:
        raise DecodeError(DecodeReason.SCHEMA, validation_message(exc, RunConfigTask)) from None
    except (_MsgspecDecodeError, TypeError) as exc:
        raise DecodeError(DecodeReason.SCHEMA, str(exc)) from None


def _check_version(event: Event) -> None:
    if event.version != _CURRENT[event.type]:
        raise ValueError(f"{event.type} v{event.version} is not the current version")


def encode(event: Event) -> bytes:
    """The envelope bytes of ``event`` (current version only, else ``ValueError``)."""
    _check_version(event)
    return _encode(event)


def encode_commit(events: Sequence[Event]) -> bytes:
    """One commit (JSON array) of ``events``, in order. Raises ``ValueError`` when empty."""
    if not events:
        raise ValueError("a commit holds at least one event")
    for e in events:
        _check_version(e)
    return _encode(events)


def encode_state(state: RunState) -> bytes:
    """Deterministic bytes of ``state``: equal states give identical bytes (sorted maps)."""
    return state_to_bytes(state)


def decode_state(raw: bytes) -> RunState:
    """Inverse of :func:`encode_state`. Raises ``DecodeError`` (``invalid_json`` or ``schema``)."""
    return state_from_dict(_parse(raw))
