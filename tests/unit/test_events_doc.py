"""docs/events.md, the producer's guide, stays true: every JSON example in it is read by the
decoder it describes, every event type has one, and it names every topic, dead-letter header and
refusal code of the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from agents.asyncapi import CHANNELS
from agents.config import Settings
from agents.creation import read_report, read_request
from events import decode_record
from events.catalogue import EventType
from events.requests import Refusal, RequestReply
from partition.admission import RefusalCode
from partition.outbox import DEAD_LETTER_HEADERS

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"
TEXT = DOC.read_text()
EXAMPLES = [orjson.loads(block) for block in re.findall(r"```json\n(.*?)```", TEXT, re.S)]


def _kind(doc: dict[str, Any]) -> str:
    if "event_id" in doc:
        return "refusal"
    if "type" in doc:
        return "event"
    if "outcome" in doc:
        return "reply"
    if "request_id" in doc:
        return "request"
    return "report"


@pytest.mark.parametrize(
    "doc", EXAMPLES, ids=lambda d: d.get("type") if _kind(d) == "event" else _kind(d)
)
def test_every_example_is_read_as_the_guide_says(doc: dict[str, Any]) -> None:
    raw = orjson.dumps(doc)
    kind = _kind(doc)
    if kind == "event":
        (event,) = decode_record(raw)
        assert event.type.value == doc["type"]
    elif kind == "reply":
        msgspec.json.decode(raw, type=RequestReply)
    elif kind == "refusal":
        assert msgspec.json.decode(raw, type=Refusal).event_id == doc["event_id"]
    elif kind == "request":
        assert read_request(raw).request_id == doc["request_id"]
    else:
        assert read_report(raw, fallback_id="x").request_id == doc["id"]


def test_every_event_type_has_an_example() -> None:
    shown = {d["type"] for d in EXAMPLES if _kind(d) == "event"}
    assert shown == {k.value for k in EventType}


def test_the_guide_names_every_topic_header_and_refusal_code() -> None:
    defaults = Settings()
    for field in CHANNELS:
        assert f"`{getattr(defaults, field)}`" in TEXT, field
    for header in DEAD_LETTER_HEADERS:
        assert f"`{header}`" in TEXT, header
    for code in RefusalCode:
        if code is not RefusalCode.OTHER:
            assert f"`{code.value}`" in TEXT, code
    assert "partitioner=murmur2_random" in TEXT
