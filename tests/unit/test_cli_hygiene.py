"""The ``runstream`` command behaves like a Unix tool: a closed pipe ends it quietly, every
subcommand's ``--help`` works, and library log lines stay off a command's output."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agents.cli.main import build_parser
from agents.logs import LIBRARY_LOGGERS, quiet_libraries

ROOT = Path(__file__).resolve().parents[2]
RUNSTREAM = [sys.executable, "-m", "agents.cli"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}


def test_a_closed_stdout_ends_quietly_with_the_sigpipe_status() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to write_end now fails with EPIPE
    try:
        proc = subprocess.run(
            [*RUNSTREAM, "config"],
            cwd=ROOT,
            env=_env(),
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == b""
    assert proc.returncode == 141


def test_config_head_1_in_a_shell_pipe() -> None:
    proc = subprocess.run(
        ["bash", "-c", f"{' '.join(RUNSTREAM)} config | head -1"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        timeout=60,
    )
    assert proc.stdout == b"{\n"
    assert b"Traceback" not in proc.stderr


def test_runstream_help_walks_cleanly() -> None:
    proc = subprocess.run(
        [*RUNSTREAM, "--help"], cwd=ROOT, env=_env(), capture_output=True, timeout=60
    )
    assert proc.returncode == 0
    assert proc.stderr == b""
    for command in ("worker", "dlq", "storage", "config"):
        assert command.encode() in proc.stdout


@pytest.mark.parametrize(
    "path",
    [
        ("dlq", "list"),
        ("dlq", "show"),
        ("dlq", "redrive"),
        ("storage", "ls"),
        ("storage", "cat"),
    ],
)
def test_the_new_subcommands_have_help(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*path, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: runstream {' '.join(path)}")
    assert "--kafka" in out or "--storage" in out


def test_library_loggers_are_silenced_unless_debug() -> None:
    saved = {n: logging.getLogger(n).level for n in LIBRARY_LOGGERS}
    try:
        quiet_libraries("info")
        assert not logging.getLogger("aiokafka.consumer").isEnabledFor(logging.ERROR)
        quiet_libraries("debug")
        logging.getLogger().setLevel(logging.DEBUG)
        assert logging.getLogger("aiokafka.consumer").isEnabledFor(logging.WARNING)
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def test_a_cli_command_prints_no_aiokafka_line_when_kafka_is_unreachable() -> None:
    # Nothing listens on port 1: aiokafka logs connection errors while it tries.
    env = {**_env(), "RUNSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:1", "RUNSTREAM_PROGRESS": "0"}
    quiet = subprocess.run(
        [*RUNSTREAM, "dlq", "list"], cwd=ROOT, env=env, capture_output=True, timeout=120
    )
    assert quiet.returncode != 0
    assert b'"logger":"aiokafka' not in quiet.stderr, quiet.stderr.decode()[-2000:]
    loud = subprocess.run(
        [*RUNSTREAM, "dlq", "list", "--log-level", "debug"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert b'"logger":"aiokafka' in loud.stderr


def test_kafka_client_debug_lines_stay_off_even_at_debug_level() -> None:
    """aiokafka's debug lines hold record payloads (run environments may hold secrets)."""
    from agents.logs import PAYLOAD_LOGGERS, setup_logging

    saved = {n: logging.getLogger(n).level for n in PAYLOAD_LOGGERS}
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    try:
        for name in PAYLOAD_LOGGERS:  # as in a fresh worker process
            logging.getLogger(name).setLevel(logging.NOTSET)
        setup_logging("debug", "json")
        assert logging.getLogger("runstream.pipeline").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("aiokafka.producer.producer").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("aiokafka.conn").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("aiokafka.conn").isEnabledFor(logging.INFO)
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        root.setLevel(saved_root[0])
        root.handlers[:] = saved_root[1]
