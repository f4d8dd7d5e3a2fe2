"""Scoped tokens on the real stack (issue 21): two workers with tokens, one consumer group. A
request reaching the worker that does not own the run is relayed, signed with the cluster
secret both workers read from etcd, and the owner masks ``environment`` by the caller's
scopes; ``X-Runstream-*`` headers sent from outside are refused and change nothing. A worker
asked to bind every address without a token refuses to start."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import Worker, free_port, make_settings, prepare_topics, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(420)]

SECRET = "s3cret-db-password-7781"
TOKENS = "tok-read:read;tok-rw:read+write;tok-exec:read+execute"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def body(unique: str) -> dict[str, Any]:
    return {
        "name": "build",
        "group": f"/project/{unique}/branch/main",
        "environment": {"DB_PASSWORD": SECRET},
        "tasks": [{"id": "a", "name": "a", "environment": {"K": SECRET}}],
    }


async def owned(h: httpx.AsyncClient, url: str) -> float:
    for line in (await h.get(f"{url}/metrics")).text.splitlines():
        if line.startswith("runstream_partitions_owned "):
            return float(line.split()[1])
    return 0.0


async def test_the_relay_carries_scopes_and_a_forged_relay_header_is_refused(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(
        unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects", partitions=4,
        session_timeout=6.0, api_tokens=TOKENS,
    )  # fmt: skip
    await prepare_topics(s)
    workers = [
        Worker(dataclasses.replace(s, web_port=free_port()), tmp_path / f"w{i}.log")
        for i in range(2)
    ]
    a, b = (f"http://127.0.0.1:{w.settings.web_port}" for w in workers)
    try:
        for w in workers:
            w.start()
        async with httpx.AsyncClient(timeout=30) as h:

            async def both_own() -> bool:
                try:
                    health = [(await h.get(f"{u}/healthz")).status_code for u in (a, b)]
                    return health == [200, 200] and all([await owned(h, u) > 0 for u in (a, b)])
                except httpx.TransportError:
                    return False

            await wait_until(both_own, within=180, what="both workers ready, owning partitions")
            # Through A until a run lands on B's partitions: B's answer carries its own time
            # as owner;dur (api.relay), A's own answers do not.
            far = ""
            for _ in range(40):
                r = await h.post(f"{a}/api/v1/runs", json=body(unique), headers=bearer("tok-rw"))
                if r.status_code == 503:
                    continue  # the group still settling: retry
                assert r.status_code == 201, r.text
                assert SECRET not in r.text  # the 201 is masked (rw holds no execute)
                if "owner;dur=" in r.headers.get("Server-Timing", ""):
                    far = r.json()["run"]["id"]
                    break
            assert far, "no run landed on the other worker's partitions"
            run_path = f"/api/v1/runs/{far}"

            # The owner masks by the caller's scopes, carried signed through the hop.
            r = await h.get(a + run_path, headers=bearer("tok-read"))
            assert r.status_code == 200
            assert "owner;dur=" in r.headers["Server-Timing"]  # relayed, answered by B
            assert r.json()["run_config"]["environment"] == {"DB_PASSWORD": "***"}
            assert r.json()["run_config"]["tasks"][0]["environment"] == {"K": "***"}
            r = await h.get(a + run_path, headers=bearer("tok-exec"))
            assert r.status_code == 200
            assert r.json()["run_config"]["environment"] == {"DB_PASSWORD": SECRET}
            # Scopes are checked where the caller arrives: 401, 403, nothing relayed.
            assert (await h.get(a + run_path)).status_code == 401
            start = {"action_type": "start"}
            r = await h.put(f"{a}{run_path}/actions", json=start, headers=bearer("tok-read"))
            assert r.status_code == 403
            assert "'write' scope" in r.json()["message"]

            # Forged hop headers, from outside, at the owner and at the other worker.
            chosen = "0000000009999999"
            for url in (a, b):
                forged = {"X-Runstream-Run-Id": chosen, "X-Runstream-Relayed-By": url}
                r = await h.post(f"{url}/api/v1/runs", json=body(unique), headers={**forged, **bearer("tok-rw")})  # fmt: skip
                assert r.status_code == 400, r.text
                assert "X-Runstream-*" in r.json()["message"]
                fake = {
                    "X-Runstream-Relayed-By": url,
                    "X-Runstream-Scopes": "execute,read",
                    "X-Runstream-Relay-Time": "1",
                    "X-Runstream-Relay-Signature": "0" * 64,
                    "Accept": "application/vnd.runstream.state+json",
                }
                r = await h.get(url + run_path, headers={**fake, **bearer("tok-read")})
                assert r.status_code == 400
                assert SECRET not in r.text
            r = await h.get(f"{a}/api/v1/runs/{chosen}", headers=bearer("tok-read"))
            assert r.status_code == 404  # the chosen id was never used
    finally:
        for w in workers:
            w.stop()
    for w in workers:  # the refusals are logged; no log line carries the secret
        assert SECRET not in w.log_text()
    assert any("without the cluster's signature" in w.log_text() for w in workers)


async def test_a_worker_without_a_token_refuses_to_bind_every_address(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    s = make_settings(
        unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects", web_host="0.0.0.0"
    )
    worker = Worker(s, tmp_path / "worker.log").start()
    assert worker.proc is not None
    assert worker.proc.wait(timeout=120) == 2
    lines = [line for line in worker.log_text().splitlines() if "runstream: error:" in line]
    assert len(lines) == 1, worker.log_text()[-2000:]
    assert "not a loopback address" in lines[0]
    assert "RUNSTREAM_API_TOKEN" in lines[0]
