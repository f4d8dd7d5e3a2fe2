"""The ``runstream runs`` commands: create, get, history, list, watch, start, cancel, stop,
recreate.

``add_runs_commands(subparsers, ...)`` adds them to the ``runstream`` parser (``agents.cli``),
which hands over its configuration: ``flags`` adds the settings' flags (``--url``,
``--api-token``) and ``target`` reads the API's URL, token and partition count from the settings
(``agents.config``; ``api/`` may not import ``agents/``). Without them (tests, other parsers) the
commands take ``--url`` / ``--token`` (env ``RUNSTREAM_URL`` / ``RUNSTREAM_API_TOKEN``). Each prints
a table, or JSON with ``--json``; errors print the server's message and exit 1.

``watch`` prints a header, then one line per phase change with its position in the phase stream
(partition and offset of ``runs.phases``) instead of the raw cursor (``--json`` keeps the
cursor, for scripts). ``report_event_id`` and ``current_attempt`` serve ``runstream runs
report`` (``agents.cli``): a report's event id derived from what it says and the task's attempt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec

from api.client import DEFAULT_URL, Client
from api.errors import ApiError, NotFound
from api.history import History
from api.views import RunPage, RunWithConfig
from events import Event, PhaseChanged
from events.model import attempt_of, holder_of

__all__ = [
    "WATCH_HEADER",
    "Target",
    "add_runs_commands",
    "current_attempt",
    "report_event_id",
    "run_command",
    "task_attempt",
    "watch_line",
]


@dataclass(frozen=True, slots=True)
class Target:
    """Where the commands send their requests: the API's base URL, its token, and the
    partition count of the log (``watch --from-start`` builds its cursor from it)."""

    url: str
    token: str = ""
    partitions: int | None = None


Flags = Callable[[argparse.ArgumentParser], None]
Resolve = Callable[[argparse.Namespace], Target]


def _own_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=os.environ.get("RUNSTREAM_URL", DEFAULT_URL),
        help=f"API base URL (env RUNSTREAM_URL, default {DEFAULT_URL})",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("RUNSTREAM_API_TOKEN", ""),
        help="API token for writes (env RUNSTREAM_API_TOKEN)",
    )


def _own_target(args: argparse.Namespace) -> Target:
    return Target(args.url, args.token)


def _pairs(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values or ():
        key, sep, value = v.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} wants KEY=VALUE, got {v!r}")
        out[key] = value
    return out


def _print_run(body: RunWithConfig, out: TextIO) -> None:
    run = body.run
    print(f"run {run.id}  {run.name}  {run.group}", file=out)
    print(f"phase {run.phase}  result {run.result}  revision {body.seq}", file=out)
    for err in body.run_config.setup_errors:
        print(f"setup error: {err.message}", file=out)
    waiting = body.waiting
    if waiting is not None and waiting.run is not None:
        print(f"waiting for {waiting.run.text}", file=out)
    why = {w.task_id: w.text for w in waiting.tasks} if waiting is not None else {}
    rows = [
        (t.id, str(t.status), holder_of(t), _attempt(t.attempt), why.get(t.id, ""))
        for t in run.tasks
    ]
    if rows:
        _table(["TASK", "STATUS", "HOLDER", "ATTEMPT", "WAITING FOR"], rows, out)


def _attempt(attempt: object) -> str:
    """A task's attempt as the table shows it: "" for the first (the API leaves it out)."""
    return str(attempt) if isinstance(attempt, int) else ""


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)


def _emit(args: argparse.Namespace, body: Any, table: Callable[[Any, TextIO], None]) -> None:
    if args.json:  # the answer's JSON (a Struct as the server encoded it)
        print(json.dumps(msgspec.to_builtins(body), indent=2, sort_keys=True), file=args.out)
    else:
        table(body, args.out)


def _create(c: Client, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {}
    if args.file:
        with open(args.file) if args.file != "-" else _stdin() as f:
            body = json.load(f)
    for key in ("name", "group"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    for key, flag in (("environment", "--env"), ("annotations", "--annotation")):
        body.setdefault(key, {}).update(_pairs(getattr(args, key), flag))
    if "group" not in body:
        raise SystemExit("runs create needs --group (or a group in --file)")
    _emit(args, c.create_run(**body), _print_run)


def _stdin() -> TextIO:
    return sys.stdin


def _recreate(c: Client, args: argparse.Namespace) -> None:
    env = _pairs(args.environment, "--env") if args.environment else None
    _emit(args, c.recreate_run(args.run_id, from_start=args.from_start, environment=env), _print_run)  # fmt: skip


def _when(millis: int | None) -> str:
    """A listing time (UTC, to the second, as the index keeps it); "" when unknown."""
    if millis is None:
        return ""
    return datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _list(c: Client, args: argparse.Namespace) -> None:
    page = c.list_runs(
        groups=args.group or (), phases=args.phase or (), results=args.result or (),
        last_run=args.lastrun, order=args.order, limit=args.limit, cursor=args.cursor,
    )  # fmt: skip

    def table(body: RunPage, out: TextIO) -> None:
        rows = [
            (
                r.id,
                f"#{r.counter}" if r.counter else "",
                r.name,
                str(r.phase),
                str(r.result),
                r.group,
                *(_when(t) for t in (r.enqueue_time, r.start_time, r.end_time)),
            )
            for r in body.runs
        ]
        head = ["ID", "#", "NAME", "PHASE", "RESULT", "GROUP", "ENQUEUED", "STARTED", "ENDED"]
        _table(head, rows, out)
        if body.next_cursor:
            print(f"next page: --cursor {body.next_cursor}", file=out)

    _emit(args, page, table)


def _history(c: Client, args: argparse.Namespace) -> None:
    def table(body: History, out: TextIO) -> None:
        rows = [
            (
                f"{e.offset}:{e.index}",
                str(e.outcome),
                e.type,
                e.event_id,
                e.reason or ("" if e.seq is None else f"revision {e.seq}"),
            )
            for e in body.events
        ]
        _table(["OFFSET", "OUTCOME", "TYPE", "EVENT ID", "REVISION / REASON"], rows, out)

    _emit(args, c.run_history(args.run_id), table)


def from_start_cursor(partitions: int) -> str:
    """The phase stream's cursor before the first event of every partition."""
    return ".".join(["v1", *("0" * partitions)])


#: The columns of ``runs watch`` (lines are printed as they come: fixed widths, not measured).
WATCH_HEADER = ("PARTITION", "OFFSET", "RUN", "PHASE", "RESULT", "GROUP")
_WATCH_WIDTHS = (9, 8, 16, 10, 7)


def _offsets(cursor: str | None) -> list[int] | None:
    """The next offsets of a phase-stream cursor (``v1.<p0>.<p1>...``), None if not one."""
    if cursor is None:
        return None
    parts = cursor.split(".")
    if (
        len(parts) < 2
        or parts[0] != "v1"
        or not all(p.isascii() and p.isdigit() for p in parts[1:])
    ):
        return None
    return [int(p) for p in parts[1:]]


def _partition_of(run_id: str, partitions: int) -> int:
    """The partition of ``run_id`` in the run topics (Kafka's default partitioner: murmur2)."""
    from aiokafka.partitioner import murmur2

    return int(murmur2(run_id.encode()) & 0x7FFFFFFF) % partitions


def event_position(cursor: str, previous: str | None, run_id: str) -> tuple[int, int] | None:
    """``(partition, offset)`` in ``runs.phases`` of the event whose cursor is ``cursor``: the
    one partition whose next offset moved since ``previous`` (the cursor before it), else the
    run's partition; None when ``cursor`` is not a cursor of the phase stream."""
    now = _offsets(cursor)
    if not now:
        return None
    before = _offsets(previous)
    if before is not None and len(before) == len(now):
        moved = [p for p, (a, b) in enumerate(zip(before, now, strict=True)) if b > a]
        if len(moved) == 1:
            return moved[0], now[moved[0]] - 1
    p = _partition_of(run_id, len(now))
    return p, now[p] - 1


def _row(cells: Sequence[str]) -> str:
    padded = [c.ljust(w) for c, w in zip(cells, _WATCH_WIDTHS, strict=False)]
    return "  ".join([*padded, *cells[len(_WATCH_WIDTHS) :]]).rstrip()


def watch_line(cursor: str, previous: str | None, event: Event) -> str:
    """One line of ``runs watch``: partition, offset, run, phase, result, group."""
    d = event.data
    where = event_position(cursor, previous, event.run_id)
    partition, offset = (str(where[0]), str(where[1])) if where else ("?", "?")
    if not isinstance(d, PhaseChanged):  # the phase stream carries nothing else
        return _row([partition, offset, event.run_id, str(event.type)])
    return _row([partition, offset, event.run_id, str(d.phase), str(d.result), d.group])


def _watch(c: Client, args: argparse.Namespace) -> None:
    after = args.after
    if args.from_start:
        if args.target.partitions is None:
            raise SystemExit("runs watch --from-start needs the partition count (runstream's --partitions)")  # fmt: skip
        after = from_start_cursor(args.target.partitions)
    if not args.json:
        print(_row(WATCH_HEADER), file=args.out, flush=True)
    last = after
    try:
        for item in c.watch(after):
            if args.json:
                line = {"cursor": item.cursor, "event": msgspec.to_builtins(item.event)}
                print(json.dumps(line), file=args.out, flush=True)
            else:
                print(watch_line(item.cursor, last, item.event), file=args.out, flush=True)
            last = item.cursor
            if args.count is not None:
                args.count -= 1
                if args.count <= 0:
                    return
    except KeyboardInterrupt:
        if last is not None and not args.json:
            print(f"resume with: runstream runs watch --after {last}", file=sys.stderr)
        raise


# -- runs report (agents.cli): a report's event id -----------------------------------------------


def report_event_id(
    run_id: str, task_id: str, status: str, executor_id: str | None, attempt: int
) -> str:
    """The event id of ``runstream runs report`` when none is given: derived from what the
    report says and the task's attempt, so a retried report is the same event (applied once),
    while the same executor reporting the same status for a later attempt (the task went back
    to ready after its executor was lost) is a new one."""
    parts = ("report", run_id, task_id, status, executor_id or "", str(attempt))
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=12)
    return f"report.{digest.hexdigest()}"


def task_attempt(body: RunWithConfig, task_id: str) -> int:
    """The current attempt of ``task_id`` in a ``GET /runs/{id}`` answer (tasks carry
    ``attempt`` from 2 on); 1 when the task is not there."""
    for task in body.run.tasks:
        if task.id == task_id:
            return attempt_of(task)
    return 1


def current_attempt(
    url: str, token: str, run_id: str, task_id: str, *, timeout: float = 5.0
) -> int | str:
    """The task's current attempt from the API (1 for a run or task it does not know), or why
    the API could not say (unreachable, unavailable, refused the token...)."""
    try:
        with Client(url, token=token or None, timeout=timeout) as c:
            return task_attempt(c.get_run(run_id), task_id)
    except NotFound:
        return 1
    except ApiError as exc:
        return f"{url}: {exc.message or type(exc).__name__}"


def _action(name: str) -> Callable[[Client, argparse.Namespace], None]:
    def run(c: Client, args: argparse.Namespace) -> None:
        getattr(c, name)(args.run_id, expected_seq=args.if_match)
        _emit(args, {"run_id": args.run_id, "action": name}, lambda b, out: print(f"{name}: {b['run_id']}", file=out))  # fmt: skip

    return run


def add_runs_commands(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    *,
    flags: Flags | None = None,
    target: Resolve | None = None,
) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """Add ``runs`` with its subcommands to a ``runstream`` parser's subparsers; returns the
    subparsers of ``runs`` (for commands that live elsewhere, e.g. ``runs report``).
    ``flags``/``target``: the configuration's flags and how to read the target from the parsed
    arguments (default: ``--url`` and ``--token`` of their own)."""
    runs = subparsers.add_parser(
        "runs",
        help="create, read, list, watch and act on runs (HTTP API)",
        description="The HTTP API from the shell. The API's URL: --url or RUNSTREAM_URL "
        "(default: this configuration's worker, http://127.0.0.1:<RUNSTREAM_WEB_PORT>).",
    )
    sub: argparse._SubParsersAction = runs.add_subparsers(  # type: ignore[type-arg]
        dest="runs_command", required=True, metavar="COMMAND"
    )

    p = sub.add_parser("create", help="create a run from its tasks")
    p.add_argument("--file", help="JSON body (name, group, tasks, ...); '-' reads stdin")
    p.add_argument("--name", help="run name")
    p.add_argument("--group", help="group path, e.g. /project/p1/branch/main")
    p.add_argument("--env", dest="environment", action="append", metavar="KEY=VALUE")
    p.add_argument("--annotation", dest="annotations", action="append", metavar="KEY=VALUE")
    p.set_defaults(runs_fn=_create)

    p = sub.add_parser("get", help="show a run and its tasks")
    p.add_argument("run_id")
    p.set_defaults(runs_fn=lambda c, a: _emit(a, c.get_run(a.run_id), _print_run))

    p = sub.add_parser("history", help="every event applied to or refused for a run, in order")
    p.add_argument("run_id")
    p.set_defaults(runs_fn=_history)

    p = sub.add_parser("list", help="list runs from the index")
    p.add_argument("--group", action="append", help="group prefix (repeatable): / every run, /project every project's, /project/p1 p1's, /project/p1/branch its branches")  # fmt: skip
    p.add_argument("--phase", action="append", help="phase (repeatable)")
    p.add_argument("--result", action="append", help="result (repeatable)")
    p.add_argument("--lastrun", action="store_true", help="only the last run of each group")
    p.add_argument("--order", choices=("asc", "desc"), default="desc")
    p.add_argument("--limit", type=int)
    p.add_argument("--cursor", help="next_cursor of the previous page")
    p.set_defaults(runs_fn=_list)

    p = sub.add_parser(
        "watch",
        help="follow phase changes (server-sent events), resuming on drops",
        description="Follow the phase changes: a header, then one line per change: its "
        "position in runs.phases (partition, offset), run, phase, result, group. --json prints "
        '{"cursor", "event"} per change instead (the cursor resumes with --after).',
    )
    p.add_argument("--after", help="cursor of the last event seen")
    p.add_argument("--from-start", action="store_true", help="from the beginning of the log (every phase change still in it)")  # fmt: skip
    p.add_argument("--count", type=int, help="stop after this many events")
    p.set_defaults(runs_fn=_watch)

    for name, text in (("start", "start a queued run"), ("cancel", "cancel a queued run"), ("stop", "stop a running run")):  # fmt: skip
        p = sub.add_parser(name, help=text)
        p.add_argument("run_id")
        p.add_argument("--if-match", type=int, metavar="SEQ", help="409 unless the run is at this revision")  # fmt: skip
        p.set_defaults(runs_fn=_action(name))

    p = sub.add_parser("recreate", help="recreate a finished run (keeps successful tasks)")
    p.add_argument("run_id")
    p.add_argument("--from-start", action="store_true", help="renew every task")
    p.add_argument("--env", dest="environment", action="append", metavar="KEY=VALUE")
    p.set_defaults(runs_fn=_recreate)

    for action in sub.choices.values():
        action.add_argument("--json", action="store_true", help="print JSON instead of a table")
        (flags or _own_flags)(action)
    runs.set_defaults(func=run_command, runs_target=target or _own_target)
    return sub


def run_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the parsed ``runs`` subcommand; 0 on success, 1 on an API error (message printed)."""
    args.out = out or sys.stdout
    args.target = args.runs_target(args)
    try:
        with Client(args.target.url, token=args.target.token or None) as client:
            args.runs_fn(client, args)
    except ApiError as exc:
        print(f"error ({exc.status}): {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
