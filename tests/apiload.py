"""An API load spread over several real workers: every request goes to a random live worker, and
every answer is recorded, so a test can check each 2xx against what the owners materialized.

``Cluster.call`` retries what a client retries anyway (503, no answer) on another random worker,
within a deadline; refusals (4xx) are answers, recorded as such.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from agents.producer import EventProducer
from api.client import AsyncClient
from api.errors import ApiError, Unavailable, Unreachable
from api.views import RunView, RunWithConfig
from events.catalogue import TaskStatusChanged, make_event
from events.model import RunTask, TaskStatus
from tests.harness import Worker

T = TypeVar("T")

#: A secret in every run's environment: no log line may carry it.
SECRET = "hunter2-environment-secret"

TASKS = [
    {"id": "build", "name": "build"},
    {"id": "deploy", "name": "deploy", "needs_approval": True, "depends": [{"task_id": "build"}]},
]


@dataclass
class Answer:
    """One API answer: what was asked (``op``), of which run, the status, and the body."""

    op: str
    run_id: str
    status: int
    body: Any = None
    message: str = ""


@dataclass
class Cluster:
    workers: list[Worker]
    seed: int = 0
    deadline: float = 90.0
    answers: list[Answer] = field(default_factory=list)
    retried: int = 0
    rng: random.Random = field(init=False)
    _clients: dict[int, AsyncClient] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def url(self, w: Worker) -> str:
        return f"http://127.0.0.1:{w.settings.web_port}"

    def client(self, i: int) -> AsyncClient:
        if i not in self._clients:
            self._clients[i] = AsyncClient(self.url(self.workers[i]), timeout=30)
        return self._clients[i]

    async def close(self) -> None:
        for c in self._clients.values():
            await c.aclose()

    async def healthy(self) -> bool:
        async with httpx.AsyncClient() as h:
            for w in self.workers:
                if not w.alive():
                    continue
                try:
                    if (await h.get(f"{self.url(w)}/healthz")).status_code != 200:
                        return False
                except httpx.TransportError:
                    return False
        return True

    async def call(self, op: str, run_id: str, fn: Callable[[AsyncClient], Awaitable[T]]) -> T:
        """``fn`` on a random live worker, retried on 503 / no answer until the deadline.
        A 4xx is recorded and raised; a 2xx is recorded and returned."""
        give_up = time.monotonic() + self.deadline
        while True:
            live = [i for i, w in enumerate(self.workers) if w.alive()]
            client = self.client(self.rng.choice(live))
            try:
                out = await fn(client)
            except (Unavailable, Unreachable):
                self.retried += 1
                if time.monotonic() > give_up:
                    raise
                await asyncio.sleep(0.2)
                continue
            except ApiError as exc:
                self.answers.append(Answer(op, run_id, exc.status, message=exc.message))
                raise
            self.answers.append(Answer(op, run_id, 204 if out is None else 200, out))
            return out


async def report(executor: EventProducer, run_id: str, task: str, status: TaskStatus, n: int) -> None:  # fmt: skip
    """What an executor writes to the log: a task's status."""
    data = TaskStatusChanged(task_id=task, status=status)
    await executor.append([make_event(data, id=f"exec-{run_id}-{n}", run_id=run_id, at=1_780_000_000_000 + n)])  # fmt: skip


def task_of(run: RunView, task_id: str) -> RunTask:
    return next(t for t in run.tasks if t.id == task_id)


async def until(cl: Cluster, run_id: str, cond: Callable[[RunView], bool]) -> RunWithConfig:
    """The run (read through random workers) once ``cond(run)`` holds; the last read otherwise."""
    got = None
    for _ in range(300):
        got = await cl.call("get", run_id, lambda c: c.get_run(run_id))
        if cond(got.run):
            break
        await asyncio.sleep(0.1)
    assert got is not None
    return got


async def one_run(cl: Cluster, executor: EventProducer, group: str, problems: list[str]) -> str:
    """One run's life through random workers; every 2xx is checked at once by a read from
    another random worker (read-your-writes across workers). Returns the recreated run's id."""

    def key() -> str:
        return uuid.uuid4().hex

    def expect(cond: bool, what: str) -> None:
        if not cond:
            problems.append(what)

    created = await cl.call(
        "create",
        "",
        lambda c: c.create_run(
            group=group, name="ci", tasks=TASKS, environment={"DEPLOY_TOKEN": SECRET}
        ),
    )
    run_id = created.run.id
    got = await cl.call("get", run_id, lambda c: c.get_run(run_id))
    expect(got == created, f"{run_id}: read after create differs")
    # One key per logical action: a retry after a 503 (outcome unknown) is the same event.
    k = key()
    await cl.call("start", run_id, lambda c: c.start(run_id, idempotency_key=k))
    got = await cl.call("get", run_id, lambda c: c.get_run(run_id))
    expect(got.run.phase == "running", f"{run_id}: started but reads {got.run.phase}")
    # The executor runs the ready root task; deploy then waits for its approval.
    await report(executor, run_id, "build", TaskStatus.RUNNING, 0)
    await report(executor, run_id, "build", TaskStatus.SUCCESS, 1)
    got = await until(cl, run_id, lambda run: task_of(run, "deploy").waiting_approval)
    k = key()
    await cl.call("approve", run_id, lambda c: c.approve_task(run_id, "deploy", idempotency_key=k))
    got = await cl.call("get", run_id, lambda c: c.get_run(run_id))
    deploy = task_of(got.run, "deploy")
    expect(deploy.approved, f"{run_id}: approved but reads {deploy}")
    await report(executor, run_id, "deploy", TaskStatus.RUNNING, 2)
    await report(executor, run_id, "deploy", TaskStatus.SUCCESS, 3)
    got = await until(cl, run_id, lambda run: run.phase == "finished")
    expect(got.run.phase == "finished", f"{run_id}: never finished")
    try:
        k = key()
        await cl.call("stop", run_id, lambda c: c.stop(run_id, idempotency_key=k))
        problems.append(f"{run_id}: a stop of a finished run got a 2xx")
    except ApiError as exc:
        expect(exc.status == 400, f"{run_id}: stop of a finished run answered {exc.status}")
    got = await cl.call("get", run_id, lambda c: c.get_run(run_id))
    expect(got.run.result == "success", f"{run_id}: result {got.run.result}")
    new = await cl.call("recreate", run_id, lambda c: c.recreate_run(run_id, from_start=True))
    new_id = new.run.id
    got = await cl.call("get", new_id, lambda c: c.get_run(new_id))
    expect(got == new, f"{new_id}: read after recreate differs")
    k1, k2 = key(), key()
    await cl.call("start", new_id, lambda c: c.start(new_id, idempotency_key=k1))
    await cl.call("stop", new_id, lambda c: c.stop(new_id, idempotency_key=k2))
    got = await cl.call("get", new_id, lambda c: c.get_run(new_id))
    expect(got.run.stop is True, f"{new_id}: stopped but reads stop={got.run.stop}")
    return new_id
