"""Three real workers, one consumer group: a client that sends every request to a random worker
reads its own writes and never gets a 2xx for something not applied — also while one worker is
SIGKILLed mid-load (requests during the takeover get 503 and succeed when retried)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import httpx
import pytest

from agents.producer import EventProducer
from tests.apiload import SECRET, Cluster, one_run
from tests.harness import Worker, free_port, make_settings, prepare_topics, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(420)]


def three_workers(unique: str, kafka: str, etcd: str, tmp_path: Path) -> list[Worker]:
    s = make_settings(
        unique, kafka, etcd, f"file://{tmp_path}/objects", partitions=6, session_timeout=6.0,
        log_level="debug",
    )  # fmt: skip
    return [
        Worker(dataclasses.replace(s, web_port=free_port()), tmp_path / f"w{i}.log")
        for i in range(3)
    ]


async def owned(cl: Cluster, w: Worker) -> float:
    async with httpx.AsyncClient() as h:
        for line in (await h.get(f"{cl.url(w)}/metrics")).text.splitlines():
            if line.startswith("runstream_partitions_owned "):
                return float(line.split()[1])
    return 0.0


async def settled(cl: Cluster) -> None:
    """Every worker ready and owning partitions: the group has settled with all three."""

    async def all_own() -> bool:
        if not await cl.healthy():
            return False
        return all([await owned(cl, w) > 0 for w in cl.workers])

    await wait_until(all_own, within=120, what="every worker ready, owning partitions")


async def run_load(cl: Cluster, s_kafka: str, topic: str, group: str, runs: int, problems: list[str]) -> list[str]:  # fmt: skip
    async with EventProducer(s_kafka, topic) as executor:
        sem = asyncio.Semaphore(6)

        async def bounded() -> str:
            async with sem:
                return await one_run(cl, executor, group, problems)

        return list(await asyncio.gather(*(bounded() for _ in range(runs))))


def no_false_answers(cl: Cluster, problems: list[str]) -> None:
    assert problems == [], problems[:20]
    for w in cl.workers:  # no log line carries an environment value
        assert SECRET not in w.log_text()
    # Every 4xx was one the flow expects (a stop of a finished run); nothing else was refused.
    refused = [a for a in cl.answers if a.status >= 400]
    assert all(a.op == "stop" and a.status == 400 for a in refused), refused[:5]


async def test_any_worker_reads_its_own_writes_through_the_owner(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    workers = three_workers(unique, kafka_bootstrap, etcd_endpoint, tmp_path)
    s = workers[0].settings
    await prepare_topics(s)
    cl = Cluster(workers, seed=11)
    try:
        for w in workers:
            w.start()
        await settled(cl)
        problems: list[str] = []
        await run_load(cl, s.kafka, s.topic_events, f"/project/{unique}/branch/main", 24, problems)
        no_false_answers(cl, problems)
        # The requests really were spread: each worker answered, and relayed some.
        async with httpx.AsyncClient() as h:
            for w in workers:
                # The short fetch wait reached the real consumer (agents.app).
                assert "fetcher was not found" not in w.log_text()
                text = (await h.get(f"{cl.url(w)}/metrics")).text
                assert "runstream_api_relayed_total" in text, w.log_text()[-2000:]
    finally:
        await cl.close()
        for w in workers:
            w.kill()


async def test_a_worker_killed_mid_load_costs_retries_never_a_false_answer(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    workers = three_workers(unique, kafka_bootstrap, etcd_endpoint, tmp_path)
    s = workers[0].settings
    await prepare_topics(s)
    cl = Cluster(workers, seed=12, deadline=120)
    try:
        for w in workers:
            w.start()
        await settled(cl)
        problems: list[str] = []
        load = asyncio.ensure_future(
            run_load(cl, s.kafka, s.topic_events, f"/project/{unique}/branch/main", 40, problems)
        )
        # Kill once the load is well under way (a few runs through), not at a fixed time.
        for _ in range(600):
            if len([a for a in cl.answers if a.op == "create"]) >= 8 or load.done():
                break
            await asyncio.sleep(0.1)
        if load.done():
            load.result()  # an error of the load itself shows here
            raise AssertionError("the load ended before the kill: make it longer")
        workers[0].kill()
        await load
        no_false_answers(cl, problems)
        # The takeover was seen: the survivors answered 503 meanwhile, and the retries went through.
        unavailable = 0
        async with httpx.AsyncClient() as h:
            for w in workers[1:]:
                for line in (await h.get(f"{cl.url(w)}/metrics")).text.splitlines():
                    if line.startswith("runstream_api_requests_total") and 'status="503"' in line:
                        unavailable += int(float(line.rsplit(" ", 1)[1]))
        assert unavailable + cl.retried > 0
    finally:
        await cl.close()
        for w in workers:
            w.kill()
