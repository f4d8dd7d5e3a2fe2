"""Fault 9: replay twice from the same log gives byte-identical snapshots (and the oracle's state).

Data file names carry a random token (``<seq>-<token>-<n>.sst``); files are compared by their name
without the token, byte for byte. Manifests differ by design (their creation time and the token
names), so their content is compared with those mapped out.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

import ost
from agents.cli.replay import _datamanager, replay, replay_base
from agents.readback import materialized_states
from agents.resources import storage_url
from agents.workload import generate
from tests.faults.checks import FaultRow, Tally, tally_states
from tests.faults.load import Load
from tests.faults.stack import fault_settings
from tests.harness import prepare_topics
from tests.oracle import Oracle

pytestmark = [pytest.mark.faults, pytest.mark.kafka, pytest.mark.etcd, pytest.mark.timeout(300)]

_TOKEN = re.compile(r"(\d+)-[0-9a-f]{12}(-\d+\.sst|\.json)$")


def _untokened(key: str, base: str) -> str:
    return _TOKEN.sub(r"\1\2", key.removeprefix(f"{base}/"))


async def _objects(store: ost.ObjectStorage, base: str) -> dict[str, bytes]:
    out = {}
    async for info in store.list(f"{base}/"):
        out[_untokened(info.key, base)] = await store.read(info.key)
    return out


def _normalise(doc: object, base: str) -> object:
    if isinstance(doc, dict):
        return {k: _normalise(v, base) for k, v in doc.items() if k != "created_at"}
    if isinstance(doc, list):
        return [_normalise(v, base) for v in doc]
    if isinstance(doc, str) and doc.startswith(f"{base}/"):
        return _untokened(doc, base)
    return doc


async def test_replay_twice_is_byte_identical(
    tmp_path: Path,
    unique: str,
    kafka_bootstrap: str,
    etcd_endpoint: str,
    fault_report: Callable[[FaultRow], None],
) -> None:
    s = fault_settings(
        unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects", max_file_size=64 << 10
    )
    await prepare_topics(s)
    load = Load(s)
    await load.drive(generate(seed=91, runs=3000), pause=0)
    started = time.monotonic()
    first = await replay(s, target="a", progress=False)
    second = await replay(s, target="b", progress=False)
    seconds = time.monotonic() - started

    store = ost.open_storage(storage_url(s.storage))
    base_a, base_b = replay_base(s, "a"), replay_base(s, "b")  # under the deployment's prefix
    a, b = await _objects(store, base_a), await _objects(store, base_b)
    data_a = {k: v for k, v in a.items() if k.endswith(".sst")}
    data_b = {k: v for k, v in b.items() if k.endswith(".sst")}
    manifests_a = {
        k: _normalise(orjson.loads(v), base_a) for k, v in a.items() if k.endswith(".json")
    }
    manifests_b = {
        k: _normalise(orjson.loads(v), base_b) for k, v in b.items() if k.endswith(".json")
    }

    tally = Tally()
    dm, kv = _datamanager(s, target="a")
    try:
        got = await materialized_states(dm, s.topic_events, range(s.partitions))
    finally:
        await kv.close()
    tally_states(got, Oracle().feed(load.acked), tally)
    differing = sorted(k for k in data_a.keys() | data_b.keys() if data_a.get(k) != data_b.get(k))
    tally.diverged += len(differing) + (manifests_a != manifests_b)
    note = (
        f"{len(data_a)} data files ({sum(map(len, data_a.values())) >> 10} KiB) per replay, "
        f"{len(differing)} differ; manifests equal: {manifests_a == manifests_b}"
    )
    fault_report(tally.row("9 replay twice", first.events, seconds / 2, note))
    assert first.events == second.events == len(load.acked)
    assert data_a, "the replay wrote no data file"
    assert not differing, differing[:5]
    assert manifests_a == manifests_b
    tally.assert_ok()
