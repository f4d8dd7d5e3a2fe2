"""Issue 20 on the real stack: executors claim tasks, heartbeat, die; nothing waits for ever.

* An executor process claims a task (lease 2 s), heartbeats on ``runs.heartbeats`` and is
  SIGKILLed mid-task: the owner releases the task (``task.released``, ``executor_lost``); with a
  retry left it comes back ready, a second executor claims and finishes it, the dead executor's
  late report is refused and answered on ``runs.refusals``; the group's next queued run starts;
  its executor is lost too, without retries: the task fails and the run ends. A replay of the
  log (``runstream verify``) rebuilds the same state.
* Two executors claim one ready task at once over Kafka: exactly one holds it, the other's claim
  is refused (``task_held``) and answered.
* A task with a 2 s timeout, claimed and never reported again, ends ``failed``/``timeout`` and its
  ``on_failure`` child becomes ready.

The deadlines of ``wait_until`` guard against a hung system; the times measured are printed.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from agents.cli.replay import live_offsets, remove_target, replay, verify
from agents.producer import EventProducer
from agents.readback import read_topic
from agents.resources import Resources
from api.client import AsyncClient
from events import (
    EventType,
    RunTask,
    TaskClaimed,
    TaskStatus,
    TaskStatusChanged,
    decode_record,
    make_event,
)
from tests.harness import (
    ROOT,
    Worker,
    caught_up,
    make_settings,
    prepare_topics,
    settings_env,
    wait_healthy,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(300)]

LEASE_MS = 2_000

HEARTBEATS = textwrap.dedent(
    """
    import asyncio, sys, time, orjson
    from aiokafka import AIOKafkaProducer

    async def main(bootstrap, topic, executor, lease_ms):
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        while True:
            value = {"executor_id": executor, "lease_ms": lease_ms, "at": int(time.time() * 1000)}
            await producer.send_and_wait(topic, orjson.dumps(value), key=executor.encode())
            print("beat", flush=True)
            await asyncio.sleep(lease_ms / 4000)

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
    """
)


def executor_process(
    bootstrap: str, topic: str, executor: str, log: Path
) -> subprocess.Popen[bytes]:
    """An executor's heartbeat loop in a process of its own (what SIGKILL takes away)."""
    return subprocess.Popen(
        [sys.executable, "-c", HEARTBEATS, bootstrap, topic, executor, str(LEASE_MS)],
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ},
    )


class Executor:
    """Claims and reports over Kafka as an executor named ``name`` would."""

    def __init__(self, producer: EventProducer, name: str) -> None:
        self.producer = producer
        self.name = name

    async def claim(self, run_id: str, task: str, lease_ms: int = LEASE_MS) -> str:
        eid = f"{task}.claim.{self.name}"
        data = TaskClaimed(task_id=task, executor_id=self.name, lease_ms=lease_ms)
        await self.producer.append([make_event(data, id=eid, run_id=run_id, at=_now())])
        return eid

    async def report(self, run_id: str, task: str, status: TaskStatus) -> str:
        eid = f"{task}.{status}.{self.name}"
        data = TaskStatusChanged(task_id=task, status=status, executor_id=self.name)
        await self.producer.append([make_event(data, id=eid, run_id=run_id, at=_now())])
        return eid


def _now() -> int:
    return time.time_ns() // 1_000_000


async def _task(client: AsyncClient, run_id: str, task: str) -> RunTask:
    tasks = (await client.get_run(run_id)).run.tasks
    return next(t for t in tasks if t.id == task)


async def _answers(s: Any) -> dict[str, dict[str, Any]]:
    """The answers on runs.refusals, by event id."""
    out = {}
    for rows in (await read_topic(s.kafka, s.topic_refusals)).values():
        for _, _, value, _ in rows:
            doc = orjson.loads(value)
            out[doc["event_id"]] = doc
    return out


async def _released(s: Any) -> list[Any]:
    """Every task.released event appended to runs.events."""
    out = []
    for rows in (await read_topic(s.kafka, s.topic_events)).values():
        for _, _, value, _ in rows:
            out.extend(e for e in decode_record(value) if e.type is EventType.TASK_RELEASED)
    return out


async def test_a_killed_executor_loses_its_task_and_no_run_waits_for_ever(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(
        unique,
        kafka_bootstrap,
        etcd_endpoint,
        f"file://{tmp_path}/objects",
        max_running_per_group=1,
        topic_heartbeats=f"{unique}.heartbeats",
    )
    await prepare_topics(s)
    resources = Resources(s)
    worker = Worker(s, tmp_path / "w.log").start()
    url = f"http://127.0.0.1:{s.web_port}"
    beats: subprocess.Popen[bytes] | None = None
    group = f"/project/{unique}/branch/main"
    try:
        await wait_healthy(url)
        async with AsyncClient(url) as client, EventProducer(s.kafka, s.topic_events) as producer:
            first = (await client.create_run(group=group, name="a", tasks=[{"id": "build", "name": "build", "retries": 1}])).run.id  # fmt: skip
            second = (await client.create_run(group=group, name="b", tasks=[{"id": "t", "name": "t"}])).run.id  # fmt: skip

            async def phase(run_id: str, want: str) -> bool:
                return bool((await client.get_run(run_id)).run.phase == want)

            await wait_until(lambda: phase(first, "running"), within=60, what="the first run to start")  # fmt: skip
            assert (await client.get_run(second)).run.phase == "queued"

            ex1, ex2 = Executor(producer, "ex-1"), Executor(producer, "ex-2")
            beats = executor_process(s.kafka, s.topic_heartbeats, "ex-1", tmp_path / "ex1.log")
            await ex1.claim(first, "build")
            await ex1.report(first, "build", TaskStatus.RUNNING)

            async def held() -> bool:
                t = await _task(client, first, "build")
                return bool(t.holder == "ex-1" and t.status == "running")

            await wait_until(held, within=30, what="ex-1 to hold build")
            await asyncio.sleep(2 * LEASE_MS / 1000)  # its heartbeats keep the task
            assert (await _task(client, first, "build")).status == "running"

            beats.kill()  # SIGKILL: the executor's host is gone
            beats.wait()
            killed = time.monotonic()

            async def back_to_ready() -> bool:
                t = await _task(client, first, "build")
                return bool(t.status == "notstarted" and t.attempt == 2)

            await wait_until(back_to_ready, within=30, what="build to be released and ready again")
            print(
                f"released {time.monotonic() - killed:.2f} s after the kill (lease {LEASE_MS} ms)"
            )
            t = await _task(client, first, "build")
            assert t.released == ("ex-1",)

            # The dead executor comes back: refused, and told so on runs.refusals.
            late = await ex1.report(first, "build", TaskStatus.SUCCESS)
            await ex2.claim(first, "build", lease_ms=30_000)
            await ex2.report(first, "build", TaskStatus.RUNNING)
            await ex2.report(first, "build", TaskStatus.SUCCESS)
            await wait_until(lambda: phase(first, "finished"), within=30, what="the first run to finish")  # fmt: skip
            assert (await client.get_run(first)).run.result == "success"

            async def answered() -> bool:
                return late in await _answers(s)

            await wait_until(answered, within=30, what="the late report's answer")
            assert (await _answers(s))[late]["code"] == "lease_lapsed"

            # The group's next run starts; its executor claims and is never heard of again.
            await wait_until(lambda: phase(second, "running"), within=60, what="the second run to start")  # fmt: skip
            await Executor(producer, "ex-3").claim(second, "t")
            await wait_until(lambda: phase(second, "finished"), within=30, what="the second run to end")  # fmt: skip
            assert (await client.get_run(second)).run.result == "failed"
            t = await _task(client, second, "t")
            assert (t.status, t.reason) == ("failed", "executor_lost")

            releases = await _released(s)
            assert sorted((e.run_id, e.data.task_id, e.data.attempt) for e in releases) == sorted(
                [(first, "build", 1), (second, "t", 1)]
            )

        # The log alone rebuilds the same state.
        await wait_until(lambda: caught_up(s, resources), within=120, what="the checkpoints")
        target = f"verify-{unique}"
        await replay(s, target=target, until=await live_offsets(s), progress=False, jobs=1)
        try:
            checked = await verify(s, target=target)
            assert checked.identical, checked.differing
            assert checked.live_runs == checked.rebuilt_runs == 2
        finally:
            await remove_target(s, target)
    finally:
        if beats is not None and beats.poll() is None:
            beats.kill()
        worker.stop()
        await resources.close()


async def test_two_executors_claim_one_task_at_once_and_exactly_one_holds_it(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects")
    await prepare_topics(s)
    worker = Worker(s, tmp_path / "w.log").start()
    url = f"http://127.0.0.1:{s.web_port}"
    try:
        await wait_healthy(url)
        async with (
            AsyncClient(url) as client,
            EventProducer(s.kafka, s.topic_events) as p1,
            EventProducer(s.kafka, s.topic_events) as p2,
        ):
            run_id = (await client.create_run(group=f"/project/{unique}/branch/main", name="c", tasks=[{"id": "a", "name": "a"}])).run.id  # fmt: skip
            await client.start(run_id)
            ids = await asyncio.gather(
                Executor(p1, "left").claim(run_id, "a", lease_ms=30_000),
                Executor(p2, "right").claim(run_id, "a", lease_ms=30_000),
            )

            async def judged() -> bool:
                history = await client.run_history(run_id)
                return {e.event_id for e in history.events} >= set(ids)

            await wait_until(judged, within=30, what="both claims to be judged")
            history = {e.event_id: e for e in (await client.run_history(run_id)).events}
            outcomes = sorted(history[i].outcome for i in ids)
            assert outcomes == ["applied", "refused"]
            winner = next(i for i in ids if history[i].outcome == "applied")
            loser = next(i for i in ids if i != winner)
            holder = "left" if winner == ids[0] else "right"
            assert (await _task(client, run_id, "a")).holder == holder

            async def answered() -> bool:
                return loser in await _answers(s)

            await wait_until(answered, within=30, what="the losing claim's answer")
            answer = (await _answers(s))[loser]
            assert answer["code"] == "task_held"
            assert f"held by executor {holder}" in answer["reason"]

            # The CLI shows what the owner answered: here a refusal, exit code 1.
            other = "right" if holder == "left" else "left"
            env = {**os.environ, **settings_env(s)}
            env.pop("CI", None)
            done = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "agents.cli",
                    "runs",
                    "report",
                    run_id,
                    "a",
                    "running",
                    "--executor",
                    other,
                ],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 1, done.stdout + done.stderr
            assert f"refused (task_held): task 'a' is held by executor {holder}" in done.stdout
    finally:
        worker.stop()


async def test_a_claimed_task_past_its_timeout_fails_and_its_on_failure_child_runs(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects")
    await prepare_topics(s)
    worker = Worker(s, tmp_path / "w.log").start()
    url = f"http://127.0.0.1:{s.web_port}"
    tasks = [
        {"id": "slow", "name": "slow", "timeout_ms": 2_000},
        {
            "id": "fix",
            "name": "fix",
            "depends": [{"task_id": "slow", "conditions": ["on_failure"]}],
        },
    ]
    try:
        await wait_healthy(url)
        async with AsyncClient(url) as client, EventProducer(s.kafka, s.topic_events) as producer:
            run_id = (await client.create_run(group=f"/project/{unique}/branch/main", name="t", tasks=tasks)).run.id  # fmt: skip
            await client.start(run_id)
            await Executor(producer, "sleepy").claim(run_id, "slow", lease_ms=600_000)
            claimed = time.monotonic()

            async def timed_out() -> bool:
                return bool((await _task(client, run_id, "slow")).status == "failed")

            await wait_until(timed_out, within=30, what="the task to time out")
            print(f"timed out {time.monotonic() - claimed:.2f} s after the claim (timeout 2 s)")
            slow = await _task(client, run_id, "slow")
            assert slow.reason == "timeout"

            async def child_ready() -> bool:
                for rows in (await read_topic(s.kafka, s.topic_tasks)).values():
                    for _, _, value, _ in rows:
                        for e in decode_record(value):
                            if e.type is EventType.TASK_READY and e.run_id == run_id and e.data.task_id == "fix":  # type: ignore[union-attr]  # fmt: skip
                                return True
                return False

            await wait_until(child_ready, within=30, what="fix's task.ready")
            run = (await client.get_run(run_id)).run
            assert (run.phase, run.result) == ("running", "failed")
    finally:
        worker.stop()
