"""Pure checkpoint planning: which data files a set of changes touches, and the merge.

Changes are assigned to files the way Agola's ``actionGroups`` did: an id goes to the first
file whose ``last_id`` is ≥ the id, or to the last file when it is past every file. Files that
receive no change are carried over untouched; each touched file is merged and re-split.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from datamanager.manifest import FileRef

__all__ = ["Assignment", "Changes", "assign", "combine", "merge_entries"]

# A change: the new value, or None for a delete.
Changes = Mapping[str, bytes | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    """``groups[i]`` are the changes for ``files[i]``; ``fresh`` the changes when there is no file."""

    groups: dict[int, dict[str, bytes | None]]
    fresh: dict[str, bytes | None]


def assign(files: Sequence[FileRef], changes: Changes) -> Assignment:
    """Group ``changes`` by the file they fall into (see module docstring)."""
    if not files:
        return Assignment(groups={}, fresh=dict(changes))
    lasts = [f.last_id for f in files]
    groups: dict[int, dict[str, bytes | None]] = {}
    for entry_id, value in changes.items():
        i = min(bisect.bisect_left(lasts, entry_id), len(files) - 1)
        groups.setdefault(i, {})[entry_id] = value
    return Assignment(groups=groups, fresh={})


def merge_entries(
    old: Iterable[tuple[str, bytes]], changes: Mapping[str, bytes | None]
) -> list[tuple[str, bytes]]:
    """``old`` (sorted) with ``changes`` applied: puts replace or insert, deletes drop
    (a delete of a missing id is a no-op). The result is sorted by id."""
    merged = dict(old)
    for entry_id, value in changes.items():
        if value is None:
            merged.pop(entry_id, None)
        else:
            merged[entry_id] = value
    return sorted(merged.items())


def combine(
    puts: Mapping[str, Mapping[str, bytes]], deletes: Mapping[str, Iterable[str]]
) -> dict[str, dict[str, bytes | None]]:
    """One change map per datatype. Raises ``ValueError`` when an id is both put and deleted
    (the caller must say which one wins)."""
    out: dict[str, dict[str, bytes | None]] = {}
    for datatype, entries in puts.items():
        out.setdefault(datatype, {}).update(entries)
    for datatype, ids in deletes.items():
        target = out.setdefault(datatype, {})
        for entry_id in ids:
            if target.get(entry_id) is not None:
                raise ValueError(f"{datatype} {entry_id!r} is both put and deleted")
            target[entry_id] = None
    return {dt: changes for dt, changes in out.items() if changes}
