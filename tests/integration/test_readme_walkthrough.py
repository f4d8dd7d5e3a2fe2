"""The README's walk-through, run as written: its shell block, extracted from README.md, against a
real ``runstream worker`` on moved ports (its own web port, topics and etcd prefix, given to both
through the same ``RUNSTREAM_*`` variables), ending with a finished run."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import (
    ROOT,
    Worker,
    make_settings,
    prepare_topics,
    settings_env,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(600)]

INTRO = "Once `make run` is up"


def walkthrough() -> str:
    """The first ``sh`` block after the walk-through's introduction in README.md."""
    text = (ROOT / "README.md").read_text()
    start = text.index(INTRO)
    match = re.search(r"```sh\n(.*?)```", text[start:], re.S)
    assert match is not None, "the README's walk-through has no sh block"
    return match.group(1)


async def test_the_readme_walkthrough_runs_as_written_and_ends_with_a_finished_run(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path
) -> None:
    # The walk-through relies on the scheduler starting the run (one running run per group).
    s = make_settings(
        unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects",
        max_running_per_group=1,
    )  # fmt: skip
    assert s.web_port != 6066  # moved
    await prepare_topics(s)
    worker = Worker(s, tmp_path / "worker.log").start()
    # The shell sees what a newcomer's shell would: the variables that moved the worker, no URL
    # (runstream derives it from RUNSTREAM_WEB_PORT), and runstream on the PATH.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env.update(settings_env(s))
    env.pop("RUNSTREAM_URL", None)
    env.pop("CI", None)
    env["RUNSTREAM_PROGRESS"] = "0"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    try:

        async def healthy() -> bool:
            import httpx

            try:
                async with httpx.AsyncClient() as c:
                    r = await c.get(f"http://127.0.0.1:{s.web_port}/healthz")
                return r.status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(healthy, within=180, what="the worker's /healthz")
        proc = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-euo", "pipefail", "-c", walkthrough()],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        out = proc.stdout
        assert proc.returncode == 0, proc.stderr[-3000:] + out[-3000:]
        assert re.search(r"^phase finished\s+result success", out, re.M), out
        # runs watch: a header, then one line per change with its position (partition, offset).
        head, *changes = [line.split() for line in (tmp_path / "phases.txt").read_text().splitlines() if line]  # fmt: skip
        assert head == ["PARTITION", "OFFSET", "RUN", "PHASE", "RESULT", "GROUP"]
        assert [r[3] for r in changes] == ["queued", "running", "finished"]
        assert all(r[0].isdigit() and r[1].isdigit() for r in changes), changes
        assert len({(r[0], r[1]) for r in changes}) == 3  # three positions, three changes
        # runs history: the creation, the scheduler's start and the four reports, all applied.
        rows = [line.split() for line in out.splitlines() if re.match(r"^\d+:\d+\s", line)]
        assert [r[1] for r in rows] == ["applied"] * 6, out
        assert [r[2] for r in rows].count("task.status_changed") == 4
        assert '"status":"ok"' in out.replace(" ", "")
        assert "runstream_consumer_lag_records" in out
    finally:
        worker.stop()
