"""Settings: flags over environment over defaults; the README's table is the generated one."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agents.cli.main import build_parser
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
    assert {("runs", "report"), ("runs", "history"), ("runs", "watch")} <= set(commands)
    for path in commands:
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([*path, "--help"])
        assert exit_.value.code == 0
        assert "usage: runstream" in capsys.readouterr().out


def test_one_set_of_port_variables_moves_the_services_and_points_runstream_at_them() -> None:
    env = {"RUNSTREAM_KAFKA_PORT": "19092", "RUNSTREAM_ETCD_PORT": "12379", "RUNSTREAM_WEB_PORT": "16066"}  # fmt: skip
    s = Settings.from_env(env)
    assert (s.kafka, s.etcd, s.web_port, s.url) == (
        "127.0.0.1:19092",
        "127.0.0.1:12379",
        16066,
        "http://127.0.0.1:16066",
    )
    # The settings' own variables and flags still win over the derived defaults.
    env["RUNSTREAM_KAFKA_BOOTSTRAP"] = "k:1"
    env["RUNSTREAM_URL"] = "http://api:1"
    assert (Settings.from_env(env).kafka, Settings.from_env(env).url) == ("k:1", "http://api:1")
    args = build_parser().parse_args(["runs", "get", "1", "--url", "http://flag:2"])
    assert Settings.from_args(args, env).url == "http://flag:2"
    # Without any variable: the documented defaults.
    d = Settings.from_env({})
    assert (d.kafka, d.etcd, d.url) == ("127.0.0.1:9092", "127.0.0.1:2379", "http://127.0.0.1:6066")


def test_every_setting_is_declared_once_as_a_field() -> None:
    from dataclasses import fields

    from agents.config import OPTIONS

    assert [o.field for o in OPTIONS] == [f.name for f in fields(Settings)]
    assert len({o.env for o in OPTIONS}) == len(OPTIONS)
    assert len({o.flag for o in OPTIONS}) == len(OPTIONS)
    assert Settings(partitions=7, url="http://x:1").partitions == 7  # keyword construction


def test_the_runs_commands_read_their_url_and_token_through_the_settings() -> None:
    from agents.cli.main import _client_target

    env = {"RUNSTREAM_WEB_PORT": "7001", "RUNSTREAM_API_TOKEN": "t0k"}
    args = build_parser().parse_args(["runs", "list"])
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, env, clear=True):
        target = _client_target(args)
    assert (target.url, target.token, target.partitions) == ("http://127.0.0.1:7001", "t0k", 4)
