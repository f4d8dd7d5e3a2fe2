"""Builders shared by the API tests (no tests here)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from api import create_api
from events import Applied, TaskStatus, TaskStatusChanged, apply, make_event
from tests.fakes_api import Fakes

GROUP = "/project/p1/branch/main"


def task(tid: str, *parents: str, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": tid, "name": f"name-{tid}", **kw}
    if parents:
        out["depends"] = [{"task_id": p} for p in parents]
    return out


def new_run(*tasks: dict[str, Any], **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "build", "group": GROUP, "tasks": list(tasks) or [task("a")]}
    body.update(kw)
    return body


@asynccontextmanager
async def served(fakes: Fakes | None = None, **options: Any) -> AsyncIterator[tuple[TestClient, Fakes]]:  # type: ignore[type-arg]  # fmt: skip
    """The API over fakes on a loopback port, with a test client."""
    fakes = fakes or Fakes()
    options.setdefault("heartbeat", 0.05)
    app = create_api(fakes.deps(), **options)
    async with TestClient(TestServer(app)) as client:
        yield client, fakes


def set_task_status(fakes: Fakes, run_id: str, task_id: str, status: TaskStatus) -> None:
    """What an executor would report, applied straight to the source (the API has no route)."""
    fakes.materialize()
    state = fakes.owners.states[run_id]
    data = TaskStatusChanged(task_id=task_id, status=status)
    event = make_event(data, id=f"x-{task_id}-{status}", run_id=run_id, at=10)
    out = apply(state, event)
    assert isinstance(out, Applied), out
    fakes.owners.states[run_id] = out.state
