"""The declarations the API and its document share: the cursor shape against the indexer's
cursors, the one group check against its JSON Schema, and the fuzz's check selection."""

from __future__ import annotations

import re

import jsonschema_rs
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from schemathesis.checks import CHECKS, load_all_checks

from api.bodies import CURSOR_PATTERN
from events import BadRequest, validate_group
from events.group import Group
from indexer import Order, decode_cursor, encode_cursor
from tests.unit.test_api_openapi import schema


@given(run_id=st.integers(1, 2**64 - 1), order=st.sampled_from(list(Order)))
def test_every_cursor_the_indexer_writes_has_the_documented_shape(
    run_id: int, order: Order
) -> None:
    cursor = encode_cursor(run_id, order)
    assert re.fullmatch(CURSOR_PATTERN, cursor)
    assert decode_cursor(cursor, order) == run_id


_element = st.sampled_from(["project", "user", "branch", "tag", "pr", "p1", ".", "..", ".x", "", "a\x01", "é"])  # fmt: skip
_paths = st.one_of(
    st.lists(_element, max_size=6).map(lambda e: "/" + "/".join(e)),
    st.lists(_element, max_size=6).map("/".join),
    st.text(max_size=30),
)
_group_schema = jsonschema_rs.validator_for(msgspec.json.schema(Group))


@given(path=_paths)
def test_validate_group_and_the_documented_pattern_judge_alike(path: str) -> None:
    if _group_schema.is_valid(path):
        assert validate_group(path) == path
    else:
        with pytest.raises(BadRequest, match="group"):  # a message saying what is wrong
            validate_group(path)


def test_the_fuzz_runs_every_schemathesis_check() -> None:
    load_all_checks()
    config = schema.config.checks_config_for()
    names = CHECKS.get_all_names()
    assert len(names) > 10
    assert all(config.get_by_name(name=n).enabled for n in names)
