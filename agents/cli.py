"""The ``runstream`` command. Every subcommand has ``--help``; settings come from flags and env."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agents.config import Settings, add_flags, markdown_table

__all__ = ["main"]


def _cmd_worker(args: argparse.Namespace) -> int:
    from agents.worker import run_worker

    return run_worker(Settings.from_args(args))


def _cmd_config(args: argparse.Namespace) -> int:
    if args.markdown:
        print(markdown_table())
        return 0
    import orjson

    print(orjson.dumps(Settings.from_args(args).public(), option=orjson.OPT_INDENT_2).decode())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runstream",
        description="runstream: the run service of a CI/CD system, event-sourced on a Kafka log.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    worker = sub.add_parser(
        "worker",
        help="run the Faust worker: agents, HTTP API and /metrics",
        description="Run the Faust worker (agents, HTTP API, /metrics) until interrupted.",
    )
    add_flags(worker)
    worker.set_defaults(func=_cmd_worker)

    config = sub.add_parser(
        "config",
        help="print the effective configuration (secrets masked)",
        description="Print the effective configuration: flags over environment over defaults.",
    )
    config.add_argument("--markdown", action="store_true", help="print the table of every setting")
    add_flags(config)
    config.set_defaults(func=_cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as exc:  # bad configuration: one clear line, no traceback
        print(f"runstream: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
