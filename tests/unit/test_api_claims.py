"""Executors over HTTP (issue 20), over the API's fakes: claims, status reports, what a run waits
for, the stuck runs of every worker; the client's methods and ``runstream runs stuck``."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, redirect_stderr, redirect_stdout
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api import create_api
from api.cluster import ClusterKey
from api.errors import BadRequest, Conflict
from api.service import task_refusal
from api.views import StuckRuns, TaskClaim
from events import EventType, TaskReleased, TaskStatus, make_event
from events.catalogue import ReleaseReason
from partition.admission import RefusalCode, refusal_code
from tests.fakes_api import FakeIds, Fakes
from tests.unit.test_api_client import both, open_client, url_of
from tests.unit.test_api_support import GROUP, new_run, served, task

RUNS = "/api/v1/runs"


async def body_of(resp: Any, status: int) -> Any:
    body = await resp.json()
    assert resp.status == status, body
    return body


async def refused(resp: Any, status: int, code: str | None = None) -> str:
    """The message of a refusal with ``status`` (and ``code``, when given)."""
    body = await body_of(resp, status)
    assert body.get("code") == code, body
    assert isinstance(body["message"], str)
    return str(body["message"])


async def running_run(client: Any, *tasks: dict[str, Any]) -> str:
    created = await body_of(await client.post(RUNS, json=new_run(*tasks)), 201)
    run_id: str = created["run"]["id"]
    resp = await client.put(f"{RUNS}/{run_id}/actions", json={"action_type": "start"})
    assert resp.status == 204
    return run_id


async def claim(client: Any, run_id: str, task_id: str, executor: str, **kw: Any) -> Any:
    headers = kw.pop("headers", None)
    body = {"executor_id": executor, **kw}
    return await client.post(f"{RUNS}/{run_id}/tasks/{task_id}/claim", json=body, headers=headers)


async def report(client: Any, run_id: str, task_id: str, status: str, executor: str | None = None, **kw: Any) -> Any:  # fmt: skip
    body: dict[str, Any] = {"status": status}
    if executor is not None:
        body["executor_id"] = executor
    return await client.put(f"{RUNS}/{run_id}/tasks/{task_id}/status", json=body, **kw)


def tasks_of(fakes: Fakes, run_id: str) -> dict[str, Any]:
    return dict(fakes.owners.states[run_id].run.tasks)


# -- claims --------------------------------------------------------------------------------------


async def test_the_first_claim_wins_and_another_executor_gets_409_naming_the_holder() -> None:
    async with served() as (client, fakes):
        run_id = await running_run(client, task("build"), task("test", "build"))
        got = await body_of(await claim(client, run_id, "build", "runner-7", lease_ms=20_000), 200)
        assert got == {
            "run_id": run_id,
            "task_id": "build",
            "executor_id": "runner-7",
            "attempt": 1,
            "lease_ms": 20_000,
        }
        msg = await refused(await claim(client, run_id, "build", "runner-8"), 409, "task_held")
        assert msg == "task 'build' is held by executor runner-7"
        # The holder's claim again renews its lease (the default when none is given).
        again = await body_of(await claim(client, run_id, "build", "runner-7"), 200)
        assert (again["executor_id"], again["lease_ms"]) == ("runner-7", 30_000)
        assert tasks_of(fakes, run_id)["build"].holder == "runner-7"
        # The refused claim was judged against the live state and never appended.
        claims = [e for e in fakes.owners.events if e.type is EventType.TASK_CLAIMED]
        assert [e.data.executor_id for e in claims] == ["runner-7", "runner-7"]  # type: ignore[union-attr]
        # Not ready (a parent has not ended): 400, as every other refusal of an action.
        msg = await refused(await claim(client, run_id, "test", "runner-8"), 400)
        assert "is not ready: a parent has not ended" in msg


async def test_concurrent_claims_one_200_the_others_409() -> None:
    async with served() as (client, _):
        run_id = await running_run(client, task("build"))
        answers = await asyncio.gather(*(claim(client, run_id, "build", f"runner-{i}") for i in range(5)))  # fmt: skip
        statuses = sorted(a.status for a in answers)
        assert statuses == [200, 409, 409, 409, 409]
        [won] = [await a.json() for a in answers if a.status == 200]
        winner = won["executor_id"]
        for a in answers:
            if a.status == 409:
                assert (await a.json())["message"] == f"task 'build' is held by executor {winner}"


async def test_claim_errors_404_unknown_run_or_task_400_bad_body_or_phase() -> None:
    async with served() as (client, _):
        await refused(await claim(client, "0000000000000077", "build", "runner-7"), 404)
        created = await body_of(await client.post(RUNS, json=new_run(task("build"))), 201)
        queued = created["run"]["id"]
        msg = await refused(await claim(client, queued, "build", "runner-7"), 400)
        assert "is queued, not running" in msg
        run_id = await running_run(client, task("build"))
        assert "no task 'zz'" in await refused(await claim(client, run_id, "zz", "runner-7"), 404)
        msg = await refused(await claim(client, run_id, "build", "runner 7"), 400)
        assert "`$.executor_id`" in msg
        msg = await refused(await claim(client, run_id, "build", "runner-7", lease_ms=10), 400)
        assert "`$.lease_ms`" in msg
        resp = await client.post(f"{RUNS}/{run_id}/tasks/build/claim", json={"lease_ms": 5000})
        assert "executor_id" in await refused(resp, 400)
        resp = await client.post(f"{RUNS}/bad/tasks/build/claim", json={"executor_id": "x"})
        await refused(resp, 400)


async def test_a_claim_retried_with_its_idempotency_key_is_one_event() -> None:
    async with served() as (client, fakes):
        run_id = await running_run(client, task("build"), task("lint"))
        key = {"Idempotency-Key": "runner-7/claim/1"}
        first = await body_of(await claim(client, run_id, "build", "runner-7", headers=key), 200)
        again = await body_of(await claim(client, run_id, "build", "runner-7", headers=key), 200)
        assert first == again
        # The same key on another task is another request: its own event, never a duplicate.
        await body_of(await claim(client, run_id, "lint", "runner-7", headers=key), 200)
        claims = [e for e in fakes.owners.events if e.type is EventType.TASK_CLAIMED]
        assert len(claims) == len({e.id for e in claims}) == 2
        assert tasks_of(fakes, run_id)["lint"].holder == "runner-7"


# -- status reports ------------------------------------------------------------------------------


async def test_the_holder_reports_others_get_409_and_the_run_finishes() -> None:
    async with served() as (client, fakes):
        run_id = await running_run(client, task("build"))
        await body_of(await claim(client, run_id, "build", "runner-7"), 200)
        msg = await refused(await report(client, run_id, "build", "running", "runner-8"), 409, "task_held")  # fmt: skip
        assert msg == "task 'build' is held by executor runner-7"
        # A report naming no executor is accepted only for a task nobody holds.
        await refused(await report(client, run_id, "build", "running"), 409, "task_held")
        assert (await report(client, run_id, "build", "running", "runner-7")).status == 204
        msg = await refused(await report(client, run_id, "build", "running", "runner-7"), 409, "task_transition")  # fmt: skip
        assert "cannot go from running to running" in msg
        assert (await report(client, run_id, "build", "success", "runner-7")).status == 204
        run = (await body_of(await client.get(f"{RUNS}/{run_id}"), 200))["run"]
        assert (run["phase"], run["result"]) == ("finished", "success")
        assert run["tasks"][0]["holder"] == "runner-7"
        reports = [e for e in fakes.owners.events if e.type is EventType.TASK_STATUS_CHANGED]
        assert [(e.data.status, e.data.executor_id) for e in reports] == [  # type: ignore[union-attr]
            (TaskStatus.RUNNING, "runner-7"),
            (TaskStatus.SUCCESS, "runner-7"),
        ]


async def test_a_report_for_a_ready_task_nobody_holds_claims_it() -> None:
    async with served() as (client, fakes):
        run_id = await running_run(client, task("build"))
        assert (await report(client, run_id, "build", "running", "runner-9")).status == 204
        assert tasks_of(fakes, run_id)["build"].holder == "runner-9"
        await refused(await claim(client, run_id, "build", "runner-7"), 409, "task_held")


async def test_an_executor_that_lost_the_task_is_409_lease_lapsed() -> None:
    async with served() as (client, fakes):
        run_id = await running_run(client, task("build", retries=1))
        await body_of(await claim(client, run_id, "build", "runner-7"), 200)
        # The owner's decision (partition.decisions): runner-7's lease lapsed, the task is ready again.
        lost = TaskReleased(
            task_id="build", executor_id="runner-7", attempt=1, reason=ReleaseReason.EXECUTOR_LOST
        )
        fakes.owners.apply(make_event(lost, id=f"{run_id}.release.1.build", run_id=run_id, at=2))
        msg = await refused(await report(client, run_id, "build", "running", "runner-7"), 409, "lease_lapsed")  # fmt: skip
        assert msg == "executor runner-7 lost task 'build': its lease lapsed"
        await refused(await claim(client, run_id, "build", "runner-7"), 409, "lease_lapsed")
        second = await body_of(await claim(client, run_id, "build", "runner-8"), 200)
        assert second["attempt"] == 2


async def test_report_bodies_and_idempotency() -> None:
    async with served() as (client, fakes):
        run_id = await running_run(client, task("build"))
        resp = await report(client, run_id, "build", "done", "runner-7")
        assert "`$.status` (want one of: notstarted, skipped," in await refused(resp, 400)
        resp = await client.put(f"{RUNS}/{run_id}/tasks/build/status", json={"executor_id": "r"})
        assert "status" in await refused(resp, 400)
        await refused(await report(client, run_id, "zz", "running", "runner-7"), 404)
        key = {"Idempotency-Key": "runner-7/build/running"}
        assert (await report(client, run_id, "build", "running", "runner-7", headers=key)).status == 204  # fmt: skip
        assert (await report(client, run_id, "build", "running", "runner-7", headers=key)).status == 204  # fmt: skip
        reports = [e for e in fakes.owners.events if e.type is EventType.TASK_STATUS_CHANGED]
        assert len(reports) == 1


def test_task_refusals_carry_the_codes_the_owner_counts_them_by() -> None:
    """``api.service.task_refusal`` and ``partition.admission.refusal_code`` say the same of the
    reducer's reasons (api/ may not import agents/)."""
    reasons = {
        "task 'b' is held by executor runner-7": (409, RefusalCode.TASK_HELD),
        "executor runner-7 lost task 'b': its lease lapsed": (409, RefusalCode.LEASE_LAPSED),
        "task 'b' cannot go from success to running": (409, RefusalCode.TASK_TRANSITION),
        "task 'b' cannot be claimed: it ended success": (409, RefusalCode.TASK_TRANSITION),
        "task 'b' is not ready: a parent has not ended": (400, RefusalCode.TASK_NOT_READY),
        "run 0000000000000001 is queued, not running": (400, RefusalCode.WRONG_PHASE),
        "task 'b' is waiting for approval": (400, RefusalCode.APPROVAL),
    }
    for reason, (status, code) in reasons.items():
        for kind in (EventType.TASK_CLAIMED, EventType.TASK_STATUS_CHANGED):
            assert refusal_code(kind, reason) is code, reason
        err = task_refusal(reason)
        assert (err.status, err.message) == (status, reason)
        if status == 409:
            assert isinstance(err, Conflict)
            assert err.code == code.value
        else:
            assert isinstance(err, BadRequest)


# -- what a run waits for ------------------------------------------------------------------------


@asynccontextmanager
async def served_with(fakes: Fakes, **deps: Any) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    app = create_api(dataclasses.replace(fakes.deps(), **deps))
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_get_run_says_what_a_queued_run_and_its_tasks_wait_for() -> None:
    fakes = Fakes()
    async with served_with(fakes, max_running_per_group=1) as client:
        first = await running_run(client, task("build"), task("test", "build"))
        created = await body_of(await client.post(RUNS, json=new_run(task("a"))), 201)
        assert created["waiting"]["run"]["what"] == "slot"  # the creation's answer says it too
        queued = created["run"]["id"]
        fakes.materialize()  # the index lists the first run as running
        got = await body_of(await client.get(f"{RUNS}/{queued}"), 200)
        assert got["waiting"]["run"] == {
            "what": "slot",
            "text": f"a group slot: 1 of 1 running in {GROUP}, held by run {first}",
            "group": GROUP,
            "running": 1,
            "limit": 1,
            "held_by": [first],
        }
        assert [t["what"] for t in got["waiting"]["tasks"]] == ["run"]
        running = await body_of(await client.get(f"{RUNS}/{first}"), 200)
        assert running["waiting"]["run"] is None
        tasks = {t["task_id"]: t for t in running["waiting"]["tasks"]}
        assert (tasks["build"]["what"], tasks["test"]["what"]) == ("claim", "parents")
        await body_of(await claim(client, first, "build", "runner-7"), 200)
        running = await body_of(await client.get(f"{RUNS}/{first}"), 200)
        build = running["waiting"]["tasks"][0]
        assert (build["what"], build["executor"]) == ("executor", "runner-7")
        assert running["run"]["tasks"][0]["holder"] == "runner-7"  # the fields are unchanged
        assert set(running) == {"run", "run_config", "seq", "waiting"}


async def test_with_the_scheduler_off_a_queued_run_waits_for_a_start() -> None:
    async with served() as (client, _):
        created = await body_of(await client.post(RUNS, json=new_run()), 201)
        got = await body_of(await client.get(f"{RUNS}/{created['run']['id']}"), 200)
        assert got["waiting"]["run"]["text"] == "a start request (scheduler off)"
        resp = await client.put(f"{RUNS}/{created['run']['id']}/actions", json={"action_type": "cancel"})  # fmt: skip
        assert resp.status == 204
        got = await body_of(await client.get(f"{RUNS}/{created['run']['id']}"), 200)
        assert got["waiting"] is None


# -- stuck ---------------------------------------------------------------------------------------


async def test_stuck_lists_runs_without_progress_for_longer_than_asked() -> None:
    async with served() as (client, fakes):
        run_id = await running_run(client, task("build"))
        await body_of(await claim(client, run_id, "build", "runner-7"), 200)
        claimed = tasks_of(fakes, run_id)["build"].claim_time
        fakes.owners.now_ms = claimed + 700_000
        got = await body_of(await client.get("/api/v1/stuck"), 200)  # default: 600 s
        assert got == {
            "runs": [
                {
                    "run_id": run_id,
                    "group": GROUP,
                    "phase": "running",
                    "since": claimed,
                    "tasks": ["build"],
                }
            ],
            "partial": False,
        }
        got = await body_of(await client.get("/api/v1/stuck?older_than=800"), 200)
        assert got == {"runs": [], "partial": False}
        await refused(await client.get("/api/v1/stuck?older_than=-1"), 400)
        await refused(await client.get("/api/v1/stuck?older_than=soon"), 400)
        msg = await refused(await client.get("/api/v1/stuck?olderthan=5"), 400)
        assert "'olderthan'" in msg


async def test_stuck_merges_every_workers_partitions_and_says_when_one_did_not_answer() -> None:
    """Two "workers" over their own fakes: the one asked merges the other's runs (asked with
    the relay's marker, so it answers for its own partitions only); an unreachable third makes
    the answer partial."""
    here, there = Fakes(), Fakes(ids=FakeIds(100))
    async with served(there) as (far, _), served(here) as (near, _):
        mine = await running_run(near, task("a"))
        theirs = await running_run(far, task("a"))
        here.owners.now_ms = there.owners.now_ms = 2**42
        here.owners.peer_urls = [url_of(far)]
        got = await body_of(await near.get("/api/v1/stuck?older_than=1"), 200)
        assert [r["run_id"] for r in got["runs"]] == sorted([mine, theirs])
        assert got["partial"] is False
        # Asked by another worker: its own partitions only, and which ones they are.
        hop = ClusterKey().sign("GET", "/api/v1/stuck?older_than=1", {"X-Runstream-Relayed-By": "w"})  # fmt: skip
        relayed = await far.get("/api/v1/stuck?older_than=1", headers=hop)
        answer = await body_of(relayed, 200)
        assert ([r["run_id"] for r in answer["runs"]], answer["partitions"]) == ([theirs], [0])
        here.owners.peer_urls = [url_of(far), "http://127.0.0.1:9"]  # nobody listens there
        got = await body_of(await near.get("/api/v1/stuck?older_than=1"), 200)
        assert got["partial"] is True
        assert len(got["runs"]) == 2


# -- the client and the CLI ----------------------------------------------------------------------


@both
async def test_client_claim_report_and_stuck(kind: str) -> None:
    async with served() as (tc, fakes), open_client(kind, url_of(tc)) as c:
        body = await c.create_run(name="b", group=GROUP, tasks=[task("build"), task("a b")])
        run_id = body.run.id
        await c.start(run_id)
        got = await c.claim(run_id, "build", "runner-7", lease_ms=15_000)
        assert got == TaskClaim(run_id=run_id, task_id="build", executor_id="runner-7", attempt=1, lease_ms=15_000)  # fmt: skip
        with pytest.raises(Conflict) as held:
            await c.claim(run_id, "build", "runner-8")
        assert (held.value.status, held.value.message) == (409, "task 'build' is held by executor runner-7")  # fmt: skip
        await c.report(run_id, "build", "running", "runner-7")
        with pytest.raises(Conflict):
            await c.report(run_id, "build", "success", "runner-8")
        await c.report(run_id, "build", "success", executor_id="runner-7", idempotency_key="k1")
        await c.report(run_id, "build", "success", executor_id="runner-7", idempotency_key="k1")
        # A task id that is not a path segment as it is.
        assert (await c.claim(run_id, "a b", "runner-7")).task_id == "a b"
        await c.report(run_id, "a b", "success", "runner-7")
        assert (await c.get_run(run_id)).run.phase == "finished"
        fakes.owners.now_ms = 2**42
        assert (await c.stuck(older_than=1)) == StuckRuns(runs=(), partial=False)
        claims = [e for e in fakes.owners.events if e.type is EventType.TASK_CLAIMED]
        assert len(claims) == 2  # the refused one was never appended


def _main(*argv: str) -> tuple[int, str, str]:
    from agents.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    # The command sets up logging on the stderr of the moment: put the root logger back after,
    # so later tests do not log into this closed capture (or an earlier test's into ours).
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = []
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(argv))
    finally:
        root.handlers, root.level = handlers, level
    return code, out.getvalue(), err.getvalue()


async def test_runstream_runs_stuck_prints_one_line_per_run() -> None:
    async with served() as (tc, fakes):
        url = url_of(tc)
        run_id = await running_run(tc, task("build"))
        fakes.owners.now_ms = 2**42
        code, out, err = await asyncio.to_thread(_main, "runs", "stuck", "--url", url, "--older-than", "60")  # fmt: skip
        assert (code, err) == (0, "")
        [line] = out.splitlines()
        assert line.startswith(f"{run_id}  running  since ")
        assert line.endswith(f"UTC  {GROUP}")
        code, out, _ = await asyncio.to_thread(_main, "runs", "stuck", "--url", url, "--json")
        assert code == 0
        assert '"partial": false' in out


def test_runs_stuck_has_help() -> None:
    with pytest.raises(SystemExit) as done:
        _main("runs", "stuck", "--help")
    assert done.value.code == 0


def test_a_workers_owned_runs_answer_stuck_for_the_partitions_they_serve() -> None:
    """``agents.routing.OwnedRuns``: ``stuck`` asks each owner serving here (a loading one is
    left out of ``partitions``, one that stops serving meanwhile too); ``peers`` are the other
    workers of the ownership map."""
    from agents.routing import OwnedRuns
    from events import Phase
    from partition.decisions import Stuck
    from partition.waiters import NotServing

    class Owner:
        def __init__(self, serving: bool, runs: list[Stuck] | None) -> None:
            self.serving, self.runs = serving, runs

        def stuck(self, older_than_ms: int) -> list[Stuck]:
            assert older_than_ms == 60_000
            if self.runs is None:
                raise NotServing("revoked")
            return self.runs

    one = Stuck(run_id="0000000000000001", group=GROUP, phase=Phase.RUNNING, since=5, tasks=("a",))
    owners = {0: Owner(True, [one]), 1: Owner(False, []), 2: Owner(True, None), 3: Owner(True, [])}
    url_map = {
        "http://me": {"t": [0, 1, 2, 3]},
        "http://other": {"t": [4, 5]},
        "http://idle": {"t": []},
    }
    owned = OwnedRuns(
        topic="t", self_url="http://me", owners=owners.get, url_map=lambda: url_map,  # type: ignore[arg-type]
        append=lambda events: asyncio.sleep(0), max_event_bytes=1 << 20, apply_timeout=1.0,
    )  # fmt: skip
    owned.partitions = 6
    got = owned.stuck(60_000)
    assert (got.partitions, got.total) == ((0, 3), 6)
    assert [msgspec_builtins(r) for r in got.runs] == [
        {"run_id": one.run_id, "group": GROUP, "phase": "running", "since": 5, "tasks": ["a"]}
    ]
    assert owned.peers() == ("http://other",)


def msgspec_builtins(value: Any) -> Any:
    import msgspec

    return msgspec.json.decode(msgspec.json.encode(value))
