"""The OpenAPI 3.1 document of the API, served at ``/api/v1/openapi.json``.

The paths are written here, next to the routes; every schema comes from the Structs the server
decodes and renders with (``api.bodies``, ``api.views``, and through them ``events.model``), by
``msgspec.json.schema_components``. ``tests/unit/test_api_openapi.py`` keeps the document and
the routes in step and fuzzes the service from it (schemathesis, every check).
"""

from __future__ import annotations

from typing import Any

import msgspec

from api.bodies import (
    REQUEST_TYPES,
    HeartbeatRequest,
    IdempotencyKey,
    IfMatch,
    ListQuery,
    NewRun,
    RecreateRun,
    StuckQuery,
    TaskActionRequest,
)
from api.console import console_paths
from api.dlq import dlq_paths
from api.history import history_paths
from api.scopes import required_scope
from api.views import RESPONSE_TYPES
from events.executors import ExecutorId
from events.model import Name, RunId

__all__ = ["openapi_document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_E400 = _error("bad request: a malformed body or parameter, or a refusal (the message says why)")
_E401 = _error("no valid API token: `Authorization: Bearer <token>` missing or unknown")
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
_E404_DLQ = _error("no such dead letter")
_E503_DLQ = _error("this worker does not serve dead letters, or Kafka did not answer; retry")
_REF = "#/components/schemas/{name}"
#: The query rules of every route with query parameters (``api.bodies.query_values``).
_STRICT = (
    "Strict query: a parameter this route does not know, one given twice that does not "
    "repeat, and an integer in any form but decimal digits (`1e0`, `2.0`, `+3`, ` 3`) are "
    "400 naming the parameter."
)
_RUN_ID = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "schema": msgspec.json.schema(RunId),
}
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "schema": msgspec.json.schema(IfMatch),
    "description": 'Optional expected revision, `"<seq>"` as in the run\'s ETag (the `seq` of its '
    "last phase or result change): 409 if the run is no longer at that revision.",
}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": msgspec.json.schema(IdempotencyKey),
    "description": "Optional client key: a retried request with the same key (same run, same "
    "action) is applied once, whichever API process it reaches.",
}
_AUTH: list[dict[str, list[str]]] = [{"bearer": []}, {}]
_HISTORY_ERRORS = {"400": _E400, "401": _E401, "404": _E404, "500": _E500, "503": _E503}


def _components() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every request and response schema, generated, and the ``GET /runs`` query parameters
    (the fields of ``ListQuery``)."""
    types = (*REQUEST_TYPES, *RESPONSE_TYPES)
    refs, schemas = msgspec.json.schema_components(types, ref_template=_REF)
    by_type = dict(zip(types, refs, strict=True))
    # Unions have no name of their own: name them, so each body is one reference.
    schemas["CreateRun"] = {"oneOf": [by_type[NewRun], by_type[RecreateRun]]}
    schemas["TaskActionRequest"] = by_type[TaskActionRequest]
    for cls in types:
        rules = getattr(cls, "JSON_SCHEMA_RULES", None)
        if isinstance(cls, type) and rules is not None:  # what __post_init__ checks beyond
            schemas[cls.__name__].update(rules)  # the fields
    query = schemas.pop(ListQuery.__name__)
    return schemas, [_query_parameter(n, s) for n, s in query["properties"].items()]


def _query_parameter(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    # A query parameter is absent or a string, never null: drop the null a default of None adds.
    options = [s for s in schema.get("anyOf", ()) if s != {"type": "null"}]
    if len(options) == 1:
        schema = {k: v for k, v in schema.items() if k not in ("anyOf", "default")} | options[0]
    param: dict[str, Any] = {"name": name, "in": "query", "schema": schema}
    if "description" in schema:
        param["description"] = schema["description"]
    if schema.get("type") == "array":
        param.update(style="form", explode=True)
    return param


def _runs_paths(list_params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "/api/v1/runs": {
            "get": {
                "operationId": "listRuns",
                "summary": "List runs from the index (keyset pagination)",
                "description": f"{_STRICT} `group`, `phase` and `result` repeat (a run "
                "matches any of their values); every other parameter is given at most once.",
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
                    "content": {"application/json": {"schema": _ref("CreateRun")}},
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
                        "schema": msgspec.json.schema(Name),
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
        "/api/v1/runs/events": _event_stream(
            "runEvents",
            "Phase changes as server-sent events",
            "`data: <run.phase_changed JSON>` (from `runs.phases`; never a `task.ready`)",
        ),
        "/api/v1/runs/tasks/events": _event_stream(
            "readyTaskEvents",
            "Ready tasks as server-sent events",
            "`data: <task.ready JSON>` (from `runs.tasks`: what executors follow; cursors of "
            "its own, not those of `/api/v1/runs/events`)",
        ),
    }


def _event_stream(operation_id: str, summary: str, data: str) -> dict[str, Any]:
    """A ``GET`` of server-sent events (``api.sse``) whose frames carry ``data``."""
    return {
        "get": {
            "operationId": operation_id,
            "security": _AUTH,
            "summary": summary,
            "description": f"Frames `id: <cursor>` + {data}; comment lines `: keepalive` as "
            "heartbeats. Resume with `after` or `Last-Event-ID`: every later event exactly "
            f"once. {_STRICT}",
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
                "400": _error("malformed cursor, or a query parameter unknown or repeated"),
                "401": _E401,
                "410": _error("cursor older than what the log retains: start again without one"),
                "500": _E500,
                "503": _E503,
            },
        }
    }


_EXECUTOR_ID = {
    "name": "executor_id",
    "in": "path",
    "required": True,
    "schema": msgspec.json.schema(ExecutorId),
    "description": "the executor's id (percent-encoded in the path where needed)",
}
_E503_EXECUTORS = {
    **_E503,
    "description": "Kafka did not acknowledge the heartbeat in time (or the worker is "
    "stopping); retry after `Retry-After` seconds",
}


def _executor_paths() -> dict[str, Any]:
    return {
        "/api/v1/executors/{executor_id}/heartbeat": {
            "post": {
                "operationId": "executorHeartbeat",
                "summary": "An executor is alive: its claims hold for `lease_ms` more",
                "description": "Appended to the heartbeats topic by whichever worker gets it "
                "(every worker hears every heartbeat); send one every third of the lease. The "
                "body is optional: without one the lease is the default "
                f"({HeartbeatRequest().lease_ms} ms).",
                "security": _AUTH,
                "parameters": [_EXECUTOR_ID],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("HeartbeatRequest")}},
                },
                "responses": {
                    "204": {"description": "Kafka acknowledged the heartbeat"},
                    "400": _E400,
                    "401": _E401,
                    "413": _E413,
                    "500": _E500,
                    "503": _E503_EXECUTORS,
                },
            }
        },
        "/api/v1/executors/{executor_id}": {
            "get": {
                "operationId": "getExecutor",
                "summary": "The last heartbeat of an executor this worker heard",
                "description": "From this worker's own table (every worker hears every "
                "heartbeat, a few ms after it was appended).",
                "security": _AUTH,
                "parameters": [_EXECUTOR_ID],
                "responses": {
                    "200": _json("its last heartbeat", _ref("ExecutorSeen")),
                    "400": _E400,
                    "401": _E401,
                    "404": _error("no heartbeat of this executor heard in the last hour"),
                    "500": _E500,
                    "503": _error("this worker does not serve executors"),
                },
            }
        },
    }


_E409_TASK = _error(
    "the task's state conflicts with the request; `code`: `task_held` (another executor holds "
    "the task: the message names it, e.g. \"task 'build' is held by executor runner-7\"), "
    "`lease_lapsed` (this executor lost the task when its lease lapsed), `task_transition` (the "
    "task ended, or is past that status)"
)
_TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "schema": msgspec.json.schema(Name),
}
_KEYED = {
    **_IDEMPOTENCY_KEY,
    "description": "Optional client key: a retried request with the same key and the same body "
    "(same run, task and executor) is the same event, applied once, whichever worker it "
    "reaches; send the same key when retrying. Without one, each request is a new event.",
}


#: ``older_than`` of ``GET /stuck``, from the Struct the server converts the query with.
_OLDER_THAN: dict[str, Any] = msgspec.json.schema(StuckQuery)["$defs"]["StuckQuery"]["properties"][
    "older_than"
]


def _claim_paths() -> dict[str, Any]:
    """Executors claim tasks and report their status over HTTP (issue 20), and what is stuck."""
    return {
        "/api/v1/runs/{run_id}/tasks/{task_id}/claim": {
            "post": {
                "operationId": "claimTask",
                "summary": "An executor claims a ready task (the first claim wins)",
                "description": "Appends `task.claimed`; answered once the run's owner applied it. "
                "The holder's claim again renews its lease (200); another executor's is refused "
                "(409 `task_held`, naming the holder). The claim holds while the executor's "
                "heartbeats come (`POST /api/v1/executors/{executor_id}/heartbeat`).",
                "security": _AUTH,
                "parameters": [_RUN_ID, _TASK_ID, _KEYED],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ClaimTask")}},
                },
                "responses": {
                    "200": _json("the claim, applied by the run's owner", _ref("TaskClaim")),
                    "400": _E400,
                    "401": _E401,
                    "404": _E404,
                    "409": _E409_TASK,
                    "413": _E413,
                    "500": _E500,
                    "503": _E503,
                },
            }
        },
        "/api/v1/runs/{run_id}/tasks/{task_id}/status": {
            "put": {
                "operationId": "reportTaskStatus",
                "summary": "An executor reports a task's status (running, success, failed, ...)",
                "description": "Appends `task.status_changed`; answered once the run's owner "
                "applied it. With `executor_id`: refused (409) for a task another executor holds "
                "or that this executor lost; a report for a ready task nobody holds claims it. "
                "Without: accepted only for a task nobody holds.",
                "security": _AUTH,
                "parameters": [_RUN_ID, _TASK_ID, _KEYED],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ReportStatus")}},
                },
                "responses": {
                    "204": {"description": "appended to the log and applied by the run's owner"},
                    "400": _E400,
                    "401": _E401,
                    "404": _E404,
                    "409": _E409_TASK,
                    "413": _E413,
                    "500": _E500,
                    "503": _E503,
                },
            }
        },
        "/api/v1/stuck": {
            "get": {
                "operationId": "stuckRuns",
                "summary": "Active runs with no progress for longer than `older_than` seconds",
                "description": "From every worker's live state: the worker asked answers for its "
                "own partitions and asks every other worker for theirs. `partial` when a worker "
                f"did not answer (within 5 s) or a partition has no settled owner. {_STRICT}",
                "security": _AUTH,
                "parameters": [
                    {
                        "name": "older_than",
                        "in": "query",
                        "required": False,
                        "schema": _OLDER_THAN,
                        "description": _OLDER_THAN["description"],
                    }
                ],
                "responses": {
                    "200": _json("the stuck runs, oldest first", _ref("StuckRuns")),
                    "400": _E400,
                    "401": _E401,
                    "500": _E500,
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


_HTTP_METHODS = ("get", "put", "post", "delete", "patch")


def _with_scopes(doc: dict[str, Any]) -> dict[str, Any]:
    """Every ``/api/v1`` operation with the scope it needs (``api.scopes.ROUTE_SCOPES``) as its
    bearer role and ``x-runstream-scope``, and its 401, 403 (and 400 for unsigned
    ``X-Runstream-*`` headers) answers."""
    for path, item in doc["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for method, op in item.items():
            if method not in _HTTP_METHODS:
                continue
            scope = required_scope(method.upper(), path).value
            op["security"] = [{"bearer": [scope]}, {}]
            op["x-runstream-scope"] = scope
            responses = op.setdefault("responses", {})
            responses.setdefault("400", _error(_HOP_400))
            responses.setdefault("401", _E401)
            responses["403"] = _error(f"a token without the '{scope}' scope (the message names it)")
    return doc


_HOP_400 = "X-Runstream-* headers without the workers' signature (only workers set them)"


def openapi_document() -> dict[str, Any]:
    """The whole document (a fresh dict each call): every ``/api/v1`` operation names the
    scope it needs and documents its 401 and 403 (``api.scopes``)."""
    return _with_scopes(_document())


def _document() -> dict[str, Any]:
    schemas, list_params = _components()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "runstream",
            "version": "1",
            "description": 'The run service. Every error body is `{"message": ...}`; a 500 '
            'always says "internal server error". When API tokens are configured, every request '
            "but /healthz, /metrics and /ui needs `Authorization: Bearer <token>` (401) of a "
            "token holding the operation's scope (`x-runstream-scope`: read, write, execute or "
            "admin; 403 otherwise). `environment` values are shown to the execute scope only; "
            'every other caller gets each value as `"***"`. Any worker answers '
            "any request: a request about one run is decided by the worker owning the run's "
            "partition, and relayed there.",
        },
        "paths": {
            **_runs_paths(list_params),
            **history_paths(_HISTORY_ERRORS, _RUN_ID),
            **_claim_paths(),
            **_executor_paths(),
            **dlq_paths(
                {"400": _E400, "401": _E401, "404": _E404_DLQ, "500": _E500, "503": _E503_DLQ}
            ),
            **_service_paths(),
            **console_paths(),
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API token; its scopes (read, write, execute, admin) are "
                    "the roles an operation names",
                }
            },
        },
    }
