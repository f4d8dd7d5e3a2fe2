"""Settings: flags over environment over defaults; the README's table is the generated one."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agents.cli import build_parser
from agents.config import Settings, markdown_table

ROOT = Path(__file__).resolve().parents[2]


def test_environment_overrides_defaults_and_flags_override_environment() -> None:
    env = {"RUNSTREAM_PARTITIONS": "12", "RUNSTREAM_KAFKA_BOOTSTRAP": "k:1"}
    assert Settings.from_env(env).partitions == 12
    args = build_parser().parse_args(["worker", "--kafka", "flag:2"])
    s = Settings.from_args(args, env)
    assert (s.kafka, s.partitions, s.etcd) == ("flag:2", 12, Settings().etcd)


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="RUNSTREAM_PARTITIONS"):
        Settings.from_env({"RUNSTREAM_PARTITIONS": "many"})


def test_secrets_are_masked() -> None:
    public = Settings(api_token="s3cret").public()
    assert public["api_token"] == "***"
    assert "s3cret" not in str(public)


def test_readme_configuration_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "regenerate with `runstream config --markdown`"


def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out.append((*prefix, name))
                out.extend(_commands(child, (*prefix, name)))
    return out


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    commands = _commands(parser)
    assert {("worker",), ("replay",), ("verify",), ("index", "dump"), ("config",)} <= set(commands)
    assert {("dlq", "list"), ("dlq", "show"), ("dlq", "redrive")} <= set(commands)
    assert {("storage", "ls"), ("storage", "cat")} <= set(commands)
    for path in commands:
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([*path, "--help"])
        assert exit_.value.code == 0
        assert "usage: runstream" in capsys.readouterr().out
