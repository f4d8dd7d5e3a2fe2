"""Upcasters: pure functions that turn the data of (type, version) into the data of version + 1.

Decoding applies them in a loop until the type's current version (pyeventsourcing's upcasting),
so the reducer and every consumer only ever see current payloads. Every type is still at version
1, so the table is empty; when a payload changes, bump ``CURRENT_VERSIONS`` in
``events.catalogue``, add ``UPCASTERS[(type, old_version)]`` here and a golden sample of the old
version under ``tests/golden/events/``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from events.catalogue import CURRENT_VERSIONS, EventType
from events.errors import DecodeError, DecodeReason

__all__ = ["UPCASTERS", "Upcaster", "upcast"]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

#: (type, version) -> function from that version's data to version + 1's data.
UPCASTERS: Mapping[tuple[EventType, int], Upcaster] = {}


def upcast(
    kind: EventType,
    version: int,
    data: dict[str, Any],
    *,
    upcasters: Mapping[tuple[EventType, int], Upcaster] = UPCASTERS,
    current: Mapping[EventType, int] = CURRENT_VERSIONS,
) -> dict[str, Any]:
    """``data`` of ``kind`` at ``version`` brought to the current version.

    Raises ``DecodeError(UNSUPPORTED_VERSION)`` for a version newer than the current one or one
    with no upcaster path (both are routed to the dead letters with their bytes).
    """
    target = current[kind]
    if version > target or version < 1:
        raise DecodeError(
            DecodeReason.UNSUPPORTED_VERSION, f"{kind} v{version} (this build reads v{target})"
        )
    while version < target:
        step = upcasters.get((kind, version))
        if step is None:
            raise DecodeError(
                DecodeReason.UNSUPPORTED_VERSION, f"no upcaster for {kind} v{version}"
            )
        data = step(data)
        version += 1
    return data
