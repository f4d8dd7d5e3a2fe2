"""Faults 5 and 6: bad input under load, with a worker running.

5. The same record bytes twice, a producer retry (an acknowledged chunk appended again), and
   events for runs that were never created: nothing applies twice, nothing unknown appears.
6. Poison records of every kind: every one in the DLQ with its reason and original bytes, the
   count per reason equal to what was injected, and the runs around them unharmed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from agents.readback import read_topic
from agents.workload import generate
from events.catalogue import StartRequested, TaskStatusChanged, make_event
from events.codec import encode, encode_commit
from events.ids import format_run_id
from events.model import TaskStatus
from partition.placement import partition_for
from tests.faults.checks import FaultRow
from tests.faults.load import Load
from tests.faults.stack import Stack, conclude, fault_settings

pytestmark = [pytest.mark.faults, pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(300)]

RUNS = 1500
Report = Callable[[FaultRow], None]


async def test_duplicates_and_unknown_runs(
    tmp_path: Path,
    unique: str,
    kafka_bootstrap: str,
    etcd_endpoint: str,
    fault_report: Report,
) -> None:
    s = fault_settings(unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects")
    stack = await Stack(s, tmp_path).prepare()
    raw = AIOKafkaProducer(bootstrap_servers=s.kafka, acks="all")
    await raw.start()
    try:
        stack.start_worker()
        load = Load(s)
        events = generate(seed=51, runs=RUNS)
        injected = Counter[str]()

        async def inject(chunk: int) -> None:
            if chunk % 4 != 1:
                return
            # the same bytes twice: one commit record sent twice
            recent = load.acked[-200:]
            home = partition_for(recent[0].run_id, s.partitions)
            same = [e for e in recent if partition_for(e.run_id, s.partitions) == home]
            for _ in range(2):
                await raw.send_and_wait(s.topic_events, encode_commit(same), partition=home)
            injected["same bytes twice"] += len(same)
            # a producer retry: an acknowledged chunk appended again
            await load.append(recent[:100])
            injected["producer retry"] += 100
            # events for a run nobody created
            ghost = format_run_id(900_000_000 + chunk)
            await load.append(
                [
                    make_event(StartRequested(), id=f"{ghost}.1", run_id=ghost, at=1),
                    make_event(
                        TaskStatusChanged(task_id="t0", status=TaskStatus.RUNNING),
                        id=f"{ghost}.2",
                        run_id=ghost,
                        at=2,
                    ),
                ]
            )
            injected["unknown run"] += 2

        await load.drive(events, after_chunk=inject)
        since = time.monotonic()
        note = ", ".join(f"{n} {what}" for what, n in sorted(injected.items()))
        tally = await conclude(
            stack, load.acked, fault_report, "5 duplicates + unknown runs", since=since, note=note
        )
        assert tally.ok
        assert injected["unknown run"] > 0
    finally:
        await raw.stop()
        await stack.close()


def _poison(max_bytes: int, sample: bytes, seq: int) -> dict[str, bytes]:
    env = orjson.loads(sample)
    return {
        "invalid_json": b'{"type": "run.created", "n": ' + str(seq).encode(),
        "unknown_type": orjson.dumps({**env, "id": f"p{seq}", "type": "run.teleported"}),
        "unsupported_version": orjson.dumps({**env, "id": f"p{seq}", "version": 99}),
        "oversize": b'{"pad": "' + b"x" * (max_bytes + 10 + seq) + b'"}',
        "schema": orjson.dumps({**env, "id": f"p{seq}", "data": {"name": 3}}),
    }


async def test_poison_of_every_kind_goes_to_the_dlq(
    tmp_path: Path,
    unique: str,
    kafka_bootstrap: str,
    etcd_endpoint: str,
    fault_report: Report,
) -> None:
    s = fault_settings(unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects")
    stack = await Stack(s, tmp_path).prepare()
    raw = AIOKafkaProducer(bootstrap_servers=s.kafka, acks="all", max_request_size=4 << 20)
    await raw.start()
    sent: list[tuple[str, bytes]] = []
    try:
        stack.start_worker()
        load = Load(s)
        events = generate(seed=61, runs=RUNS)

        async def inject(chunk: int) -> None:
            if chunk % 3 != 0:
                return
            for reason, value in _poison(s.max_event_bytes, encode(load.acked[-1]), chunk).items():
                await raw.send_and_wait(
                    s.topic_events,
                    value,
                    partition=chunk % s.partitions,
                    headers=[("x-fault", reason.encode())],
                )
                sent.append((reason, value))
            # a creation on a partition its run id does not hash to
            ghost = format_run_id(800_000_000 + chunk)
            created = next(e for e in events if e.type.value == "run.created")
            wrong = (partition_for(ghost, s.partitions) + 1) % s.partitions
            value = encode(make_event(created.data, id=f"{ghost}.0", run_id=ghost, at=1))
            await raw.send_and_wait(
                s.topic_events, value, partition=wrong, headers=[("x-fault", b"misrouted")]
            )
            sent.append(("misrouted", value))

        await load.drive(events, after_chunk=inject)
        since = time.monotonic()
        kinds = Counter(reason for reason, _ in sent)
        note = f"{len(sent)} poison records: " + ", ".join(
            f"{n} {k}" for k, n in sorted(kinds.items())
        )
        try:
            await conclude(
                stack, load.acked, fault_report, "6 poison records", since=since, note=note
            )
        finally:
            dead = [r for recs in (await read_topic(s.kafka, s.topic_dlq)).values() for r in recs]
        got = Counter(dict(h)["runstream-error"].decode() for _, _, _, h in dead)
        assert got == kinds, f"DLQ holds {dict(got)}, injected {dict(kinds)}"
        by_fault = Counter((dict(h)["x-fault"].decode(), v) for _, _, v, h in dead)
        assert by_fault == Counter(sent), "a dead letter lost its original bytes or headers"
    finally:
        await raw.stop()
        await stack.close()
