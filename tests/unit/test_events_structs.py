"""Property tests of the msgspec declarations: every Struct round-trips through its JSON form, and
no input (random bytes, mutations of valid events) makes the decoders raise anything but
``DecodeError``.

Values are generated from the declarations themselves (``msgspec.inspect``), constraints included,
so a new field or a new Struct is covered without touching this file.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

import events.catalogue as catalogue
import events.model as model
import events.state as state
from events import DecodeError, decode, decode_record, decode_state, encode, format_run_id
from events.codec import decode_task

mi = msgspec.inspect
JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
RUN_IDS = st.integers(1, 10**16 - 1).map(format_run_id)


def strategy(t: Any) -> st.SearchStrategy[Any]:
    """Values of msgspec type info ``t`` that satisfy its constraints."""
    if isinstance(t, mi.Metadata):
        # The one pattern: run ids (the envelope's is checked by the codec: extra_json_schema).
        if "pattern" in (t.extra_json_schema or {}):
            return RUN_IDS
        return strategy(t.type)
    if isinstance(t, mi.StrType):
        if t.pattern is not None:  # the one pattern: run ids
            return RUN_IDS
        return st.text(min_size=t.min_length or 0, max_size=8)
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else -(2**63)
        return st.integers(lo, t.le if t.le is not None else 2**63 - 1)
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.AnyType):
        return JSON
    if isinstance(t, mi.EnumType):
        return st.sampled_from(list(t.cls))
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.UnionType):
        return st.one_of([strategy(u) for u in t.types])
    if isinstance(t, mi.VarTupleType):
        return st.lists(strategy(t.item_type), max_size=3).map(tuple)
    if isinstance(t, mi.FrozenSetType):
        return st.frozensets(strategy(t.item_type), max_size=3)
    if isinstance(t, mi.DictType):
        return st.dictionaries(strategy(t.key_type), strategy(t.value_type), max_size=3)
    if isinstance(t, mi.StructType):
        fields = {f.name: strategy(f.type) for f in t.fields}
        return st.fixed_dictionaries(fields).map(lambda kw: t.cls(**kw))
    raise AssertionError(f"no strategy for {t}")


def structs() -> list[type[msgspec.Struct]]:
    found = []
    for module in (model, catalogue, state):
        for value in vars(module).values():
            # Event is abstract: its subclasses are tested
            if (
                isinstance(value, type)
                and issubclass(value, msgspec.Struct)
                and value is not catalogue.Event
            ):
                found.append(value)
    return found


STRUCTS = structs()
VALUES = st.sampled_from(STRUCTS).flatmap(lambda cls: strategy(mi.type_info(cls)))
EVENTS = st.sampled_from(list(catalogue.EVENT_TYPES.values())).flatmap(
    lambda cls: strategy(mi.type_info(cls))
)


def test_every_shape_of_the_model_and_the_catalogue_is_covered() -> None:
    names = {cls.__name__ for cls in STRUCTS}
    assert {"Run", "RunConfig", "RunConfigTask", "PlannedTask", "RunTask", "SetupError"} <= names
    assert {cls.__name__ for cls in catalogue.EVENT_TYPES.values()} <= names
    assert {"RunCreated", "TaskStatusChanged", "PhaseChanged", "StoredState"} <= names


@settings(max_examples=300)
@given(VALUES)
def test_every_struct_round_trips_through_json(value: msgspec.Struct) -> None:
    raw = msgspec.json.encode(value)
    assert msgspec.json.decode(raw, type=type(value)) == value


@settings(max_examples=200)
@given(EVENTS)
def test_every_event_round_trips_through_the_codec(event: catalogue.Event) -> None:
    raw = encode(event)
    assert decode(raw) == event
    assert decode_record(raw) == [event]


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_decode_error(raw: bytes) -> None:
    for decoder in (decode, decode_record, decode_state):
        with contextlib.suppress(DecodeError):
            decoder(raw)


def _mutate(obj: Any, draw: Any) -> Any:
    """``obj`` with one random change somewhere: a value replaced, a key dropped or added."""
    if isinstance(obj, dict) and obj:
        key = draw(st.sampled_from(sorted(obj)))
        action = draw(st.sampled_from(["replace", "drop", "add", "descend"]))
        if action == "replace":
            return {**obj, key: draw(JSON)}
        if action == "drop":
            return {k: v for k, v in obj.items() if k != key}
        if action == "add":
            return {**obj, draw(st.text(max_size=6)): draw(JSON)}
        return {**obj, key: _mutate(obj[key], draw)}
    if isinstance(obj, list) and obj:
        i = draw(st.integers(0, len(obj) - 1))
        return [*obj[:i], _mutate(obj[i], draw), *obj[i + 1 :]]
    return draw(JSON)


@settings(max_examples=400)
@given(EVENTS, st.data())
def test_mutated_events_decode_or_raise_decode_error(event: catalogue.Event, data: Any) -> None:
    obj = _mutate(orjson.loads(encode(event)), data.draw)
    for raw in (orjson.dumps(obj), orjson.dumps([obj, obj])):
        with contextlib.suppress(DecodeError):
            decode_record(raw)


@settings(max_examples=200)
@given(EVENTS, st.data())
def test_bytes_mutations_of_events_decode_or_raise_decode_error(
    event: catalogue.Event, data: Any
) -> None:
    raw = bytearray(encode(event))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(DecodeError):
        decode_record(bytes(raw))


@settings(max_examples=200)
@given(JSON)
def test_any_json_as_a_task_or_a_state_raises_only_decode_error(obj: Any) -> None:
    for decoder in (decode_task, lambda o: decode_state(orjson.dumps(o))):
        with contextlib.suppress(DecodeError):
            decoder(obj)
