"""Fault 10: the API's answers against what was materialized, under conflict and a worker kill.

API load spread over three workers (every request to a random one), a producer writing
conflicting actions for the same runs straight to the log (stops and cancels racing the API's
starts, stops and approvals), and one worker SIGKILLed mid-load. At the end every answer the API
gave is compared with the materialized state (after the checkpoints cover the whole log):

* *acknowledged but absent*: a 2xx whose event is not in the log;
* *acknowledged but refused*: a 2xx whose event is in the log but the run never applied it;
* *refused but applied*: a 4xx whose event the run did apply.

All three must be 0. Actions carry an ``Idempotency-Key`` (so the event id of every answer is
known, and a retry after a 503 is the same event); a creation's event id is ``<run id>.created``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from agents.producer import EventProducer
from agents.readback import decode_states, materialized_states, read_topic
from api.errors import ApiError
from api.service import _keyed_event_id
from events import CancelRequested, StartRequested, StopRequested, TaskApproved, make_event
from events.codec import decode_record
from events.errors import DecodeError
from events.state import RunState
from tests.apiload import TASKS, Cluster
from tests.faults.checks import FaultRow
from tests.faults.stack import Stack, fault_settings
from tests.harness import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(420)]

RUNS = 60


def _seen(state: RunState, event_id: str) -> bool:
    return event_id in state.recent_ids or event_id in state.older_ids


async def test_every_api_answer_matches_the_materialized_state(
    tmp_path: Path,
    unique: str,
    kafka_bootstrap: str,
    etcd_endpoint: str,
    fault_report: Callable[[FaultRow], None],
) -> None:
    s = fault_settings(
        unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects",
        partitions=6, session_timeout=6.0,
    )  # fmt: skip
    stack = await Stack(s, tmp_path).prepare()
    cl = Cluster([], seed=10, deadline=120)
    rng = random.Random(10)
    # (op, run id, event id, status) of every answer that came back.
    answers: list[tuple[str, str, str, int]] = []
    try:
        for _ in range(3):
            stack.start_worker()
        cl.workers = stack.workers
        await wait_until(cl.healthy, within=120, what="every worker's /healthz to answer 200")

        async def act(op: str, run_id: str, data: object, fn: Callable[..., object]) -> None:
            key = uuid.uuid4().hex
            event_id = _keyed_event_id(run_id, key, data)  # type: ignore[arg-type]
            try:
                await cl.call(op, run_id, lambda c: fn(c, key))  # type: ignore[arg-type, return-value]
                answers.append((op, run_id, event_id, 204))
            except ApiError as exc:
                answers.append((op, run_id, event_id, exc.status))

        async with EventProducer(s.kafka, s.topic_events) as direct:

            async def conflict(run_id: str) -> None:
                """Another producer acting on the same run, straight through the log."""
                data = rng.choice([StopRequested(), CancelRequested(), StartRequested()])
                await direct.append([make_event(data, id=f"direct-{uuid.uuid4().hex}", run_id=run_id, at=1)])  # fmt: skip

            async def one(i: int) -> None:
                body = await cl.call("create", "", lambda c: c.create_run(group=f"/project/{unique}/branch/b{i % 7}", name="r", tasks=TASKS))  # fmt: skip
                run_id = body.run.id
                answers.append(("create", run_id, f"{run_id}.created", 201))
                if rng.random() < 0.5:
                    await conflict(run_id)
                await act("start", run_id, StartRequested(), lambda c, k: c.start(run_id, idempotency_key=k))  # fmt: skip
                if rng.random() < 0.5:
                    await conflict(run_id)
                await act("approve", run_id, TaskApproved(task_id="deploy"), lambda c, k: c.approve_task(run_id, "deploy", idempotency_key=k))  # fmt: skip
                await act("stop", run_id, StopRequested(), lambda c, k: c.stop(run_id, idempotency_key=k))  # fmt: skip

            sem = asyncio.Semaphore(8)

            async def bounded(i: int) -> None:
                async with sem:
                    await one(i)

            load = asyncio.ensure_future(asyncio.gather(*(bounded(i) for i in range(RUNS))))
            await asyncio.sleep(2.0)
            killed_at = time.monotonic()
            stack.workers[0].kill()
            await load
        await stack.settle()
        recovery = time.monotonic() - killed_at

        dm = await stack.resources.datamanager()
        states = decode_states(await materialized_states(dm, s.topic_events, range(s.partitions)))
        logged: set[str] = set()
        for records in (await read_topic(s.kafka, s.topic_events)).values():
            for _, _, value, _ in records:
                with contextlib.suppress(DecodeError):  # dead letters hold no answered event
                    logged.update(e.id for e in decode_record(value))
        absent = refused = applied_refusals = 0
        examples: list[str] = []
        for op, run_id, event_id, status in answers:
            state = states.get(run_id)
            seen = state is not None and _seen(state, event_id)
            if status < 300 and event_id not in logged:
                absent += 1
                examples.append(f"{op} {run_id} {status}: not in the log")
            elif status < 300 and not seen:
                refused += 1
                examples.append(f"{op} {run_id} {status}: in the log, never applied")
            elif 400 <= status < 500 and seen:  # a 5xx says "unknown", not "refused"
                applied_refusals += 1
                examples.append(f"{op} {run_id} {status}: refused, yet applied")
        ok = absent == refused == applied_refusals == 0
        refusals = sum(1 for a in answers if 400 <= a[3] < 500)
        fault_report(
            FaultRow(
                fault="10 API answers vs state: conflicts + worker kill",
                events=len(logged),
                recovery_s=recovery,
                lost=absent + refused,
                duplicated=applied_refusals,
                verdict="PASS" if ok else "FAIL",
                note=f"{len(answers)} answers ({refusals} refusals) over 3 workers; "
                f"acked-absent {absent}, acked-refused {refused}, refused-applied {applied_refusals}",
            )
        )
        assert ok, examples[:20]
        assert refusals > 0  # the conflicting producer really made the API refuse some
    finally:
        await cl.close()
        await stack.close()
