"""Fault tests (issue 8): the report table and which faults run by default.

Every fault test records one row per fault through the ``fault_report`` fixture *before* it
asserts, so a failing fault still shows its figures. ``pytest_terminal_summary`` prints the table
(fault, events, recovery time, lost, duplicated, verdict) at the end of the session, and writes
it to ``$RUNSTREAM_FAULTS_REPORT`` when that variable names a file.

The fast subset runs on every ``make test``; faults marked ``slow`` (they restart the shared
broker or etcd, or take a minute) are deselected unless ``RUNSTREAM_FAULTS=all`` (``make faults``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.faults.checks import FaultRow

HERE = Path(__file__).resolve().parent
_ROWS: list[FaultRow] = []


def _in_faults(item: pytest.Item) -> bool:
    return HERE in Path(str(item.path)).resolve().parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("RUNSTREAM_FAULTS", "").lower() == "all":
        return
    # Deselected, not skipped: a skip in CI would read as a missing service.
    slow = [i for i in items if _in_faults(i) and "slow" in i.keywords]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [i for i in items if i not in slow]


@pytest.fixture
def fault_report() -> Callable[[FaultRow], None]:
    """``fault_report(row)`` adds a row to the table printed at the end of the session."""
    return _ROWS.append


def render_table(rows: list[FaultRow]) -> str:
    head = ("fault", "events", "recovery s", "lost", "duplicated", "verdict", "how")
    body = [
        (
            r.fault,
            str(r.events),
            "-" if r.recovery_s is None else f"{r.recovery_s:.1f}",
            str(r.lost),
            str(r.duplicated),
            r.verdict,
            r.note,
        )
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    line = "+".join("-" * (w + 2) for w in widths)

    def fmt(cells: tuple[str, ...]) -> str:
        return "|".join(f" {c:<{w}} " for c, w in zip(cells, widths, strict=True))

    return "\n".join([fmt(head), line, *(fmt(b) for b in body)])


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _ROWS:
        return
    table = render_table(_ROWS)
    terminalreporter.section("runstream faults")
    terminalreporter.write_line(table)
    target = os.environ.get("RUNSTREAM_FAULTS_REPORT")
    if target:
        Path(target).write_text(table + "\n")
