"""Response bodies: runs, configs and index entries as JSON-ready dicts, and JSON responses.

The run and config forms are the stored forms of ``events.state`` (tasks as arrays, in submission
order), so the API and the data files agree on one shape; ``seq`` is the run's revision (the
sequence number of its last phase or result change, also sent as the ``ETag``).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from events import RunState
from events.state import state_to_dict
from indexer import Page

__all__ = ["etag", "json_response", "page_view", "run_view"]


def run_view(state: RunState) -> dict[str, Any]:
    """``{"run", "run_config", "seq"}`` of a run state."""
    d = state_to_dict(state)
    return {"run": d["run"], "run_config": d["config"], "seq": state.seq}


def page_view(page: Page) -> dict[str, Any]:
    """``{"runs": [{id, group, phase, result}], "next_cursor"}`` of an index page."""
    runs = [
        {"id": e.id_text, "group": e.group, "phase": e.phase.value, "result": e.result.value}
        for e in page.runs
    ]
    return {"runs": runs, "next_cursor": page.next_cursor}


def etag(state: RunState) -> str:
    return f'"{state.seq}"'


def json_response(
    body: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A response with ``body`` encoded by orjson (``Content-Type: application/json``)."""
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )
