"""JSON Schemas of the wire shapes, generated from the Structs (never a second hand-written copy).

:func:`json_schemas` gives one JSON Schema (draft 2020-12) per file of ``docs/schemas``:

* ``<type>.v<version>.json``: the envelope of one event type at its current version;
* ``event.json``: any event (the tagged union on ``type``); ``record.json``: what one Kafka record
  of ``runs.events`` holds, an event or a commit (a non-empty JSON array of events);
* ``run-request.json``, ``setup-error-report.json``, ``request-reply.json``: the creation requests
  and their replies (``events.requests``);
* ``heartbeat.json``: an executor's heartbeat on ``runs.heartbeats`` (``events.executors``).

A schema file of an older version is never rewritten: it describes what old records hold (the
codec upcasts them). :func:`dumps` is the one byte form, so a checked-in copy compares exactly.
``agents.asyncapi`` builds the AsyncAPI document of the topics with :func:`components`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import orjson

from events.catalogue import CURRENT_VERSIONS, EVENT_TYPES, AnyEvent, EventType
from events.codec import Commit
from events.executors import Heartbeat
from events.requests import Refusal, RequestReply, RunRequest, SetupErrorReport

__all__ = ["DIALECT", "components", "dumps", "event_schema_name", "json_schemas", "wire_types"]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_REF = "#/$defs/{name}"


def event_schema_name(kind: EventType, version: int) -> str:
    """File name of the schema of ``kind`` at ``version``: ``run.created.v1.json``."""
    return f"{kind.value}.v{version}.json"


def _documents() -> dict[str, tuple[Any, str]]:
    """File name → (type, title) of every schema file, current versions only."""
    docs: dict[str, tuple[Any, str]] = {
        event_schema_name(kind, v): (cls, f"{kind.value} v{v}")
        for kind, cls in EVENT_TYPES.items()
        if (v := CURRENT_VERSIONS[kind])
    }
    docs["event.json"] = (AnyEvent, "any runstream event (an envelope, tagged on type)")
    docs["record.json"] = (
        Commit | AnyEvent,
        "one Kafka record of runs.events: an event, or a commit (a JSON array of events)",
    )
    docs["run-request.json"] = (RunRequest, "a creation request on runs.requests")
    docs["setup-error-report.json"] = (SetupErrorReport, "a report on runs.setup-errors")
    docs["request-reply.json"] = (RequestReply, "a reply on runs.replies")
    docs["heartbeat.json"] = (Heartbeat, "an executor's heartbeat on runs.heartbeats")
    docs["refusal.json"] = (Refusal, "the answer to a refused event on runs.refusals")
    return docs


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name → a self-contained JSON Schema (its definitions under ``$defs``)."""
    out: dict[str, dict[str, Any]] = {}
    for name, (tp, title) in sorted(_documents().items()):
        (root,), defs = msgspec.json.schema_components([tp], ref_template=_REF)
        out[name] = {"$schema": DIALECT, "title": title, **root, "$defs": _sorted(defs)}
    return out


def wire_types() -> dict[str, Any]:
    """Schema file name → the type it describes (what :func:`json_schemas` writes)."""
    return {name: tp for name, (tp, _) in _documents().items()}


def components(
    types: Mapping[str, Any], ref_template: str
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(name → schema of ``types[name]``, the shared schema components they reference), with
    references written by ``ref_template`` (AsyncAPI: ``#/components/schemas/{name}``)."""
    names = list(types)
    roots, defs = msgspec.json.schema_components(
        [types[n] for n in names], ref_template=ref_template
    )
    return dict(zip(names, roots, strict=True)), _sorted(defs)


def _sorted(defs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: defs[k] for k in sorted(defs)}


def dumps(doc: Mapping[str, Any]) -> bytes:
    """The one byte form of a generated document: indented, keys in their generated order, a
    final newline (what ``docs/`` holds)."""
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
