"""A run's history: the shape of ``GET /api/v1/runs/{run_id}/history``, declared once.

Every event the run's owner judged for the run, in log order, with what became of it: ``applied``,
``duplicate`` (an event id applied before: nothing changed) or ``refused`` (the reducer's reason,
or "run is final"). Events for a run id that never existed are not anyone's history: they are
refused and counted only (in ``runstream_events_total{outcome="rejected"}``, a label value kept
for the dashboards that use it). The worker records these entries with
the run's state in every checkpoint (``partition.history``), so they survive restarts and a replay
rebuilds them from the log.

``offset`` and ``index`` say where the event is in ``runs.events``: the record's offset in the
run's partition and the event's position inside that record (a commit holds several events), so
``runstream inspect`` or any Kafka tool finds the full event.
"""

from __future__ import annotations

from typing import Any

import msgspec

from events.model import Shape
from partition.history import HistoryEntry

__all__ = ["History", "history_paths"]


class History(Shape):
    run_id: str
    events: list[HistoryEntry]


def history_paths(errors: dict[str, Any], run_id: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI path item of the history route; ``errors``: status → response object."""
    _, components = msgspec.json.schema_components([History], ref_template="{name}")
    inline = {
        name: {k: v for k, v in comp.items() if k != "title"} for name, comp in components.items()
    }
    body = _inline(inline["History"], inline)
    return {
        "/api/v1/runs/{run_id}/history": {
            "get": {
                "operationId": "runHistory",
                "summary": "every event applied to or refused for the run, in log order",
                "security": [{"bearer": []}, {}],
                "parameters": [run_id],
                "responses": {
                    "200": {
                        "description": "the run's history, from its owner",
                        "content": {"application/json": {"schema": body}},
                    },
                    **errors,
                },
            }
        }
    }


def _inline(schema: Any, components: dict[str, Any]) -> Any:
    """``schema`` with every ``$ref`` to ``components`` replaced by the component itself."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref in components:
            return _inline(components[ref], components)
        return {k: _inline(v, components) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_inline(v, components) for v in schema]
    return schema
