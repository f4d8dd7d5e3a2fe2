"""Executors' heartbeats on the real Kafka: a worker appends them (HTTP, the CLI) and any producer
may too (aiokafka); the worker's follower hears every one, skips and counts what it cannot read,
and nothing of it reaches the events topic."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from agents.readback import end_offsets
from agents.resources import HEARTBEATS_RETENTION_MS, _describe_configs
from api.client import AsyncClient
from api.errors import BadRequest, NotFound
from events import Heartbeat
from events.executors import encode_heartbeat
from tests.harness import ROOT, Worker, make_settings, prepare_topics, wait_healthy, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(240)]


async def _metric(url: str, name: str) -> float:
    async with httpx.AsyncClient() as h:
        text = (await h.get(f"{url}/metrics")).text
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return 0.0


async def test_a_worker_hears_heartbeats_from_http_the_cli_and_any_producer(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(
        unique,
        kafka_bootstrap,
        etcd_endpoint,
        f"file://{tmp_path}/objects",
        topic_heartbeats=f"{unique}.heartbeats",
    )
    await prepare_topics(s)
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka)
    await admin.start()
    try:
        config = (await _describe_configs(admin, [s.topic_heartbeats]))[s.topic_heartbeats]
        [described] = await admin.describe_topics([s.topic_heartbeats])
    finally:
        await admin.close()
    assert config["cleanup.policy"] == "compact,delete"
    assert config["retention.ms"] == str(HEARTBEATS_RETENTION_MS) == "86400000"
    assert len(described["partitions"]) == s.partitions

    worker = Worker(s, tmp_path / "w.log").start()
    url = f"http://127.0.0.1:{s.web_port}"
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka, acks="all")
    await producer.start()
    try:
        await wait_healthy(url)
        async with AsyncClient(url) as client:

            async def heard(executor_id: str, **expected: int) -> bool:
                try:
                    seen = await client.get_executor(executor_id)
                except NotFound:
                    return False
                return all(getattr(seen, k) == v for k, v in expected.items())

            # The follower reads from the end once it is positioned: until then a heartbeat is
            # not heard. Send until one is, then every later one must be.
            async def probe_heard() -> bool:
                await client.heartbeat("probe", lease_ms=60_000)
                return await heard("probe")

            await wait_until(probe_heard, within=60, what="the worker to hear a heartbeat")

            # Over HTTP (an id with a slash: percent-encoded in the path): 204 once Kafka
            # acknowledged it; the worker then hears it.
            await client.heartbeat("http/exec-1", lease_ms=5_000)
            await wait_until(
                lambda: heard("http/exec-1", lease_ms=5_000), within=30, what="the HTTP heartbeat"
            )
            with pytest.raises(BadRequest, match="lease_ms"):
                await client.heartbeat("http-exec", lease_ms=999)

            # Straight to Kafka, as kcat does: key = the executor id.
            sent = Heartbeat(executor_id="kafka-exec", lease_ms=7_000, at=1764292659000)
            await producer.send_and_wait(
                s.topic_heartbeats, encode_heartbeat(sent), key=b"kafka-exec"
            )
            await wait_until(
                lambda: heard("kafka-exec", lease_ms=7_000, at=1764292659000),
                within=30,
                what="the heartbeat sent with aiokafka",
            )

            # Malformed records are skipped and counted; the follower goes on.
            malformed = await _metric(url, "runstream_heartbeats_malformed_total")
            for key, value in [
                (b"junk", b"not json"),
                (b"junk", b'{"executor_id": "junk", "lease_ms": 10, "at": 1}'),
                (b"someone-else", encode_heartbeat(sent)),
            ]:
                await producer.send_and_wait(s.topic_heartbeats, value, key=key)
            after = Heartbeat(executor_id="after-junk", lease_ms=3_000, at=1)
            await producer.send_and_wait(
                s.topic_heartbeats, encode_heartbeat(after), key=b"after-junk"
            )
            await wait_until(lambda: heard("after-junk"), within=30, what="a heartbeat after junk")

            async def counted() -> bool:
                return await _metric(url, "runstream_heartbeats_malformed_total") >= malformed + 3

            await wait_until(counted, within=30, what="the malformed records to be counted")
            with pytest.raises(NotFound):
                await client.get_executor("junk")
            assert await _metric(url, "runstream_executors_known") >= 4
            assert await _metric(url, "runstream_heartbeats_received_total") >= 4

            # The CLI, once.
            env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
            command = ["executors", "heartbeat", "cli-exec", "--lease-ms", "4000", "--url", url]
            cli = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "agents.cli", *command],
                cwd=ROOT,
                env=env,
                capture_output=True,
                timeout=60,
            )
            assert cli.returncode == 0, cli.stderr
            assert b"heartbeat: executor cli-exec lease 4000 ms" in cli.stdout
            await wait_until(
                lambda: heard("cli-exec", lease_ms=4_000), within=30, what="the CLI's heartbeat"
            )

        # Heartbeats are not run events.
        assert sum((await end_offsets(s.kafka, s.topic_events)).values()) == 0
        assert worker.alive(), worker.log_text()[-3000:]
    finally:
        await producer.stop()
        worker.stop()
