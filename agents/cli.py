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


def _cmd_replay(args: argparse.Namespace) -> int:
    import asyncio

    from agents.logs import setup_logging
    from agents.replay import replay

    settings = Settings.from_args(args)
    setup_logging(settings.log_level, settings.log_format)
    report = asyncio.run(
        replay(settings, target=args.target, progress=settings.progress, jobs=args.jobs)
    )
    print(
        f"replayed {report.records:,} records / {report.events:,} events into '{report.target}' "
        f"in {report.seconds:.2f}s: {report.events_per_second:,.0f} events/s "
        f"({report.dead_letters} dead letters)"
    )
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    import asyncio
    import time

    from agents.logs import setup_logging
    from agents.replay import live_offsets, replay, verify

    settings = Settings.from_args(args)
    setup_logging(settings.log_level, settings.log_format)

    async def run() -> int:
        target = args.target or f"verify-{time.strftime('%Y%m%dT%H%M%S')}"
        if not args.target:
            until = await live_offsets(settings)
            await replay(
                settings, target=target, until=until, progress=settings.progress, jobs=args.jobs
            )
        report = await verify(settings, target=target)
        print(
            f"live: {report.live_runs:,} runs, digest {report.live_digest}\n"
            f"rebuilt ({target}): {report.rebuilt_runs:,} runs, digest {report.rebuilt_digest}"
        )
        if report.identical:
            print("identical")
            return 0
        print(f"{len(report.differing)} runs differ:")
        for rid in report.differing[:100]:
            print(f"  {rid}")
        return 1

    return asyncio.run(run())


def _cmd_config(args: argparse.Namespace) -> int:
    if args.markdown:
        print(markdown_table())
        return 0
    import orjson

    print(orjson.dumps(Settings.from_args(args).public(), option=orjson.OPT_INDENT_2).decode())
    return 0


def _replay_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="processes replaying partitions in parallel (default: cores)",
    )
    add_flags(parser)


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

    rp = sub.add_parser(
        "replay",
        help="rebuild the materialized state from the log into a fresh prefix",
        description="Read runs.events from the beginning and rebuild every partition's state "
        "under replay/<target> (object storage) and <etcd prefix>replay/<target>/ (etcd).",
    )
    rp.add_argument("--target", default=None, help="name of the rebuild (default: a timestamp)")
    _replay_flags(rp)
    rp.set_defaults(func=_cmd_replay)

    vf = sub.add_parser(
        "verify",
        help="compare a rebuild from the log with the live state by content hash",
        description="Replay the log up to the offsets the live checkpoints cover (or use an "
        "existing --target), compare run by run, name every run that differs; exit 1 if any.",
    )
    vf.add_argument("--target", default=None, help="compare with this existing replay instead")
    _replay_flags(vf)
    vf.set_defaults(func=_cmd_verify)

    from agents.index_cli import add_index_commands
    from api.commands import add_runs_commands

    add_index_commands(sub)
    add_runs_commands(sub)

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
    from agents.runtime import tune_gc

    tune_gc()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as exc:  # bad configuration: one clear line, no traceback
        print(f"runstream: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
