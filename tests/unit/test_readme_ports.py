"""The README's table of the local stack's ports names every port variable deploy/local reads, with
its default, and `deploy/local ports` (no service needed) lists exactly those ports, moved ones too."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "deploy" / "local"
README = ROOT / "README.md"

# KAFKA_PORT="${RUNSTREAM_KAFKA_PORT:-9092}": a variable read, with its default
READS = re.compile(r"\$\{(RUNSTREAM_[A-Z0-9_]*PORT):-(\d+)\}")
NAMED = re.compile(r"\bRUNSTREAM_[A-Z0-9_]*PORT\b")


def _read_by_local() -> dict[str, int]:
    """Each port variable deploy/local reads, with its default."""
    return {name: int(default) for name, default in READS.findall(LOCAL.read_text())}


def _readme_table() -> list[tuple[list[int], str]]:
    """The rows of the README's `| port | variable | …` table: (ports, variable)."""
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| port | variable |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        ports, variable = (cell.strip() for cell in line.strip("|").split("|")[:2])
        rows.append(([int(p) for p in re.findall(r"\d+", ports)], variable.strip("`")))
    return rows


def _ports(env: dict[str, str], state: Path) -> list[tuple[int, str]]:
    """What `deploy/local ports` prints: (port, variable) per line."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    proc = subprocess.run(
        [str(LOCAL), "ports"],
        env={**clean, **env, "RUNSTREAM_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    out = []
    for line in proc.stdout.splitlines():
        port, variable, _what = line.split("\t")
        out.append((int(port), variable))
    return out


def test_every_port_variable_of_deploy_local_is_in_the_readme_table() -> None:
    reads = _read_by_local()
    assert {"RUNSTREAM_KAFKA_PORT", "RUNSTREAM_S3_ADMIN_PORT"} <= reads.keys()
    assert set(NAMED.findall(LOCAL.read_text())) == reads.keys(), "a variable named, never read"
    table = {variable: ports for ports, variable in _readme_table()}
    assert sorted(table) == sorted(reads), "README's ports table and deploy/local differ"
    for variable, default in reads.items():
        assert table[variable][0] == default, f"{variable}: README says {table[variable]}"


def test_deploy_local_ports_lists_the_readme_table(tmp_path: Path) -> None:
    listed = _ports({}, tmp_path)
    table = [(port, variable) for ports, variable in _readme_table() for port in ports]
    assert sorted(listed) == sorted(table)


def test_moved_ports_leave_no_default_port(tmp_path: Path) -> None:
    reads = _read_by_local()
    moved = {name: str(30000 + i * 20) for i, name in enumerate(sorted(reads))}
    listed = _ports(moved, tmp_path)
    assert {variable for _, variable in listed} == reads.keys()
    for port, variable in listed:
        assert port in (int(moved[variable]), int(moved[variable]) + 10000), (port, variable)
    defaults = {port for ports, _ in _readme_table() for port in ports}
    assert not defaults & {port for port, _ in listed}
