"""Executors over HTTP against a real worker (issue 20): two executors claim the same ready task
at once, exactly one wins and the other is told who holds it; the holder reports the task
running and successful over HTTP, the other's report is refused; the run finishes. On the way,
the run says what it waits for, and ``/stuck`` answers for every partition."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from api.client import AsyncClient
from api.errors import ApiError, Conflict
from api.views import TaskClaim
from tests.harness import Worker, make_settings, prepare_topics, wait_healthy, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(300)]

#: Deadlines for a hung system, not performance assertions.
WAIT = 60


async def test_two_executors_claim_one_task_over_http_one_wins_and_the_run_finishes(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(
        unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects",
        max_running_per_group=1,  # the scheduler starts the run
    )  # fmt: skip
    await prepare_topics(s)
    worker = Worker(s, tmp_path / "worker.log").start()
    url = f"http://127.0.0.1:{s.web_port}"
    try:
        await wait_healthy(url, within=120)
        async with AsyncClient(url) as alice, AsyncClient(url) as bob:
            created = await alice.create_run(
                name="build",
                group=f"/project/{unique}/branch/main",
                tasks=[{"id": "build", "name": "build"}],
            )
            run_id = created.run.id
            assert created.waiting is not None
            assert created.waiting.run is not None
            assert created.waiting.run.what == "slot"

            async def running() -> bool:
                return bool((await alice.get_run(run_id)).run.phase == "running")

            await wait_until(running, within=WAIT, what="the scheduler to start the run")
            got = await alice.get_run(run_id)
            assert got.waiting is not None
            assert [t.what for t in got.waiting.tasks] == ["claim"]

            # Both executors claim the ready task at once: exactly one claim is applied.
            answers = await asyncio.gather(
                alice.claim(run_id, "build", "exec-alice", lease_ms=60_000),
                bob.claim(run_id, "build", "exec-bob", lease_ms=60_000),
                return_exceptions=True,
            )
            won = [a for a in answers if isinstance(a, TaskClaim)]
            lost = [a for a in answers if isinstance(a, BaseException)]
            assert (len(won), len(lost)) == (1, 1), answers
            [claim], [refusal] = won, lost
            holder = claim.executor_id
            assert claim == TaskClaim(
                run_id=run_id, task_id="build", executor_id=holder, attempt=1, lease_ms=60_000,
            )  # fmt: skip
            assert isinstance(refusal, Conflict), refusal
            assert refusal.status == 409
            assert refusal.message == f"task 'build' is held by executor {holder}"
            by_name = {"exec-alice": alice, "exec-bob": bob}
            holder_client = by_name[holder]
            other = "exec-bob" if holder == "exec-alice" else "exec-alice"

            waiting = (await alice.get_run(run_id)).waiting
            assert waiting is not None
            waits = waiting.tasks
            assert (waits[0].what, waits[0].executor) == ("executor", holder)
            stuck = await alice.stuck(older_than=0)
            assert stuck.partial is False
            assert [r.run_id for r in stuck.runs] == [run_id]
            assert list(stuck.runs[0].tasks) == ["build"]

            await holder_client.report(run_id, "build", "running", holder)
            with pytest.raises(Conflict) as held:
                await by_name[other].report(run_id, "build", "success", other)
            assert held.value.message == f"task 'build' is held by executor {holder}"
            await holder_client.report(run_id, "build", "success", holder)

            got = await alice.get_run(run_id)  # a 204 is the truth: the owner applied it
            assert (got.run.phase, got.run.result) == ("finished", "success")
            assert got.run.tasks[0].holder == holder
            assert got.waiting is None
            history = await alice.run_history(run_id)
            types = [e.type for e in history.events if e.outcome == "applied"]
            assert types.count("task.claimed") == 1
            assert types.count("task.status_changed") == 2
    except ApiError as exc:
        raise AssertionError(f"{exc!r}\n{worker.log_text()[-4000:]}") from exc
    finally:
        worker.kill()
