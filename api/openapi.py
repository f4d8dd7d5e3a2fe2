"""The OpenAPI 3.1 document of the API, served at ``/api/v1/openapi.json``.

Written by hand next to the routes; ``tests/unit/test_api_openapi.py`` keeps the two in step
(every route documented, every documented operation routed) and fuzzes the service from it.
"""

from __future__ import annotations

from typing import Any

from api.console import console_paths
from api.history import history_paths
from indexer import DEFAULT_LIMIT, MAX_LIMIT

__all__ = ["openapi_document"]

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_NAME = {"type": "string", "minLength": 1}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_E400 = _error("bad request: a malformed body or parameter, or a refusal (the message says why)")
_E401 = _error("a request without the configured API token")
_E404 = _error("unknown run or task")
_E409 = _error("If-Match named a revision the run is no longer at (a concurrent change won)")
_E413 = _error(
    "request body above the configured size, or the event it makes above what the log accepts "
    "(refused before anything is appended)"
)
_E503 = {
    "description": "no settled owner for the run's partition right now (a rebalance, the owner "
    "still loading), or a write whose apply did not come in time (read the run); retry after "
    "`Retry-After` seconds",
    "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
    "content": {"application/json": {"schema": _ref("Error")}},
}
_E500 = _error('internal failure; the message is always "internal server error"')
_RUN_ID = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]{16}$"},
    "description": "run id: 16 decimal digits",
}
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": '^"?[0-9]{1,10}"?$'},
    "description": 'Optional expected revision, `"<seq>"` as in the run\'s ETag (the `seq` of its '
    "last phase or result change): 409 if the run is no longer at that revision.",
}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[ -~]+$"},
    "description": "Optional client key: a retried request with the same key (same run, same "
    "action) is applied once, whichever API process it reaches.",
}
_AUTH: list[dict[str, list[str]]] = [{"bearer": []}, {}]
_HISTORY_ERRORS = {"400": _E400, "401": _E401, "404": _E404, "500": _E500, "503": _E503}


def _schemas() -> dict[str, Any]:
    task_def: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "name"],
        "properties": {
            "id": _NAME,
            "name": _NAME,
            "depends": {"type": "array", "items": _ref("TaskDepend")},
            "environment": _STR_MAP,
            "steps": {"type": "array", "items": {"type": "object"}},
            "ignore_failure": {"type": "boolean"},
            "needs_approval": {"type": "boolean"},
            "skip": {"type": "boolean"},
        },
    }
    config_task = {
        **task_def,
        "properties": {**task_def["properties"], "level": {"type": "integer"}},
    }
    setup_error = {
        "type": "object",
        "additionalProperties": False,
        "required": ["message"],
        "properties": {
            "message": {"type": "string"},
            "task_ids": {"type": "array", "items": _NAME},
        },
    }
    return {
        "Error": {
            "type": "object",
            "required": ["message"],
            "properties": {
                "message": {"type": "string"},
                "code": {"type": "string", "description": "a machine-readable reason, when any"},
            },
        },
        "TaskDepend": {
            "type": "object",
            "additionalProperties": False,
            "required": ["task_id"],
            "properties": {
                "task_id": _NAME,
                "conditions": {
                    "type": "array",
                    "items": {"enum": ["on_success", "on_failure", "on_skipped"]},
                },
            },
        },
        "TaskDefinition": task_def,
        "RunConfigTask": config_task,
        "SetupError": setup_error,
        "NewRun": {
            "type": "object",
            "additionalProperties": False,
            "required": ["group"],
            "description": "A new run from its tasks. `name` is required unless `setup_errors` "
            "is given (then it defaults to `Setup Error`). Inconsistent tasks, or setup errors, "
            "give a run in phase `setuperror` (still 201).",
            "properties": {
                "name": _NAME,
                "group": {"type": "string", "examples": ["/project/p1/branch/main"]},
                "tasks": {"type": "array", "items": _ref("TaskDefinition")},
                "environment": _STR_MAP,
                "static_environment": _STR_MAP,
                "annotations": _STR_MAP,
                "setup_errors": {
                    "type": "array",
                    "items": {"oneOf": [{"type": "string"}, _ref("SetupError")]},
                },
            },
        },
        "RecreateRun": {
            "type": "object",
            "additionalProperties": False,
            "required": ["run_id"],
            "description": "A new run made from a finished one: successful tasks are kept "
            "(all renewed with `from_start`), `environment` replaces the old one.",
            "properties": {
                "run_id": _RUN_ID["schema"],
                "from_start": {"type": "boolean"},
                "environment": _STR_MAP,
            },
        },
        "RunTask": {
            "type": "object",
            "required": ["id", "status", "skip", "waiting_approval", "approved", "annotations"],
            "properties": {
                "id": {"type": "string"},
                "status": {
                    "enum": [
                        "notstarted",
                        "skipped",
                        "cancelled",
                        "running",
                        "stopped",
                        "success",
                        "failed",
                    ]
                },
                "skip": {"type": "boolean"},
                "waiting_approval": {"type": "boolean"},
                "approved": {"type": "boolean"},
                "annotations": _STR_MAP,
                "start_time": {"type": ["integer", "null"]},
                "end_time": {"type": ["integer", "null"]},
            },
        },
        "Run": {
            "type": "object",
            "required": ["id", "name", "group", "counter", "phase", "result", "stop", "tasks"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "group": {"type": "string"},
                "counter": {"type": "integer"},
                "annotations": _STR_MAP,
                "phase": _ref("Phase"),
                "result": _ref("Result"),
                "stop": {"type": "boolean"},
                "tasks": {"type": "array", "items": _ref("RunTask")},
                "enqueue_time": {
                    "type": ["integer", "null"],
                    "description": "ms since the epoch",
                },
                "start_time": {"type": ["integer", "null"]},
                "end_time": {"type": ["integer", "null"]},
            },
        },
        "RunConfig": {
            "type": "object",
            "required": ["id", "name", "group", "setup_errors", "tasks"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "group": {"type": "string"},
                "setup_errors": {"type": "array", "items": _ref("SetupError")},
                "annotations": _STR_MAP,
                "static_environment": _STR_MAP,
                "environment": _STR_MAP,
                "tasks": {"type": "array", "items": _ref("RunConfigTask")},
                "recreated_from": {"type": ["string", "null"]},
            },
        },
        "RunWithConfig": {
            "type": "object",
            "required": ["run", "run_config", "seq"],
            "properties": {
                "run": _ref("Run"),
                "run_config": _ref("RunConfig"),
                "seq": {
                    "type": "integer",
                    "description": "revision: sequence number of the last phase or result change (also the ETag)",
                },
            },
        },
        "Phase": {"enum": ["setuperror", "queued", "cancelled", "running", "finished"]},
        "Result": {"enum": ["unknown", "stopped", "success", "failed"]},
        "RunEntry": {
            "type": "object",
            "required": ["id", "group", "phase", "result"],
            "properties": {
                "id": {"type": "string"},
                "group": {"type": "string"},
                "phase": _ref("Phase"),
                "result": _ref("Result"),
            },
        },
        "RunPage": {
            "type": "object",
            "required": ["runs", "next_cursor"],
            "properties": {
                "runs": {"type": "array", "items": _ref("RunEntry")},
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "null on the last page",
                },
            },
        },
        "RunActionRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["action_type"],
            "properties": {"action_type": {"enum": ["start", "cancel", "stop"]}},
        },
        "TaskActionRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["action_type"],
            "description": "`annotations` is required with `setannotations` (it replaces the "
            "task's annotations) and refused with `approve`.",
            "properties": {
                "action_type": {"enum": ["approve", "setannotations"]},
                "annotations": _STR_MAP,
            },
        },
    }


def _runs_paths() -> dict[str, Any]:
    list_params = [
        {
            "name": "group",
            "in": "query",
            "schema": {"type": "array", "items": {"type": "string"}},
            "style": "form",
            "explode": True,
            "description": "group prefix, repeatable; `/project/x` matches its branches, `/a/b` never `/a/bc`",
        },
        {
            "name": "phase",
            "in": "query",
            "schema": {"type": "array", "items": _ref("Phase")},
            "style": "form",
            "explode": True,
        },
        {
            "name": "result",
            "in": "query",
            "schema": {"type": "array", "items": _ref("Result")},
            "style": "form",
            "explode": True,
        },
        {
            "name": "lastrun",
            "in": "query",
            "schema": {"type": "boolean"},
            "description": "only the last run of each group",
        },
        {
            "name": "cursor",
            "in": "query",
            "schema": {"type": "string"},
            "description": "`next_cursor` of the previous page (same order)",
        },
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 0},
            "description": f"page size: 0 or absent = {DEFAULT_LIMIT}, above {MAX_LIMIT} = {MAX_LIMIT}",
        },
        {
            "name": "order",
            "in": "query",
            "schema": {"enum": ["asc", "desc"]},
            "description": "by run id; default desc (newest first)",
        },
    ]
    create_body = {"oneOf": [_ref("NewRun"), _ref("RecreateRun")]}
    return {
        "/api/v1/runs": {
            "get": {
                "operationId": "listRuns",
                "summary": "List runs from the index (keyset pagination)",
                "security": _AUTH,
                "parameters": list_params,
                "responses": {
                    "200": _json("one page", _ref("RunPage")),
                    "400": _E400,
                    "401": _E401,
                    "500": _E500,
                    "503": _E503,
                },
            },
            "post": {
                "operationId": "createRun",
                "summary": "Create a run, or recreate one (body with `run_id`)",
                "description": "Answered by the worker that owns the new run's partition once its "
                "materializer applied the creation: the run is then readable from every worker.",
                "security": _AUTH,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": create_body}},
                },
                "responses": {
                    "201": _json("the run and its config", _ref("RunWithConfig")),
                    "400": _E400,
                    "401": _E401,
                    "404": _error("recreation of an unknown run"),
                    "413": _E413,
                    "500": _E500,
                    "503": _E503,
                },
            },
        },
        "/api/v1/runs/{run_id}": {
            "get": {
                "operationId": "getRun",
                "summary": "A run and its config (ETag: its revision)",
                "description": "Answered from the live state of the run's owner: it shows every "
                "write that got a 2xx, from any worker.",
                "security": _AUTH,
                "parameters": [_RUN_ID],
                "responses": {
                    "200": _json("the run", _ref("RunWithConfig")),
                    "400": _E400,
                    "401": _E401,
                    "404": _E404,
                    "500": _E500,
                    "503": _E503,
                },
            }
        },
        "/api/v1/runs/{run_id}/actions": {
            "put": {
                "operationId": "runAction",
                "summary": "start (queued → running), cancel (queued), stop (running)",
                "security": _AUTH,
                "parameters": [_RUN_ID, _IF_MATCH, _IDEMPOTENCY_KEY],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("RunActionRequest")}},
                },
                "responses": {
                    "204": {"description": "appended to the log and applied by the run's owner"},
                    "400": _E400,
                    "401": _E401,
                    "404": _E404,
                    "409": _E409,
                    "413": _E413,
                    "500": _E500,
                    "503": _E503,
                },
            }
        },
        "/api/v1/runs/{run_id}/tasks/{task_id}/actions": {
            "put": {
                "operationId": "taskAction",
                "summary": "approve a task waiting for approval, or set its annotations",
                "security": _AUTH,
                "parameters": [
                    _RUN_ID,
                    {
                        "name": "task_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    _IF_MATCH,
                    _IDEMPOTENCY_KEY,
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("TaskActionRequest")}},
                },
                "responses": {
                    "204": {"description": "appended to the log and applied by the run's owner"},
                    "400": _E400,
                    "401": _E401,
                    "404": _E404,
                    "409": _E409,
                    "413": _E413,
                    "500": _E500,
                    "503": _E503,
                },
            }
        },
        "/api/v1/runs/events": {
            "get": {
                "operationId": "runEvents",
                "security": _AUTH,
                "summary": "Phase changes as server-sent events",
                "description": "Frames `id: <cursor>` + `data: <run.phase_changed JSON>`; comment "
                "lines `: keepalive` as heartbeats. Resume with `after` or `Last-Event-ID`: "
                "every later event exactly once.",
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "cursor of the last event seen",
                    },
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "the stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "400": _error("malformed cursor"),
                    "401": _E401,
                    "410": _error(
                        "cursor older than what the log retains: start again without one"
                    ),
                    "500": _E500,
                    "503": _E503,
                },
            }
        },
    }


def _service_paths() -> dict[str, Any]:
    return {
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": _json("OpenAPI 3.1", {"type": "object"})},
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Ready once the agents caught up with the log",
                "responses": {
                    "200": _json(
                        "ready", {"type": "object", "properties": {"status": {"const": "ok"}}}
                    ),
                    "503": _error("not ready yet"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }


def openapi_document() -> dict[str, Any]:
    """The whole document (a fresh dict each call)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "runstream",
            "version": "1",
            "description": 'The run service. Every error body is `{"message": ...}`; a 500 '
            'always says "internal server error". When an API token is configured, every request '
            "but /healthz and /metrics needs `Authorization: Bearer <token>`. Any worker answers "
            "any request: a request about one run is decided by the worker owning the run's "
            "partition, and relayed there.",
        },
        "paths": {
            **_runs_paths(),
            **history_paths(_HISTORY_ERRORS, _RUN_ID),
            **_service_paths(),
            **console_paths(),
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
