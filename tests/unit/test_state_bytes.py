"""A stored state's bytes do not depend on the encoder: ``encode_state`` (one pass, msgspec) gives
the bytes of the two-pass form (``state_to_dict`` dumped by orjson with sorted keys) that every
stored state has had, whatever a task's opaque steps hold."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.workload import generate
from events import (
    Applied,
    Event,
    RunConfigTask,
    RunCreated,
    RunState,
    StartRequested,
    TaskDepend,
    TaskStatus,
    TaskStatusChanged,
    apply,
    decode_state,
    encode_state,
    format_run_id,
    make_event,
)
from events.state import state_to_dict, state_to_json

RID = format_run_id(7)


def two_pass(state: RunState) -> bytes:
    return state_to_json(state_to_dict(state))


def fold(events: list[Event]) -> dict[str, RunState]:
    states: dict[str, RunState] = {}
    for e in events:
        out = apply(states.get(e.run_id), e)
        if isinstance(out, Applied):
            states[e.run_id] = out.state
    return states


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),  # beyond 64 bits too: orjson cannot, msgspec can
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),  # any code point: controls, U+2028, astral
)
json_values = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
steps = st.dictionaries(st.text(max_size=6), json_values, max_size=3)
str_map = st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3)


@st.composite
def states(draw: st.DrawFn) -> RunState:
    n = draw(st.integers(1, 12))
    tasks = tuple(
        RunConfigTask(
            id=f"t{i}",
            name=draw(st.text(min_size=1, max_size=8)),
            depends=(TaskDepend(task_id=f"t{i - 1}"),) if i and draw(st.booleans()) else (),
            environment=draw(str_map),
            steps=tuple(draw(st.lists(steps, max_size=2))),
            ignore_failure=draw(st.booleans()),
        )
        for i in range(n)
    )
    created = RunCreated(
        name="r",
        group="/project/p",
        tasks=tasks,
        environment=draw(str_map),
        annotations=draw(str_map),
    )
    script = [
        make_event(created, id="c", run_id=RID, at=1),
        make_event(StartRequested(), id="s", run_id=RID, at=2),
    ]
    reports = draw(
        st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from(TaskStatus)), max_size=50)
    )
    for k, (i, status) in enumerate(reports):
        data = TaskStatusChanged(task_id=f"t{i}", status=status)
        script.append(make_event(data, id=f"e{k}", run_id=RID, at=3 + k))
    return fold(script)[RID]


@settings(max_examples=300, deadline=None)
@given(states())
def test_one_pass_gives_the_two_pass_bytes(state: RunState) -> None:
    raw = encode_state(state)
    assert raw == two_pass(state)
    assert decode_state(raw) == state


def test_the_workloads_states_give_the_two_pass_bytes() -> None:
    states = fold(list(generate(seed=5, runs=400, first_run_id=1_000)))
    assert len(states) == 400
    for state in states.values():
        assert encode_state(state) == two_pass(state)


def test_a_large_float_in_a_step_keeps_orjsons_form() -> None:
    # msgspec writes 1e16 as "1e16", orjson as "1e+16": such a run takes the two-pass way.
    step: dict[str, Any] = {"timeout": 1e16, "nested": [{"x": 2.5e300}]}
    task = RunConfigTask(id="t0", name="t0", steps=(step,))
    state = fold([make_event(RunCreated(name="r", group="/project/p", tasks=(task,)), id="c", run_id=RID, at=1)])[RID]  # fmt: skip
    raw = encode_state(state)
    assert b'"timeout":1e+16' in raw
    assert b"2.5e+300" in raw
    assert raw == two_pass(state)
