"""Idempotent creation on the real stack (issue 21): ``Idempotency-Key`` on ``POST /runs`` and
the request ids of ``runs.requests`` are one mechanism, one etcd record per key.

* the same key sent to two workers at once makes one run (both answer 201 with it);
* a key recorded by ``runs.requests`` answers that request's run over HTTP, and a key used over
  HTTP first answers the same run to a ``runs.requests`` record with that request id; another
  body with the key is 422 naming it;
* a creation answered 503 after its append (a worker whose ``apply_timeout`` is 0: its owner
  confirms an apply only when it came before the append's answer was read — the 503 of an owner
  too slow to confirm, on most tries), retried with its key, makes one run.

"One run" is checked on the log itself: the distinct run ids of the ``run.created`` events of
each test group in ``runs.events`` (a retry may append the same ``<run id>.created`` again; the
owner applies it once)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from agents import keys
from agents.config import Settings
from agents.readback import read_topic
from datamanager.etcd import EtcdKv
from events import EventType, decode_record
from tests.harness import Worker, free_port, make_settings, prepare_topics, wait_healthy, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(300)]


def body(group: str, *tasks: str) -> dict[str, Any]:
    return {
        "name": "build",
        "group": group,
        "tasks": [{"id": t, "name": t} for t in (tasks or ("compile",))],
        "environment": {"A": "1"},
    }


def url(w: Worker) -> str:
    return f"http://127.0.0.1:{w.settings.web_port}"


async def post(h: httpx.AsyncClient, w: Worker, doc: dict[str, Any], key: str | None) -> httpx.Response:  # fmt: skip
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await h.post(f"{url(w)}/api/v1/runs", json=doc, headers=headers, timeout=30)


async def runs_created(s: Settings) -> dict[str, set[str]]:
    """group → the distinct run ids of every ``run.created`` in ``runs.events``."""
    out: dict[str, set[str]] = {}
    for records in (await read_topic(s.kafka, s.topic_events)).values():
        for _, _, value, _ in records:
            for e in decode_record(value):
                if e.type is EventType.RUN_CREATED:
                    out.setdefault(e.data.group, set()).add(e.run_id)  # type: ignore[union-attr]
    return out


async def reply_for(s: Settings, request_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    async def replied() -> bool:
        for records in (await read_topic(s.kafka, s.topic_replies)).values():
            found.extend(json.loads(v) for _, k, v, _ in records if k == request_id.encode())
        return bool(found)

    await wait_until(replied, within=60, what=f"the reply to request {request_id}")
    return found[0]


async def owns_partitions(h: httpx.AsyncClient, w: Worker) -> bool:
    try:
        text = (await h.get(f"{url(w)}/metrics")).text
        healthy = (await h.get(f"{url(w)}/healthz")).status_code == 200
    except httpx.TransportError:
        return False
    owned = [ln for ln in text.splitlines() if ln.startswith("runstream_partitions_owned ")]
    return healthy and bool(owned) and float(owned[0].split()[1]) > 0


async def test_one_key_one_run_on_any_worker_and_on_runs_requests(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(
        unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects", partitions=4,
        session_timeout=6.0,
    )  # fmt: skip
    await prepare_topics(s)
    workers = [
        Worker(dataclasses.replace(s, web_port=free_port()), tmp_path / f"w{i}.log").start()
        for i in range(2)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka)
    await producer.start()
    try:
        async with httpx.AsyncClient() as h:

            async def both_own() -> bool:
                return all([await owns_partitions(h, w) for w in workers])

            await wait_until(both_own, within=150, what="both workers ready, owning partitions")

            # 1. The same key to both workers at once, six keys: one run each.
            groups: list[str] = []
            for n in range(6):
                group, key = f"/project/{unique}/branch/b{n}", f"hook-{unique}-{n}"
                groups.append(group)
                a, b = await asyncio.gather(*(post(h, w, body(group), key) for w in workers))
                assert (a.status_code, b.status_code) == (201, 201), (a.text, b.text)
                assert a.json()["run"]["id"] == b.json()["run"]["id"]
                again = await post(h, workers[n % 2], body(group), key)
                assert again.status_code == 201
                assert again.json()["run"]["id"] == a.json()["run"]["id"]

            # 2. A request id of runs.requests is an Idempotency-Key, and the other way round.
            g_req, rid = f"/project/{unique}/branch/req", f"req-{unique}"
            doc = {"request_id": rid, **body(g_req)}
            await producer.send_and_wait(s.topic_requests, json.dumps(doc).encode(), key=rid.encode())  # fmt: skip
            reply = await reply_for(s, rid)
            assert reply["outcome"] == "created", reply
            got = await post(h, workers[1], body(g_req), rid)
            assert got.status_code == 201, got.text
            assert got.json()["run"]["id"] == reply["run_id"]

            g_http, hk = f"/project/{unique}/branch/http", f"http-{unique}"
            first = await post(h, workers[0], body(g_http), hk)
            assert first.status_code == 201, first.text
            doc = {"request_id": hk, **body(g_http)}
            await producer.send_and_wait(s.topic_requests, json.dumps(doc).encode(), key=hk.encode())  # fmt: skip
            reply = await reply_for(s, hk)
            assert (reply["outcome"], reply["run_id"]) == ("created", first.json()["run"]["id"])

            # 3. Another body with a used key: 422 naming the key, over HTTP and Kafka alike.
            other = await post(h, workers[1], body(g_http, "other"), hk)
            assert other.status_code == 422, other.text
            assert repr(hk) in other.json()["message"]
            rid2 = f"req2-{unique}"
            await producer.send_and_wait(s.topic_requests, json.dumps({"request_id": rid2, **body(g_req)}).encode(), key=rid2.encode())  # fmt: skip
            assert (await reply_for(s, rid2))["outcome"] == "created"
            refused = await post(h, workers[0], body(g_req, "other"), rid2)
            assert refused.status_code == 422
            assert repr(rid2) in refused.json()["message"]

            # 4. No key: a new run per request.
            g_free = f"/project/{unique}/branch/free"
            ids = {(await post(h, workers[0], body(g_free), None)).json()["run"]["id"] for _ in range(2)}  # fmt: skip
            assert len(ids) == 2

        created = await runs_created(s)
        for group in [*groups, g_http]:
            assert len(created[group]) == 1, (group, created[group])
        assert len(created[g_req]) == 2  # rid and rid2: two requests, two runs

        # The record: one etcd key per key, under a lease (the retention).
        kv = EtcdKv(s.etcd, s.etcd_prefix)
        try:
            rec = await kv.get(keys.run_request_key(hk))
            assert rec is not None
            assert rec.lease != 0
            assert rec.value.decode().split(" ")[0] == str(int(first.json()["run"]["id"]))
        finally:
            await kv.close()
    finally:
        await producer.stop()
        for w in workers:
            w.stop()


async def test_a_creation_answered_503_after_its_append_retried_with_its_key_makes_one_run(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    # apply_timeout 0: the owner appends, then gives up waiting for the apply at once: a write
    # is answered 503 "in the log but not applied", as an overloaded owner answers, unless the
    # owner applied it before the append's answer was read (then 201, and true: it was applied).
    s = make_settings(
        unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects", partitions=2,
        apply_timeout=0.0,
    )  # fmt: skip
    await prepare_topics(s)
    worker = Worker(s, tmp_path / "w.log").start()
    try:
        await wait_healthy(url(worker), within=120)
        async with httpx.AsyncClient() as h:
            # A creation answered 503 (each try a group and key of its own: one answered 201
            # made its run, in its own group, and is not what this test is about).
            for attempt in range(20):
                group, key = f"/project/{unique}-{attempt}/branch/main", f"hook-{unique}-{attempt}"
                first = await post(h, worker, body(group), key)
                assert first.status_code in (201, 503), first.text
                if first.status_code == 503:
                    break
            assert first.status_code == 503, "20 creations were all applied before their answer"
            assert "in the log" in first.json()["message"]
            answers: list[httpx.Response] = []

            async def created() -> bool:
                answers.append(await post(h, worker, body(group), key))
                assert answers[-1].status_code in (201, 503), answers[-1].text
                return answers[-1].status_code == 201

            await wait_until(created, within=60, what="a retry answered 201", interval=0.2)
            run = answers[-1].json()["run"]
            assert run["group"] == group
            assert run["counter"] == 1
            # More retries: the same run, read from the owner's state.
            for _ in range(3):
                again = await post(h, worker, body(group), key)
                assert again.status_code == 201
                assert again.json()["run"]["id"] == run["id"]
        assert (await runs_created(s))[group] == {run["id"]}
    finally:
        worker.stop()
