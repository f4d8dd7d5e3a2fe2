"""The generated documents: the checked-in copies are those the code generates, and the JSON
Schemas judge documents as the decoder does.

Regenerate after changing a shape, a topic or a header: ``.venv/bin/python -m agents.asyncapi
--write docs``.
"""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.asyncapi import CHANNELS, asyncapi_document
from agents.config import Settings
from events import DecodeError, decode_record
from events.catalogue import CURRENT_VERSIONS, EventType
from events.documents import dumps, event_schema_name, json_schemas
from events.requests import RunRequest, SetupErrorReport

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GOLDEN = ROOT / "tests" / "golden" / "events"
REGENERATE = "out of step with the code: run `.venv/bin/python -m agents.asyncapi --write docs`"


def test_checked_in_asyncapi_document_is_the_generated_one() -> None:
    assert (DOCS / "asyncapi.json").read_bytes() == dumps(asyncapi_document()), REGENERATE


def test_checked_in_schemas_are_the_generated_ones() -> None:
    generated = json_schemas()
    on_disk = {p.name for p in (DOCS / "schemas").glob("*.json")}
    for name, schema in generated.items():
        assert (DOCS / "schemas" / name).read_bytes() == dumps(schema), f"{name}: {REGENERATE}"
    # Anything else must be the schema of an older version of a type (kept as it was).
    older = {
        event_schema_name(kind, v) for kind in EventType for v in range(1, CURRENT_VERSIONS[kind])
    }
    assert on_disk - set(generated) <= older, REGENERATE


def test_every_event_type_has_a_schema_and_a_golden_sample() -> None:
    names = set(json_schemas())
    for kind in EventType:
        name = event_schema_name(kind, CURRENT_VERSIONS[kind])
        assert name in names
        assert (GOLDEN / name).exists(), f"no golden sample {name}"


def test_every_topic_setting_is_a_described_channel() -> None:
    doc = asyncapi_document()
    topics = [f.name for f in fields(Settings) if f.name.startswith("topic_")]
    assert sorted(CHANNELS) == sorted(topics), "describe every topic in agents.asyncapi.CHANNELS"
    for field in topics:
        cid = field.removeprefix("topic_")
        assert doc["channels"][cid]["address"] == getattr(Settings(), field)
        assert "messages" in doc["channels"][cid]


def test_asyncapi_document_references_resolve() -> None:
    doc = asyncapi_document(Settings(topic_events="x.events", partitions=6))
    assert doc["asyncapi"] == "3.0.0"
    assert doc["channels"]["events"]["address"] == "x.events"
    assert doc["channels"]["events"]["bindings"]["kafka"]["partitions"] == 6
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    assert refs
    for ref in refs:
        target: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            assert part in target, ref
            target = target[part]
    headers = doc["components"]["messages"]["dlq"]["headers"]["properties"]
    assert {"runstream-error", "runstream-source-offset", "runstream-source-timestamp"} <= set(
        headers
    )


# ------------------------------------------------------------- decoder and schema agree
def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = json_schemas()[name]
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)  # type: ignore[no-any-return]


RECORD = _validator("record.json")
REQUEST = _validator("run-request.json")
REPORT = _validator("setup-error-report.json")
SAMPLES = [orjson.loads(p.read_bytes()) for p in sorted(GOLDEN.glob("*.v*.json"))]
REQUESTS = [
    {
        "request_id": "hook-1",
        "name": "build",
        "group": "/project/p1/branch/main",
        "tasks": [{"id": "t1", "name": "compile", "steps": [{"type": "run", "command": "make"}]}],
        "at": 1764292658123,
    },
    {
        "request_id": "hook-2",
        "name": "Setup Error",
        "group": "/project/p1/branch/main",
        "setup_errors": [{"message": "config.yml: bad", "task_ids": []}],
    },
]
REPORTS = [{"id": "r-1", "group": "/project/p/branch/b", "errors": [{"message": "bad yaml"}]}]

# JSON values; integral floats left out: JSON Schema's "integer" accepts 1.0, the decoder does
# not (docs/events.md: write integers without a fraction).
leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
    st.text(max_size=20),
    st.sampled_from(
        ["", "0000000000000042", "0000000000000000", "000000000000004\n", "success", "nope"]
    ),
)
json_values = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*at, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*at, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, samples: list[Any]) -> Any:
    """A sample, with zero to three random edits: a value replaced, a key removed or added."""
    doc = copy.deepcopy(draw(st.sampled_from(samples)))
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            doc = draw(json_values)
            continue
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "remove":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
        else:
            parent.append(draw(json_values))
    return doc


def _decodes(fn: Any, doc: Any) -> bool:
    try:
        fn(msgspec.json.encode(doc))
    except (DecodeError, msgspec.ValidationError, msgspec.DecodeError):
        return False
    return True


CHECKS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@CHECKS
@given(
    st.one_of(
        mutated(SAMPLES), st.lists(mutated(SAMPLES), max_size=3), st.lists(st.just(SAMPLES[0]))
    )
)
def test_records_are_judged_alike_by_the_decoder_and_the_schema(doc: Any) -> None:
    assert _decodes(decode_record, doc) == RECORD.is_valid(doc), doc


@CHECKS
@given(mutated(REQUESTS))
def test_requests_are_judged_alike_by_the_decoder_and_the_schema(doc: Any) -> None:
    decoder = msgspec.json.Decoder(RunRequest).decode
    assert _decodes(decoder, doc) == REQUEST.is_valid(doc), doc


@CHECKS
@given(mutated(REPORTS))
def test_reports_are_judged_alike_by_the_decoder_and_the_schema(doc: Any) -> None:
    decoder = msgspec.json.Decoder(SetupErrorReport).decode
    assert _decodes(decoder, doc) == REPORT.is_valid(doc), doc


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"{s['type']}.v{s['version']}")
def test_every_golden_sample_is_valid_for_its_own_schema(sample: dict[str, Any]) -> None:
    _validator(f"{sample['type']}.v{sample['version']}.json").validate(sample)
    assert RECORD.is_valid(sample)
    assert RECORD.is_valid([sample, sample])


async def test_the_api_serves_the_asyncapi_document_it_is_given() -> None:
    from tests.unit.test_api_support import served

    doc = asyncapi_document(Settings(topic_events="w.events"))
    async with served(asyncapi=doc, api_token="t") as (client, _):
        got = await client.get("/api/v1/asyncapi.json", headers={"Authorization": "Bearer t"})
        assert got.status == 200
        assert await got.json() == orjson.loads(orjson.dumps(doc))
        assert (await client.get("/api/v1/asyncapi.json")).status == 401
    async with served() as (client, _):
        assert (await client.get("/api/v1/asyncapi.json")).status == 404
