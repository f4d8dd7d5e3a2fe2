"""``runstream runs report``'s event id (issue 21): ``--event-id``, else derived from the run,
task, status, executor and the task's current attempt (read over the API), so a retried report
is the same event; random with a warning when the API cannot be read. And ``runs watch``'s
lines: a header, then each change's position (partition, offset) instead of the raw cursor."""

from __future__ import annotations

import argparse
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from agents.cli.main import _report_id, build_parser
from agents.cli.runs import (
    WATCH_HEADER,
    Target,
    _watch,
    current_attempt,
    event_position,
    report_event_id,
    task_attempt,
    watch_line,
)
from api.history import History
from api.views import RunConfigView, RunView, RunWithConfig
from api.wire import WatchEvent
from events import Event, Phase, PhaseChanged, PlannedTask, Result, RunTask, make_event
from partition.history import HistoryEntry, HistoryOutcome
from partition.placement import partition_for

RUN = "0000000000000042"


def _run(tasks: dict[str, int | None]) -> RunWithConfig:
    """A ``GET /runs/{id}`` answer whose tasks (id → attempt, None: the first) are not started."""
    shown = tuple(
        RunTask(id=t) if attempt is None else RunTask(id=t, attempt=attempt)
        for t, attempt in tasks.items()
    )
    planned = tuple(PlannedTask(id=t, name=t) for t in tasks)
    return RunWithConfig(
        run=RunView(id=RUN, name="r", group="/project/p", tasks=shown),
        run_config=RunConfigView(id=RUN, name="r", group="/project/p", tasks=planned),
        seq=1,
    )


# -- the derived id ------------------------------------------------------------------------------


def test_the_same_report_gives_the_same_id() -> None:
    a = report_event_id(RUN, "build", "running", "runner-7", 1)
    assert a == report_event_id(RUN, "build", "running", "runner-7", 1)
    assert a.startswith("report.")
    assert len(a) == len("report.") + 24


def test_the_attempt_and_every_other_input_change_it() -> None:
    base = (RUN, "build", "running", "runner-7", 1)
    ids = {report_event_id(*base)}
    for changed in [
        (RUN, "build", "running", "runner-7", 2),  # the task went back to ready: attempt 2
        ("0000000000000043", "build", "running", "runner-7", 1),
        (RUN, "test", "running", "runner-7", 1),
        (RUN, "build", "success", "runner-7", 1),
        (RUN, "build", "running", "runner-8", 1),
        (RUN, "build", "running", None, 1),
    ]:
        ids.add(report_event_id(*changed))  # type: ignore[arg-type]
    assert len(ids) == 7
    # No field can be shifted into its neighbour to make the same id.
    assert report_event_id(RUN, "a", "b", "c", 1) != report_event_id(RUN, "a\0b", "", "c", 1)


def test_the_attempt_comes_from_the_run_as_the_api_shows_it() -> None:
    body = _run({"build": 2, "test": None})
    assert task_attempt(body, "build") == 2
    assert task_attempt(body, "test") == 1  # no attempt shown: the first
    assert task_attempt(body, "deploy") == 1  # not in the run: the report will be refused
    assert task_attempt(_run({}), "build") == 1


# -- reading the attempt over the API ------------------------------------------------------------


class _Api(BaseHTTPRequestHandler):
    """``GET /api/v1/runs/<RUN>`` with a task at attempt 3; 404 for other runs; 401 without the
    token ``t`` when the test asks for one."""

    token = ""

    def do_GET(self) -> None:
        if self.token and self.headers.get("Authorization") != f"Bearer {self.token}":
            self._send(401, {"message": "missing or wrong API token"})
        elif self.path == f"/api/v1/runs/{RUN}":
            self._send(200, msgspec.to_builtins(_run({"build": 3, "test": None})))
        else:
            self._send(404, {"message": "run not found"})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        _Api.token = ""


def _closed_port() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    port = server.server_address[1]
    server.server_close()  # nothing listens there now
    return f"http://127.0.0.1:{port}"


def test_current_attempt_reads_the_run(api_url: str) -> None:
    assert current_attempt(api_url, "", RUN, "build") == 3
    assert current_attempt(api_url, "", RUN, "test") == 1
    assert current_attempt(api_url, "", "0000000000000001", "build") == 1  # 404: unknown run


def test_current_attempt_says_why_it_could_not_read(api_url: str) -> None:
    _Api.token = "t"
    why = current_attempt(api_url, "wrong", RUN, "build")
    assert isinstance(why, str)
    assert "token" in why
    assert current_attempt(api_url, "t", RUN, "build") == 3
    why = current_attempt(_closed_port(), "", RUN, "build", timeout=2.0)
    assert isinstance(why, str)


def _args(**kw: Any) -> argparse.Namespace:
    base = {"event_id": None, "task_id": "build", "executor": "runner-7"}
    return argparse.Namespace(**(base | kw))


def _settings(url: str) -> Any:
    return SimpleNamespace(url=url, api_token="")


def test_the_command_derives_the_id_from_the_attempt(api_url: str, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    got = _report_id(_settings(api_url), _args(), RUN, "running")
    assert got == report_event_id(RUN, "build", "running", "runner-7", 3)
    assert got == _report_id(_settings(api_url), _args(), RUN, "running")  # a retry: the same
    assert capsys.readouterr().err == ""


def test_a_given_event_id_wins(api_url: str) -> None:
    assert _report_id(_settings(api_url), _args(event_id="mine-1"), RUN, "running") == "mine-1"


def test_without_the_api_the_id_is_random_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    url = _closed_port()
    a = _report_id(_settings(url), _args(), RUN, "running")
    b = _report_id(_settings(url), _args(), RUN, "running")
    assert a != b
    assert len(a) == 32
    err = capsys.readouterr().err
    assert err.count("warning: could not read the task's attempt from the API") == 2
    assert "--event-id" in err


def test_the_help_says_how_the_id_is_made() -> None:
    parser = build_parser()
    runs = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("runs"))  # type: ignore[union-attr]  # fmt: skip
    report = runs._subparsers._group_actions[0].choices["report"]  # type: ignore[union-attr]
    text = " ".join(report.format_help().split())
    assert "derived from RUN, TASK, STATUS, --executor and the task's current attempt" in text
    assert "random, with a warning" in text
    args = parser.parse_args(["runs", "report", RUN, "build", "running", "--url", "http://x:1"])
    assert args.url == "http://x:1"
    assert args.event_id is None


# -- runs watch ----------------------------------------------------------------------------------


def _event(run_id: str, phase: str, group: str = "/project/p1/branch/main") -> Event:
    data = PhaseChanged(group=group, phase=Phase(phase), result=Result.UNKNOWN, seq=1)
    return make_event(data, id="x", run_id=run_id, at=1)


class _Client:
    def __init__(self, items: list[WatchEvent[Event]]) -> None:
        self.items = items
        self.after: str | None = "unset"

    def watch(self, after: str | None) -> Iterator[WatchEvent[Event]]:
        self.after = after
        yield from self.items


def _watch_args(**kw: Any) -> argparse.Namespace:
    base = {"after": None, "from_start": False, "count": None, "json": False, "out": io.StringIO(), "target": Target("http://x", partitions=4)}  # fmt: skip
    return argparse.Namespace(**(base | kw))


def test_watch_prints_a_header_then_positions() -> None:
    items = [
        WatchEvent(cursor="v1.0.0.1.0", event=_event("0000000000000001", "queued")),
        WatchEvent(cursor="v1.0.0.2.0", event=_event("0000000000000001", "running")),
        WatchEvent(
            cursor="v1.0.5.2.0", event=_event("0000000000000002", "queued", "/user/u/branch/a")
        ),
    ]
    args = _watch_args(from_start=True, count=3)
    client = _Client(items)
    _watch(client, args)  # type: ignore[arg-type]
    assert client.after == "v1.0.0.0.0"
    lines = args.out.getvalue().splitlines()
    assert lines[0].split() == list(WATCH_HEADER)
    rows = [line.split() for line in lines[1:]]
    assert rows == [
        ["2", "0", "0000000000000001", "queued", "unknown", "/project/p1/branch/main"],
        ["2", "1", "0000000000000001", "running", "unknown", "/project/p1/branch/main"],
        # offset 4 in partition 1: its next offset is 5
        ["1", "4", "0000000000000002", "queued", "unknown", "/user/u/branch/a"],
    ]
    # Columns line up under the header.
    assert all(line.index("0000000000") == lines[0].index("RUN") for line in lines[1:])


def test_watch_json_is_unchanged() -> None:
    items = [WatchEvent(cursor="v1.0.1", event=_event("0000000000000001", "queued"))]
    args = _watch_args(json=True)
    _watch(_Client(items), args)  # type: ignore[arg-type]
    assert [json.loads(line) for line in args.out.getvalue().splitlines()] == [
        {"cursor": "v1.0.1", "event": msgspec.to_builtins(items[0].event)}
    ]


def test_a_position_without_a_cursor_before_it_is_the_runs_partition() -> None:
    for run_id in ("0000000000000001", "0000000000000002", "0000000000000007"):
        p = partition_for(run_id, 4)
        cursor = ".".join(["v1", *(str(10 + i) for i in range(4))])
        assert event_position(cursor, None, run_id) == (p, 10 + p - 1)
    # Two partitions moved since the cursor before (a resumed stream): the run's partition.
    p = partition_for(RUN, 2)
    assert event_position("v1.3.3", "v1.1.1", RUN) == (p, 2)
    assert event_position("not-a-cursor", None, RUN) is None
    line = watch_line("not-a-cursor", None, _event(RUN, "queued"))
    assert line.split()[:3] == ["?", "?", RUN]


# -- the answer to a retried report --------------------------------------------------------------


class _History:
    """A client whose run history holds the first append of an id (applied) and a retry of it
    (a duplicate), further on in the log."""

    async def run_history(self, run_id: str) -> History:
        entry = {"event_id": "report.x", "type": "task.status_changed", "at": 1, "index": 0}
        return History(
            run_id=run_id,
            events=[
                HistoryEntry(**entry, offset=5, outcome=HistoryOutcome.APPLIED),  # type: ignore[arg-type]
                HistoryEntry(**entry, offset=9, outcome=HistoryOutcome.DUPLICATE),  # type: ignore[arg-type]
            ],
        )


async def test_a_retried_report_is_answered_from_its_own_append() -> None:
    from agents.cli.answers import _from_history

    client: Any = _History()
    first = await _from_history(client, RUN, "report.x", 0)
    assert first is not None
    assert first.outcome == "applied"
    retry = await _from_history(client, RUN, "report.x", 6)  # the log ended at 6 before it
    assert retry is not None
    assert retry.outcome == "duplicate"
    assert await _from_history(client, RUN, "report.x", 10) is None  # not judged yet
