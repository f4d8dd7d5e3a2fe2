"""``runstream replay --target X`` refuses a target that exists unless ``--force``; ``verify``
removes its own copy unless ``--keep``."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest

from agents.cli.main import main
from agents.cli.replay import target_exists
from events import format_run_id
from tests.harness import make_settings, prepare_topics, settings_env
from tests.integration.test_pipeline import produce
from tests.unit.test_events_support import created, ev, task

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(300)]


async def test_replay_refuses_an_existing_target_unless_forced_and_verify_cleans_up(
    kafka_bootstrap: str, etcd_endpoint: str, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # fmt: skip
    s = make_settings(unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects")
    await prepare_topics(s)
    await produce(s.kafka, s.topic_events, [ev(created(task("a")), run_id=format_run_id(n)) for n in range(1, 6)])  # fmt: skip
    env = {**settings_env(s), "RUNSTREAM_PROGRESS": "0"}

    def run(*argv: str) -> int:
        with mock.patch.dict(os.environ, env):
            return main(list(argv))

    assert await _to_thread(run, "replay", "--target", "x", "--jobs", "1") == 0
    assert "/ 5 events into 'x'" in capsys.readouterr().out
    assert await target_exists(s, "x")
    assert await _to_thread(run, "replay", "--target", "x", "--jobs", "1") == 1
    assert "exists already" in capsys.readouterr().err
    assert await _to_thread(run, "replay", "--target", "x", "--jobs", "1", "--force") == 0
    assert "/ 5 events into 'x'" in capsys.readouterr().out

    assert await _to_thread(run, "verify", "--jobs", "1") == 0
    out = capsys.readouterr().out
    target = out.split("rebuilt (", 1)[1].split(")", 1)[0]
    assert target.startswith("verify-")
    assert not await target_exists(s, target)
    assert await _to_thread(run, "verify", "--jobs", "1", "--keep") == 0
    kept = capsys.readouterr().out.split("rebuilt (", 1)[1].split(")", 1)[0]
    assert await target_exists(s, kept)


async def _to_thread(fn: object, *args: str) -> int:
    import asyncio

    return await asyncio.to_thread(fn, *args)  # type: ignore[arg-type]
