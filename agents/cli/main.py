"""The ``runstream`` command. Every subcommand has ``--help``; settings come from flags and env."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from agents.cli.runs import Target
from agents.config import Settings, add_flags, markdown_table

if TYPE_CHECKING:
    from agents.dlq import Selection
    from api.client import Client

__all__ = ["main"]


def _cmd_worker(args: argparse.Namespace) -> int:
    from agents.worker import run_worker

    return run_worker(Settings.from_args(args))


def _cmd_replay(args: argparse.Namespace) -> int:
    import asyncio

    from agents.cli.replay import remove_target, replay, target_exists
    from agents.logs import setup_logging

    settings = Settings.from_args(args)
    setup_logging(settings.log_level, settings.log_format)

    async def prepare() -> bool:
        if args.target is None or not await target_exists(settings, args.target):
            return True
        if not args.force:
            print(
                f"runstream: error: replay target '{args.target}' exists already (replaying into "
                "it would add nothing); choose another --target, or --force to remove it and "
                "replay again",
                file=sys.stderr,
            )
            return False
        await remove_target(settings, args.target)
        return True

    if not asyncio.run(prepare()):
        return 1
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

    from agents.cli.replay import live_offsets, remove_target, replay, verify
    from agents.logs import setup_logging

    settings = Settings.from_args(args)
    setup_logging(settings.log_level, settings.log_format)

    async def run() -> int:
        target = args.target or f"verify-{time.strftime('%Y%m%dT%H%M%S')}"
        if not args.target:
            until = await live_offsets(settings)
            await replay(
                settings, target=target, until=until, progress=settings.progress, jobs=args.jobs
            )
        try:
            report = await verify(settings, target=target)
        finally:
            if not args.target and not args.keep:  # our own copy: remove it
                await remove_target(settings, target)
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


def _cmd_dlq(args: argparse.Namespace) -> int:
    import asyncio

    from aiokafka.errors import KafkaError

    from agents.logs import setup_logging

    settings = Settings.from_args(args)
    setup_logging(settings.log_level, settings.log_format)
    try:
        return asyncio.run(_DLQ[args.dlq_command](settings, args))
    except KafkaError as exc:  # one line, not aiokafka's traceback
        print(f"runstream: error: Kafka at {settings.kafka}: {exc}", file=sys.stderr)
        return 1


async def _dlq_list(settings: Settings, args: argparse.Namespace) -> int:
    import orjson

    from agents import dlq

    count = 0
    async for r in dlq.read(settings, _dlq_selection(args)):
        count += 1
        print(orjson.dumps(r.summary()).decode() if args.json else r.line())
    if not args.json:
        print(f"{count:,} dead letters", file=sys.stderr)
    return 0


async def _dlq_show(settings: Settings, args: argparse.Namespace) -> int:
    import orjson

    from agents import dlq

    partition, offset = dlq.parse_id(args.id)
    try:
        record = await dlq.find(settings, partition, offset)
    except LookupError as exc:
        print(f"runstream: error: {exc.args[0]}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(dlq.describe(record, max_event_bytes=settings.max_event_bytes)).decode())
        return 0
    for name, value in record.summary().items():
        if value is not None:
            print(f"{name + ':':<18}{value}")
    print("headers:")
    for name, raw in record.headers:
        print(f"  {name}: {raw.decode('utf-8', 'replace')}")
    events, error = dlq.decoded(record, max_event_bytes=settings.max_event_bytes)
    if events is None:
        print(f"decoded:          no: {error}")
        print(f"raw start:        {record.value[:512]!r}")
    else:
        print(f"decoded:          {len(events)} events (shown in their current version)")
        for ev in events:
            print("  " + orjson.dumps(ev).decode())
    return 0


async def _dlq_redrive(settings: Settings, args: argparse.Namespace) -> int:
    from agents import dlq

    def plan(p: dlq.Redrive) -> None:
        if args.dry_run and p.skip is None:
            key = p.key.decode("utf-8", "replace") if p.key else None
            where = "" if p.partition is None else f", partition {p.partition}"
            print(f"would redrive {p.record.id} to {p.topic} (key {key}{where})")

    report = await dlq.redrive(
        settings,
        _dlq_selection(args, ids=args.ids),
        dry_run=args.dry_run,
        progress=settings.progress,
        on_plan=plan,
    )
    for rid, why in report.skips:
        print(f"skipped {rid}: {why}", file=sys.stderr)
    verb = "would redrive" if args.dry_run else "redriven"
    topics = ", ".join(f"{n:,} to {t}" for t, n in sorted(report.by_topic.items()))
    print(
        f"{verb} {report.redriven:,}"
        + (f" ({topics})" if topics else "")
        + f", skipped {report.skipped:,}"
    )
    return 0


def _dlq_selection(args: argparse.Namespace, ids: Sequence[str] | None = None) -> Selection:
    from agents import dlq

    return dlq.selection_from(
        reasons=args.reason,
        source_partitions=args.source_partition,
        since=args.since,
        until=args.until,
        ids=ids,
    )


_DLQ = {"list": _dlq_list, "show": _dlq_show, "redrive": _dlq_redrive}


def _add_dlq_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dlq = sub.add_parser(
        "dlq",
        help="dead letters: list, show, redrive to their source topic",
        description="The records the materializer refused (the dead-letter topic): list them, "
        "look at one, send them back to their source topic once runstream or the producer is "
        "fixed. A dead letter is named PARTITION:OFFSET of the dead-letter topic.",
    )
    dsub = dlq.add_subparsers(dest="dlq_command", metavar="COMMAND", required=True)

    def selection(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--reason",
            action="append",
            help="only this reason (header runstream-error: invalid_json, unknown_type, "
            "unsupported_version, oversize, schema, misrouted, wrong_partition, no_key); "
            "repeatable",
        )
        p.add_argument(
            "--source-partition",
            type=int,
            action="append",
            help="only dead letters from this source partition; repeatable",
        )
        p.add_argument(
            "--since", help="only dead letters from then on: ISO 8601 or ago (10m, 2h, 1d)"
        )
        p.add_argument("--until", help="only dead letters before then: ISO 8601 or ago (10m)")

    ls = dsub.add_parser(
        "list",
        help="one line per dead letter: id, time, reason, source, size",
        description="One line per dead letter: PARTITION:OFFSET, time, reason, source "
        "topic/partition@offset, size.",
    )
    selection(ls)
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    show = dsub.add_parser(
        "show",
        help="headers, key and the record decoded where it can be",
        description="Print one dead letter: its headers, key and the record decoded (or the "
        "decoding error and the start of its bytes).",
    )
    show.add_argument("id", metavar="PARTITION:OFFSET", help="as `dlq list` prints it")
    show.add_argument("--json", action="store_true", help="one JSON object")
    rd = dsub.add_parser(
        "redrive",
        help="append the selected dead letters to their source topic again",
        description="Append the selected dead letters' original bytes (key, headers without "
        "runstream-*) to their source topic. Safe to repeat: event ids make a redriven event "
        "apply once. Skips truncated copies and records this runstream still refuses. Records "
        "refused for their partition (misrouted, wrong_partition, no_key) are keyed by their "
        "run id (wrong_partition: by their own key) and go where murmur2 of the key puts them, "
        "the run's partition, never back to the one that refused them.",
    )
    selection(rd)
    rd.add_argument("ids", nargs="*", metavar="PARTITION:OFFSET", help="only these dead letters")
    rd.add_argument("--dry-run", action="store_true", help="say what would be sent, send nothing")
    for p in (ls, show, rd):
        add_flags(p)
        p.set_defaults(func=_cmd_dlq)


def _client_flags(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, ("url", "api_token", "partitions"))


def _client_target(args: argparse.Namespace) -> Target:
    s = Settings.from_args(args)
    return Target(s.url, s.api_token, s.partitions)


def _report_id(settings: Settings, args: argparse.Namespace, run_id: str, status: str) -> str:
    """``--event-id``, else one derived from the report and the task's current attempt (read
    over the API), so that a retried report is the same event; a fresh random id, with a
    warning on stderr, when the API cannot say the attempt."""
    import uuid

    from agents.cli.runs import current_attempt, report_event_id

    if args.event_id:
        return str(args.event_id)
    attempt = current_attempt(settings.url, settings.api_token, run_id, args.task_id)
    if isinstance(attempt, str):
        print(
            f"warning: could not read the task's attempt from the API ({attempt}); this report "
            "gets a random event id, so a retry of it is a new event (give --event-id to "
            "choose one)",
            file=sys.stderr,
        )
        return uuid.uuid4().hex
    return report_event_id(run_id, args.task_id, status, args.executor, attempt)


def _cmd_report(args: argparse.Namespace) -> int:
    """Append one task.status_changed event to the events topic, as an executor would."""
    import asyncio
    import time

    import msgspec

    from agents.producer import EventProducer
    from events import TaskStatus, TaskStatusChanged, format_run_id, make_event, parse_run_id
    from events.model import ExecutorId

    settings = Settings.from_args(args)
    try:
        run_id = format_run_id(parse_run_id(args.run_id))
        status = TaskStatus(args.status)
    except ValueError as exc:
        raise ValueError(f"runs report: {exc}") from None
    executor: str | msgspec.UnsetType = msgspec.UNSET
    if args.executor is not None:
        try:
            executor = msgspec.convert(args.executor, ExecutorId)
        except msgspec.ValidationError:
            raise ValueError(
                f"runs report: --executor {args.executor[:40]!r}: an executor id is 1 to 200 "
                "printable ASCII characters without spaces"
            ) from None
    data = TaskStatusChanged(task_id=args.task_id, status=status, executor_id=executor)
    event = make_event(
        data,
        id=_report_id(settings, args, run_id, status.value),
        run_id=run_id,
        at=int(time.time() * 1000),
    )

    async def send() -> tuple[dict[int, int], int]:
        from agents import kafka
        from partition.placement import partition_for

        # Where the answers' partitions end now: an answer to this event comes after; and where
        # the run's partition of the events topic ends: this append lands at or after it.
        ends = await kafka.end_offsets(settings.kafka, settings.topic_refusals)
        events_ends = await kafka.end_offsets(settings.kafka, settings.topic_events)
        since = events_ends.get(partition_for(run_id, max(1, len(events_ends))), 0)
        async with EventProducer(settings.kafka, settings.topic_events) as producer:
            await producer.append([event])
        return ends, since

    ends, since = asyncio.run(send())
    by = f" by executor {args.executor}" if args.executor else ""
    print(f"reported: run {run_id} task {args.task_id} {status}{by} (event {event.id})")
    if args.wait <= 0:
        return 0
    from agents.cli.answers import await_answer

    answer = asyncio.run(
        await_answer(settings, run_id, event.id, ends, within=args.wait, since_offset=since)
    )
    print(answer.line())
    return answer.exit_code


def _add_report_command(runs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from events import TaskStatus

    p = runs.add_parser(
        "report",
        help="report a task's status as an executor does (appends task.status_changed)",
        description="Append a task.status_changed event for RUN's task TASK to the events topic "
        "(what an executor's script does when a task starts or ends), then show what the run's "
        "owner answered (see --wait). The event's id is --event-id, else derived from RUN, "
        "TASK, STATUS, --executor and the task's current attempt (read from the API, "
        "GET /api/v1/runs/RUN), so running the same command again is the same event, applied "
        "once ('duplicate'), while a report for a later attempt (the task went back to ready "
        "after its executor was lost) is a new one. When the API cannot be reached the id is "
        "random, with a warning: a retry is then a new event.",
    )
    p.add_argument("run_id", metavar="RUN")
    p.add_argument("task_id", metavar="TASK")
    p.add_argument("status", metavar="STATUS", choices=[s.value for s in TaskStatus],
                   help="one of: " + ", ".join(s.value for s in TaskStatus))  # fmt: skip
    p.add_argument(
        "--event-id",
        help="the event's id; the same id again is applied once (default: derived from RUN, "
        "TASK, STATUS, --executor and the task's attempt; random when the API cannot be read)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="wait this long for the owner's answer and show it: applied, duplicate, or refused "
        "with its code and reason (from the run's history over the API, else runs.refusals); "
        "exit 1 when refused, 3 when no answer came; 0: do not wait (default 10)",
    )
    p.add_argument(
        "--executor",
        metavar="EXECUTOR_ID",
        help="the executor reporting (the event's executor_id): refused for a task another "
        "executor holds; a report for a ready task nobody holds claims it for this executor",
    )
    add_flags(p, ("kafka", "topic_events", "log_level", "url", "api_token"))
    p.set_defaults(func=_cmd_report)


def _runs_stuck(client: Client, args: argparse.Namespace) -> None:
    """``runs stuck``: one line per run with no progress for ``--older-than`` seconds."""
    from datetime import UTC, datetime

    import msgspec

    body = client.stuck(older_than=args.older_than)
    if args.json:
        print(json.dumps(msgspec.to_builtins(body), indent=2, sort_keys=True), file=args.out)
        return
    for r in body.runs:
        since = datetime.fromtimestamp(r.since / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        tasks = f"  tasks {','.join(r.tasks)}" if r.tasks else ""
        print(f"{r.run_id}  {r.phase}  since {since}  {r.group}{tasks}", file=args.out)
    if body.partial:
        print("partial: some worker or partition did not answer; runs may be missing", file=sys.stderr)  # fmt: skip


def _add_stuck_command(runs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = runs.add_parser(
        "stuck",
        help="list active runs with no progress for a while (every worker's partitions)",
        description="List the queued and running runs with no progress (no start, claim, task "
        "start or end) for longer than --older-than seconds, oldest first, one line each: run "
        "id, phase, since when, group, and the tasks running or claimed since before then. "
        "Asks GET /api/v1/stuck, which gathers every worker's partitions; says so on stderr "
        "when some did not answer.",
    )
    p.add_argument(
        "--older-than",
        type=int,
        default=600,
        metavar="SECONDS",
        help="seconds without progress (default 600)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    _client_flags(p)
    p.set_defaults(runs_fn=_runs_stuck)


def _cmd_executor_heartbeat(args: argparse.Namespace) -> int:
    """Send one heartbeat for EXECUTOR_ID, or one every ``--every`` seconds until interrupted."""
    import time

    from api.client import Client
    from api.errors import ApiError, BadRequest, Unauthorized, Unreachable

    every = args.every
    if every is not None and not 0 < every * 1000 < args.lease_ms:
        raise ValueError(
            f"executors heartbeat: --every {every:g} must be above 0 and below the lease "
            f"({args.lease_ms / 1000:g} s; a third of it is the usual interval)"
        )
    target = _client_target(args)
    sent = f"executor {args.executor_id} lease {args.lease_ms} ms"
    try:
        with Client(target.url, token=target.token or None) as client:
            while True:
                try:
                    client.heartbeat(args.executor_id, lease_ms=args.lease_ms)
                    print(f"heartbeat: {sent}", flush=True)
                except (BadRequest, Unauthorized) as exc:  # sending it again changes nothing
                    print(f"runstream: error: {exc.message}", file=sys.stderr)
                    return 1
                except (ApiError, Unreachable) as exc:
                    print(f"runstream: error: {exc}", file=sys.stderr, flush=True)
                    if every is None:
                        return 1
                if every is None:
                    return 0
                time.sleep(every)
    except KeyboardInterrupt:  # the way to stop --every
        return 0


def _add_executors_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from events.executors import DEFAULT_HEARTBEAT_INTERVAL_MS, DEFAULT_LEASE_MS

    executors = sub.add_parser(
        "executors",
        help="executors: send heartbeats",
        description="What an executor does besides reporting task statuses: prove it is alive.",
    )
    esub = executors.add_subparsers(dest="executors_command", metavar="COMMAND", required=True)
    hb = esub.add_parser(
        "heartbeat",
        help="say an executor is alive: its claims hold for its lease more",
        description="Send a heartbeat for EXECUTOR_ID through the HTTP API (any worker appends it "
        "to the heartbeats topic; every worker hears it): the executor's claims hold for "
        "--lease-ms more. Once, or every --every seconds until interrupted (a failed send is "
        "printed and the next one goes out on time).",
    )
    hb.add_argument("executor_id", metavar="EXECUTOR_ID")
    hb.add_argument(
        "--lease-ms",
        type=int,
        default=DEFAULT_LEASE_MS,
        metavar="N",
        help=f"the lease, 1000 to 3600000 ms (default {DEFAULT_LEASE_MS})",
    )
    hb.add_argument(
        "--every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="keep sending, one heartbeat every SECONDS (a third of the lease is usual: "
        f"{DEFAULT_HEARTBEAT_INTERVAL_MS / 1000:g} for the default lease)",
    )
    _client_flags(hb)
    hb.set_defaults(func=_cmd_executor_heartbeat)


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
        "under <object prefix>replay/<target> (object storage: the deployment's prefix, "
        "docs/operations.md) and <etcd prefix>replay/<target>/ (etcd).",
    )
    rp.add_argument("--target", default=None, help="name of the rebuild (default: a timestamp)")
    rp.add_argument(
        "--force",
        action="store_true",
        help="when --target exists already, remove it first and replay again (else: refuse)",
    )
    _replay_flags(rp)
    rp.set_defaults(func=_cmd_replay)

    vf = sub.add_parser(
        "verify",
        help="compare a rebuild from the log with the live state by content hash",
        description="Replay the log up to the offsets the live checkpoints cover (or use an "
        "existing --target), compare run by run, name every run that differs; exit 1 if any.",
    )
    vf.add_argument("--target", default=None, help="compare with this existing replay instead")
    vf.add_argument(
        "--keep",
        action="store_true",
        help="keep the replay/verify-<time> copy it makes (removed from storage and etcd by default)",
    )
    _replay_flags(vf)
    vf.set_defaults(func=_cmd_verify)

    from agents.cli.index import add_index_commands
    from agents.cli.runs import add_runs_commands
    from agents.cli.storage import add_storage_commands

    add_index_commands(sub)
    runs = add_runs_commands(sub, flags=_client_flags, target=_client_target)
    _add_report_command(runs)
    _add_stuck_command(runs)
    _add_dlq_commands(sub)
    _add_executors_commands(sub)
    add_storage_commands(sub)

    config = sub.add_parser(
        "config",
        help="print the effective configuration (secrets masked)",
        description="Print the effective configuration: flags over environment over defaults.",
    )
    config.add_argument("--markdown", action="store_true", help="print the table of every setting")
    add_flags(config)
    config.set_defaults(func=_cmd_config)
    return parser


def _quiet_libraries(args: argparse.Namespace) -> None:
    """Keep the client libraries' log lines off a CLI command's output (not the worker's)."""
    from agents.logs import quiet_libraries

    if args.command != "worker":
        level = getattr(args, "log_level", None) or os.environ.get("RUNSTREAM_LOG_LEVEL") or ""
        quiet_libraries(level or "info")


def main(argv: Sequence[str] | None = None) -> int:
    from agents.runtime import tune_gc

    tune_gc()
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries(args)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except ValueError as exc:  # bad configuration: one clear line, no traceback
        print(f"runstream: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`runstream config | head`): stop quietly, as a Unix tool does.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what the shell reports for a tool the pipe stopped


if __name__ == "__main__":
    sys.exit(main())
