"""The stack under test: settings per fault, worker processes, the local services' pids.

Broker and etcd faults kill the local stack's process by the pid ``deploy/local`` wrote
(``$RUNSTREAM_STATE_DIR/run/<name>.pid``, default ``<repo>/var``) and restart it with
``deploy/local up <name>``; they run only when the endpoint under test is that local process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pytest

from agents import keys
from agents.config import Settings
from agents.resources import Resources
from events.catalogue import Event
from indexer import DumpStore
from tests.faults.checks import FaultRow, Tally, verify_pipeline
from tests.harness import ROOT, Worker, caught_up, free_port, make_settings, prepare_topics
from tests.oracle import Oracle

__all__ = ["Stack", "conclude", "fault_settings", "kill_local", "local_pid", "restart_local"]

_PORTS = {"kafka": ("RUNSTREAM_KAFKA_PORT", 9092), "etcd": ("RUNSTREAM_ETCD_PORT", 2379)}


def fault_settings(unique: str, kafka: str, etcd: str, storage: str, **over: Any) -> Settings:
    """Unique names, fast checkpoints and index dumps every two seconds (so that the index check
    really starts from a dump plus a tail)."""
    base: dict[str, Any] = {"index_dump_interval": 2.0, "index_dump_changes": 5000}
    return make_settings(unique, kafka, etcd, storage, **{**base, **over})


def _state_dir() -> Path:
    return Path(os.environ.get("RUNSTREAM_STATE_DIR") or ROOT / "var")


def local_pid(name: str, endpoint: str) -> int | None:
    """The pid of the local stack's ``name`` when ``endpoint`` is that process, else None."""
    env, default = _PORTS[name]
    host, _, port = endpoint.split("://")[-1].split(",")[0].rpartition(":")
    if host not in ("127.0.0.1", "localhost") or int(port) != int(os.environ.get(env, default)):
        return None
    try:
        pid = int((_state_dir() / "run" / f"{name}.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def require_local(name: str, endpoint: str) -> int:
    pid = local_pid(name, endpoint)
    if pid is None:
        pytest.skip(f"{name} at {endpoint} is not the local stack's process: cannot kill it")
    return pid


def kill_local(pid: int) -> None:
    """SIGKILL the service and wait until it is gone."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.05)


async def restart_local(name: str) -> None:
    """``deploy/local up <name>`` (returns once the service answers)."""
    proc = await asyncio.create_subprocess_exec(
        str(ROOT / "deploy" / "local"),
        "up",
        name,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    # deploy/local waits up to 600 s for Kafka (it recovers its log after a kill).
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=660)
    said = out.decode(errors="replace").strip().splitlines()[-5:]
    assert proc.returncode == 0, f"deploy/local up {name} exited {proc.returncode}: {said}"


@dataclass
class Stack:
    """Workers and read-side resources of one fault test; ``close()`` stops everything."""

    settings: Settings
    tmp: Path
    resources: Resources = field(init=False)
    workers: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.resources = Resources(self.settings)

    async def prepare(self) -> Stack:
        await prepare_topics(self.settings)
        return self

    def start_worker(self, *, env: dict[str, str] | None = None, **over: Any) -> Worker:
        s = self.settings
        if self.workers:  # every worker needs its own web port
            s = replace(s, web_port=free_port(), **over)
        elif over:
            s = replace(s, **over)
        w = Worker(s, self.tmp / f"worker{len(self.workers)}.log", extra_env=env or {})
        self.workers.append(w.start())
        return w

    async def settle(self, *, within: float = 180.0) -> float:
        """Wait until the checkpoints cover the whole events topic; returns the seconds waited."""
        started = time.monotonic()
        deadline = started + within
        while not await _caught_up_quietly(self.settings, self.resources):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within}s waiting for the checkpoints")
            await asyncio.sleep(0.3)
        return time.monotonic() - started

    async def wait_for_dump(self, *, within: float = 40.0) -> bool:
        """Wait (bounded) until an index dump exists, so that the index check starts from a dump
        plus a tail as a worker does; False if none came (the check then replays the whole log)."""
        store = DumpStore(
            await self.resources.store(),
            prefix=keys.index_prefix(self.resources.settings.etcd_prefix),
        )
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if await store.numbers():
                    return True
            await asyncio.sleep(0.5)
        return False

    def logs(self) -> str:
        return "\n".join(w.log_text() for w in self.workers)

    async def close(self) -> None:
        # In a thread: a stopping worker may still talk to the S3 proxy on this event loop.
        for w in self.workers:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(w.stop)
        with contextlib.suppress(Exception):
            await self.resources.close()


async def _caught_up_quietly(s: Settings, resources: Resources) -> bool:
    # While a service restarts a read fails: that is "not yet", not an error of the test.
    try:
        return await asyncio.wait_for(caught_up(s, resources), timeout=20)
    except Exception:
        return False


def settings_fields(s: Settings) -> dict[str, object]:
    return {f.name: getattr(s, f.name) for f in fields(s)}


async def conclude(
    stack: Stack,
    acked: list[Event],
    report: Callable[[FaultRow], None],
    fault: str,
    *,
    since: float,
    note: str = "",
    index: bool = True,
) -> Tally:
    """Let the system recover, run the three checks against the oracle of ``acked``, add the
    table row (recovery = seconds from ``since``, the fault, until the checkpoints cover the
    whole log) and assert zero lost, zero duplicated, nothing diverged."""
    await stack.settle()
    recovery = time.monotonic() - since
    if index:
        await stack.wait_for_dump()
    oracle = Oracle().feed(acked)
    tally = await verify_pipeline(stack.settings, stack.resources, oracle, index=index)
    report(tally.row(fault, len(acked), recovery, note))
    tally.assert_ok()
    return tally
