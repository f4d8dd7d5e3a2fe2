"""Hypothesis properties of the codec and the reducer."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.workload import generate
from events import (
    Applied,
    CancelRequested,
    DependCondition,
    Event,
    Payload,
    Phase,
    PhaseChanged,
    Refused,
    Result,
    RunConfigTask,
    RunCreated,
    RunState,
    SetupError,
    SetupErrorsReported,
    StartRequested,
    StopRequested,
    TaskAnnotationsSet,
    TaskApproved,
    TaskDepend,
    TaskReady,
    TaskStatus,
    TaskStatusChanged,
    apply,
    decode,
    decode_record,
    decode_state,
    encode,
    encode_commit,
    encode_state,
    format_run_id,
    make_event,
)

SETTINGS = settings(max_examples=150, deadline=None)
text = st.text(min_size=1, max_size=12)
str_map = st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)
run_ids = st.integers(1, 10**16 - 1).map(format_run_id)
setup_errors = st.builds(
    SetupError, message=st.text(max_size=20), task_ids=st.lists(text, max_size=2).map(tuple)
)
depends = st.builds(
    TaskDepend,
    task_id=text,
    conditions=st.lists(st.sampled_from(DependCondition), max_size=3).map(tuple),
)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=8))
steps = st.dictionaries(st.text(max_size=6), json_leaf, max_size=3)
config_tasks = st.builds(
    RunConfigTask,
    id=text,
    name=text,
    depends=st.lists(depends, max_size=2).map(tuple),
    environment=str_map,
    steps=st.lists(steps, max_size=2).map(tuple),
    ignore_failure=st.booleans(),
    needs_approval=st.booleans(),
    skip=st.booleans(),
)
payloads: st.SearchStrategy[Payload] = st.one_of(
    st.builds(
        RunCreated,
        name=text,
        group=st.text(max_size=20),
        tasks=st.lists(config_tasks, max_size=3).map(tuple),
        environment=str_map,
        static_environment=str_map,
        annotations=str_map,
        setup_errors=st.lists(setup_errors, max_size=2).map(tuple),
        recreated_from=st.none() | run_ids,
        kept_tasks=st.lists(text, max_size=2).map(tuple),
        counter=st.integers(0, 2**40),
    ),
    st.builds(
        SetupErrorsReported,
        group=st.text(max_size=20),
        errors=st.lists(setup_errors, max_size=2).map(tuple),
        name=text,
        static_environment=str_map,
        annotations=str_map,
        counter=st.integers(0, 2**40),
    ),
    st.just(StartRequested()),
    st.just(CancelRequested()),
    st.just(StopRequested()),
    st.builds(TaskStatusChanged, task_id=text, status=st.sampled_from(TaskStatus)),
    st.builds(TaskApproved, task_id=text),
    st.builds(TaskAnnotationsSet, task_id=text, annotations=str_map),
    st.builds(
        PhaseChanged,
        group=st.text(max_size=20),
        phase=st.sampled_from(Phase),
        result=st.sampled_from(Result),
        seq=st.integers(1, 2**40),
    ),
    st.builds(TaskReady, task_id=text, level=st.integers(0, 2**40), seq=st.integers(1, 2**40)),
)
events = st.builds(make_event, payloads, id=text, run_id=run_ids, at=st.integers(0, 2**62))


@SETTINGS
@given(events)
def test_codec_roundtrip_every_type(event: Event) -> None:
    raw = encode(event)
    assert decode(raw) == event
    assert encode(decode(raw)) == raw


@SETTINGS
@given(st.lists(events, min_size=1, max_size=5))
def test_commit_roundtrip(batch: list[Event]) -> None:
    assert decode_record(encode_commit(batch)) == batch


# -- random event sequences against the reducer ---------------------------------------------------

TASK_IDS = ["a", "b", "c"]
RUNS = [format_run_id(1), format_run_id(2)]


@st.composite
def run_scripts(draw: st.DrawFn) -> list[Event]:
    """Creations of two runs (sometimes inconsistent), then random requests and task reports,
    with some events repeated (redeliveries)."""
    out: list[Event] = []
    for rid in RUNS:
        tasks = tuple(
            RunConfigTask(
                id=t,
                name=t,
                depends=tuple(
                    TaskDepend(task_id=p)
                    for p in draw(
                        st.lists(st.sampled_from(TASK_IDS[:i]), max_size=1) if i else st.just([])
                    )
                ),
                ignore_failure=draw(st.booleans()),
                needs_approval=draw(st.booleans()),
                skip=draw(st.booleans()),
            )
            for i, t in enumerate(TASK_IDS)
        )
        errors = (SetupError(message="broken"),) if draw(st.integers(0, 5)) == 0 else ()
        data = RunCreated(name="r", group="/project/p", tasks=tasks, setup_errors=errors)
        out.append(make_event(data, id=f"{rid}.c", run_id=rid, at=1))
    task_report = st.builds(
        TaskStatusChanged, task_id=st.sampled_from(TASK_IDS), status=st.sampled_from(TaskStatus)
    )
    bodies = st.one_of(
        task_report,
        task_report,
        st.just(StartRequested()),
        st.just(CancelRequested()),
        st.just(StopRequested()),
        st.builds(TaskApproved, task_id=st.sampled_from(TASK_IDS)),
    )
    steps = draw(st.lists(st.tuples(bodies, st.sampled_from(RUNS), st.integers(0, 6)), max_size=40))
    for i, (body, rid, dup) in enumerate(steps):
        out.append(make_event(body, id=f"{rid}.{i}", run_id=rid, at=10 + i))
        if dup == 0:
            out.append(out[draw(st.integers(0, len(out) - 1))])
    return out


def same_without_derived(state: RunState | None, event: Event, out: Applied | Refused) -> None:
    """``apply(..., derive=False)`` (a replay's) gives ``out``'s verdict and state, no events."""
    bare = apply(state, event, derive=False)
    assert type(bare) is type(out)
    assert bare.state == out.state
    if isinstance(bare, Applied):
        assert bare.derived == ()
        assert bare.duplicate == out.duplicate  # type: ignore[union-attr]
    else:
        assert bare.reason == out.reason  # type: ignore[union-attr]


def replay(script: list[Event]) -> tuple[dict[str, RunState], list[Event]]:
    states: dict[str, RunState] = {}
    derived: list[Event] = []
    for e in script:
        before = states.get(e.run_id)
        out = apply(before, e)
        same_without_derived(before, e, out)
        if isinstance(out, Applied):
            if before is not None and before.run.phase.is_final():
                assert out.duplicate
                assert out.state is before
            if out.duplicate:
                assert out.state is before
                assert out.derived == ()
            states[e.run_id] = out.state
            derived.extend(out.derived)
        else:
            assert out.state is before
    return states, derived


@SETTINGS
@given(run_scripts())
def test_final_phases_never_change_and_duplicates_change_nothing(script: list[Event]) -> None:
    states, _ = replay(script)
    for state in states.values():
        run = state.run
        if run.phase.is_final():
            assert run.end_time is not None
        if run.phase is Phase.FINISHED:
            assert run.result.is_set()
            assert run.tasks_finished()
        assert state.open_tasks == sum(not t.status.is_finished() for t in run.tasks.values())


@SETTINGS
@given(run_scripts())
def test_replaying_twice_gives_equal_states_and_bytes(script: list[Event]) -> None:
    one, d1 = replay(script)
    two, d2 = replay(script)
    assert one == two
    assert d1 == d2
    for rid, state in one.items():
        assert encode_state(state) == encode_state(two[rid])
        assert decode_state(encode_state(state)) == state


@SETTINGS
@given(run_scripts())
def test_phase_changed_seq_goes_up_by_one_per_run(script: list[Event]) -> None:
    states, derived = replay(script)
    seen: dict[str, list[int]] = {}
    last: dict[str, tuple[Any, Any]] = {}
    for d in derived:
        if not isinstance(d.data, PhaseChanged):
            continue  # task.ready: tests/unit/test_reducer_advance.py
        seen.setdefault(d.run_id, []).append(d.data.seq)
        assert d.id == f"{d.run_id}.phase.{d.data.seq}"
        assert last.get(d.run_id) != (d.data.phase, d.data.result)
        last[d.run_id] = (d.data.phase, d.data.result)
    for rid, seqs in seen.items():
        assert seqs == list(range(1, len(seqs) + 1))
        assert states[rid].seq == len(seqs)
        assert last[rid] == (states[rid].run.phase, states[rid].run.result)


def test_without_derived_a_workload_folds_to_the_same_states() -> None:
    """A replay's ``derive=False`` on realistic runs (DAGs, chains, failures, stops): every
    verdict and state as with derived events, and those events were many."""
    states: dict[str, RunState] = {}
    derived = 0
    for e in generate(seed=11, runs=300, first_run_id=1_000):
        before = states.get(e.run_id)
        out = apply(before, e)
        same_without_derived(before, e, out)
        if isinstance(out, Applied):
            states[e.run_id] = out.state
            derived += sum(isinstance(d.data, TaskReady) for d in out.derived)
    assert derived > 1_000
