"""The AsyncAPI 3.0 document of runstream's topics, generated from the Structs and the settings.

Every topic setting (``Settings.topic_*``) is a channel: its address, key, partitioner, headers
and payload schemas (``events.documents.components``, the same declarations the codec decodes
with). The worker serves the document of its own settings at ``/api/v1/asyncapi.json``; the one
of the default settings is checked in with the JSON Schemas. Regenerate both after changing a
shape, a topic or a header::

    .venv/bin/python -m agents.asyncapi --write docs

(``tests/unit/test_documents.py`` fails while a checked-in copy is out of step.)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from agents.config import Settings
from events.catalogue import EVENT_TYPES, EventType
from events.documents import components, dumps, json_schemas, wire_types
from partition.outbox import DEAD_LETTER_HEADERS

__all__ = ["CHANNELS", "asyncapi_document", "main", "write_documents"]

_REF = "#/components/schemas/{name}"
_KAFKA = "0.5.0"  # the Kafka bindings' version
MURMUR2 = (
    "murmur2 of the key bytes, as Kafka's default partitioner (Java clients' default; "
    "librdkafka: partitioner=murmur2_random)"
)


@dataclass(frozen=True, slots=True)
class Channel:
    """What the document says of one topic setting."""

    title: str
    description: str
    payload: str  # a name in the schemas of :func:`_payloads`
    key: str
    action: str  # "send": producers write it; "receive": producers read it
    partitioner: str = MURMUR2
    headers: Mapping[str, str] | None = None


#: Settings field → its channel. A topic setting missing here makes the document incomplete
#: (``tests/unit/test_documents.py`` says which).
CHANNELS: Mapping[str, Channel] = {
    "topic_events": Channel(
        "run events",
        "The log of runs: every fact and request about a run, the source of truth (kept whole). "
        "A record is one event or a commit (a JSON array of events of runs of this partition).",
        "record",
        "the run id (16 digits) of the record's events",
        "send",
    ),
    "topic_setup_errors": Channel(
        "setup-error reports",
        "A project's config did not parse: runstream creates a run in setuperror, allocates "
        "its id and replies on the replies topic.",
        "setup_error_report",
        "any (the report id is a good choice)",
        "send",
        partitioner="any",
    ),
    "topic_requests": Channel(
        "creation requests",
        "Create a run without a run id: runstream allocates one from its sequence, once per "
        "request id, appends the run.created and replies on the replies topic.",
        "run_request",
        "the request id",
        "send",
        partitioner="any",
    ),
    "topic_replies": Channel(
        "replies to creation requests",
        "One reply per request handled (at least once): the run id given, or why it was "
        "refused. Keyed by request id, so all replies to one request are in one partition.",
        "request_reply",
        "the request id",
        "receive",
    ),
    "topic_phases": Channel(
        "phase changes",
        "Every phase or result change of a run (run.phase_changed, seq +1 per run from 1), what "
        "the run index and the phase stream follow. One event per record, on the partition of "
        "the same number as the run's runs.events partition. Phase changes only: ready tasks "
        "are on the tasks topic (a log written before that topic existed also holds task.ready "
        "records here; skip them).",
        "phase_change",
        "the run id",
        "receive",
        partitioner="the partition number of the run's runs.events partition",
    ),
    "topic_tasks": Channel(
        "ready tasks",
        "Every task that becomes ready (task.ready, seq +1 per run from 1), what executors "
        "follow before they claim a task (task.claimed on the events topic). One event per "
        "record, on the partition of the same number as the run's runs.events partition. No "
        "order with the phases topic: only within each topic, per run.",
        "task_ready",
        "the run id",
        "receive",
        partitioner="the partition number of the run's runs.events partition",
    ),
    "topic_refusals": Channel(
        "answers to refused events",
        "One answer per event the owner of its run refused (at least once): the event id and "
        "type, the refusal code and reason, where the event was read. Keyed by run id, on the "
        "partition of the same number as the run's runs.events partition: a producer follows "
        "the partitions of its runs and matches the event ids it sent.",
        "refusal",
        "the run id",
        "receive",
        partitioner="the partition number of the run's runs.events partition",
    ),
    "topic_heartbeats": Channel(
        "executors' heartbeats",
        "Executor executor_id is alive and holds its claims for lease_ms from when a worker "
        "receives this (send one every lease_ms / 3). Not facts about a run: every worker reads "
        "every partition from its end, the partition owners release the tasks of an executor "
        "whose lease lapsed (task.released on the events topic). Compacted, kept one day.",
        "heartbeat",
        "the executor id (the same as the value's executor_id)",
        "send",
        partitioner="any",
    ),
    "topic_dlq": Channel(
        "dead letters",
        "Records runstream could not read: the original bytes and key, and headers saying why "
        "and where they came from. Events it read but refused are not here (see docs/events.md).",
        "dead_letter",
        "the source record's key (none if it had none)",
        "receive",
        partitioner="Kafka's default for the key",
        headers=DEAD_LETTER_HEADERS,
    ),
}


def _payloads() -> dict[str, Any]:
    wire = wire_types()
    return {
        "record": wire["record.json"],
        "setup_error_report": wire["setup-error-report.json"],
        "run_request": wire["run-request.json"],
        "request_reply": wire["request-reply.json"],
        "heartbeat": wire["heartbeat.json"],
        "refusal": wire["refusal.json"],
        "phase_change": EVENT_TYPES[EventType.PHASE_CHANGED],
        "task_ready": EVENT_TYPES[EventType.TASK_READY],
    }


def _message(name: str, ch: Channel, payload: Mapping[str, Any]) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "name": name,
        "title": ch.title,
        "contentType": "application/json",
        "payload": payload,
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": ch.key},
                "bindingVersion": _KAFKA,
            }
        },
    }
    if ch.headers is not None:
        msg["headers"] = {
            "type": "object",
            "properties": {k: {"type": "string", "description": v} for k, v in ch.headers.items()},
        }
    return msg


def asyncapi_document(settings: Settings | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the topics of ``settings`` (default settings when None)."""
    settings = settings or Settings()
    schemas, shared = components(_payloads(), _REF)
    schemas["dead_letter"] = {"description": "the source record's bytes, unchanged"}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for field in (f.name for f in fields(Settings) if f.name.startswith("topic_")):
        ch = CHANNELS.get(field)
        cid = field.removeprefix("topic_")
        address = getattr(settings, field)
        if ch is None:  # a topic this module does not describe yet
            channels[cid] = {"address": address, "description": "not described yet"}
            continue
        messages[cid] = _message(cid, ch, schemas[ch.payload])
        channels[cid] = {
            "address": address,
            "title": ch.title,
            "description": f"{ch.description} Partitioner: {ch.partitioner}.",
            "messages": {cid: {"$ref": f"#/components/messages/{cid}"}},
            "bindings": {
                "kafka": {
                    "topic": address,
                    "partitions": settings.partitions,
                    "bindingVersion": _KAFKA,
                }
            },
            "x-runstream-partitioner": ch.partitioner,
        }
        operations[f"{ch.action}_{cid}"] = {
            "action": ch.action,
            "channel": {"$ref": f"#/channels/{cid}"},
            "messages": [{"$ref": f"#/channels/{cid}/messages/{cid}"}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "runstream topics",
            "version": "1",
            "description": "What a producer in any language reads and writes (docs/events.md). "
            "Operations are written from a producer's point of view.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {"host": settings.kafka.split(",")[0], "protocol": "kafka"},
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": shared},
    }


def write_documents(folder: Path) -> list[Path]:
    """Write ``asyncapi.json`` (default settings) and ``schemas/*.json`` under ``folder``."""
    written = [folder / "asyncapi.json"]
    written[0].write_bytes(dumps(asyncapi_document()))
    (folder / "schemas").mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        path = folder / "schemas" / name
        path.write_bytes(dumps(schema))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.asyncapi", description=__doc__)
    parser.add_argument("--write", metavar="DIR", help="write the documents under DIR (docs)")
    args = parser.parse_args(argv)
    if args.write:
        for path in write_documents(Path(args.write)):
            print(path)
    else:
        sys.stdout.buffer.write(dumps(asyncapi_document()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
