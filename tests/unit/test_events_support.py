"""Builders shared by the events tests (no tests here)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from events import (
    Applied,
    Event,
    Payload,
    Refused,
    RunConfigTask,
    RunCreated,
    RunState,
    TaskDepend,
    apply,
    make_event,
)

RUN = "0000000000000007"
GROUP = "/project/p1/branch/main"
_ids = itertools.count(1)


def ev(data: Payload, *, run_id: str = RUN, id: str | None = None, at: int | None = None) -> Event:
    n = next(_ids)
    return make_event(data, id=id or f"e{n}", run_id=run_id, at=1_000 + n if at is None else at)


def task(tid: str, *parents: str, **kw: object) -> RunConfigTask:
    kw.setdefault("name", f"name-{tid}")
    depends = tuple(TaskDepend(task_id=p) for p in parents)
    return RunConfigTask(id=tid, depends=depends, **kw)  # type: ignore[arg-type]


def created(*tasks: RunConfigTask, **kw: object) -> RunCreated:
    kw.setdefault("name", "build")
    kw.setdefault("group", GROUP)
    return RunCreated(tasks=tasks, **kw)  # type: ignore[arg-type]


def applied(state: RunState | None, event: Event) -> Applied:
    out = apply(state, event)
    assert isinstance(out, Applied), out
    return out


def refused(state: RunState | None, event: Event) -> Refused:
    out = apply(state, event)
    assert isinstance(out, Refused), out
    assert out.state is state
    return out


def fold(events: Iterable[Event], state: RunState | None = None) -> RunState | None:
    for e in events:
        out = apply(state, e)
        if isinstance(out, Applied):
            state = out.state
    return state
