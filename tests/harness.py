"""Running real ``runstream worker`` processes in tests (integration and faults)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.config import Settings
from agents.readback import checkpointed_offsets, end_offsets
from agents.resources import Resources, ensure_topics
from events.catalogue import Event

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(
    unique: str, kafka: str, etcd: str, storage: str, *, partitions: int = 4, **over: Any
) -> Settings:
    """Settings with every name unique to one test."""
    base: dict[str, Any] = {
        "kafka": kafka,
        "etcd": etcd,
        "etcd_prefix": f"/test/{unique}/",
        "storage": storage,
        "app_id": f"rs-{unique}",
        "topic_events": f"{unique}.events",
        "topic_setup_errors": f"{unique}.setup-errors",
        "topic_phases": f"{unique}.phases",
        "topic_dlq": f"{unique}.dlq",
        "topic_requests": f"{unique}.requests",
        "topic_replies": f"{unique}.replies",
        "topic_refusals": f"{unique}.refusals",
        "topic_heartbeats": f"{unique}.heartbeats",
        "topic_tasks": f"{unique}.tasks",
        "partitions": partitions,
        "checkpoint_interval": 0.5,
        # Tests start runs themselves; the scheduler's own tests turn it on.
        "max_running_per_group": 0,
        "web_port": free_port(),
        "log_format": "json",
    }
    base.update(over)
    return Settings(**base)


def settings_env(s: Settings) -> dict[str, str]:
    from agents.config import OPTIONS

    env = {o.env: str(getattr(s, o.field)) for o in OPTIONS}
    return env


@dataclass
class Worker:
    """One ``runstream worker`` subprocess; logs go to ``log_path``."""

    settings: Settings
    log_path: Path
    extra_env: Mapping[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        env = {**os.environ, **settings_env(self.settings), **self.extra_env}
        env.pop("CI", None)
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (kept open for the process' life)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agents.cli", "worker"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=60)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


async def prepare_topics(s: Settings) -> None:
    await ensure_topics(s)


async def produce_one_per_record(s: Settings, events: Sequence[Event]) -> None:
    """Append ``events`` to ``runs.events`` one record each, keyed by run id, as a foreign
    producer would (runstream's own groups them into commits); returns once all are acked."""
    from aiokafka import AIOKafkaProducer

    from events.codec import encode

    producer = AIOKafkaProducer(bootstrap_servers=s.kafka, acks="all", linger_ms=5)
    await producer.start()
    try:
        sent = [
            await producer.send(s.topic_events, encode(ev), key=ev.run_id.encode()) for ev in events
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """partition → the offset consumer group ``group`` committed on ``topic`` (none: absent)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        got = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: m.offset for tp, m in got.items() if tp.topic == topic}


async def wait_until(
    pred: Callable[[], Any], *, within: float, what: str, interval: float = 0.3
) -> None:
    """Poll the async predicate ``pred`` until it is true; AssertionError naming ``what`` after
    ``within`` seconds (a deadline for a hung system, not a performance assertion)."""
    deadline = time.monotonic() + within
    while True:
        if await pred():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


async def wait_healthy(url: str, *, within: float = 90) -> None:
    """Wait (bounded) until the worker at ``url`` answers ``/healthz`` with 200."""
    import httpx

    async def healthy() -> bool:
        try:
            async with httpx.AsyncClient() as h:
                return (await h.get(f"{url}/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    await wait_until(healthy, within=within, what="/healthz to answer 200")


async def caught_up(s: Settings, resources: Resources) -> bool:
    """True when every partition's checkpoint covers the whole of the events topic."""
    ends = await end_offsets(s.kafka, s.topic_events)
    dm = await resources.datamanager()
    done = await checkpointed_offsets(dm, s.topic_events, ends)
    return all(done[p] >= end for p, end in ends.items())
