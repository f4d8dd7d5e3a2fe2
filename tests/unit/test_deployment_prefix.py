"""Deployments never mix (issue 21), the pure parts: each deployment's object prefix, dumps of
another deployment refused, a pointer naming a manifest the storage does not hold raised as
``MissingManifest`` (not retried), the one line and ``/healthz`` of a worker stopping for it, and
the text log format showing a refusal's reason."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

import ost
from agents import health
from agents.config import Settings
from agents.indexing import IndexFollower, foreign
from agents.keys import index_prefix, object_prefix, rundata_base
from agents.logs import JsonFormatter, TextFormatter
from datamanager import DataManager, MissingManifest, Pointer
from datamanager.keys import partition_pointer_key
from events import Phase, Result
from events.catalogue import PhaseChanged, make_event
from events.codec import encode
from indexer import LoadedDump, RunIndex
from tests.fakes_kv import MemoryKv


@pytest.mark.parametrize(
    ("etcd_prefix", "objects"),
    [
        ("/runstream/", "runstream/"),
        ("/ci/prod", "ci/prod/"),
        ("/", "_root/"),
        ("", "_root/"),
        ("/a b/../", "a%20b/%2E%2E/"),
    ],
)
def test_each_etcd_prefix_has_its_object_prefix(etcd_prefix: str, objects: str) -> None:
    assert object_prefix(etcd_prefix) == objects
    assert ost.check_key(rundata_base(etcd_prefix)) == f"{objects}rundata"
    assert index_prefix(etcd_prefix) == objects


def test_two_etcd_prefixes_never_share_an_object_prefix() -> None:
    assert object_prefix("/test/ta/") != object_prefix("/test/tb/")
    assert not object_prefix("/test/tb/").startswith(object_prefix("/test/ta/"))


def _loaded(source: str) -> LoadedDump:
    index = RunIndex()
    index.apply(1, "/project/x/branch/main", Phase.QUEUED, Result.UNKNOWN, 1)
    index.mark_offset(source, 5)
    return LoadedDump(index=index, header=None, key="d/index/dumps/1.rsix", number=1, skipped=())  # type: ignore[arg-type]


def test_a_dump_of_another_phases_topic_is_foreign() -> None:
    s = Settings(topic_phases="mine.phases")
    assert foreign(s, _loaded("mine.phases/0")) is None
    why = foreign(s, _loaded("theirs.phases/0"))
    assert why is not None
    assert "theirs.phases" in why
    assert "mine.phases" in why


async def test_a_pointer_naming_a_manifest_the_storage_lacks_is_missing(tmp_path: Path) -> None:
    kv = MemoryKv()
    store = ost.open_storage(f"file://{tmp_path}")
    dm = DataManager(store, kv, base="d/rundata")
    manifest = "elsewhere/rundata/p0/manifests/00000000000000000003-abc.json"
    await kv.put(partition_pointer_key("p0"), Pointer(seq=3, manifest=manifest).encode())
    with pytest.raises(MissingManifest) as caught:
        await dm.current("p0")
    assert caught.value.manifest == manifest
    assert caught.value.pointer.endswith("datamanager/partitions/p0")
    assert str(tmp_path) in caught.value.storage
    assert not caught.value.retriable


def test_a_worker_stopping_says_it_once_and_healthz_says_it() -> None:
    health.reset_fatal()
    told: list[str] = []
    health.on_fatal(told.append)
    exc = MissingManifest(pointer="/rs/datamanager/partitions/p0", manifest="m.json", storage="S3Storage(bucket='b')")  # fmt: skip
    line = health.wrong_storage_line(exc)
    try:
        health.stop_for(line, code="wrong_storage")
        health.stop_for(line + " again", code="wrong_storage")  # a second partition: nothing
        assert told == [line]
        for needed in ("/rs/datamanager/partitions/p0", "m.json", "S3Storage(bucket='b')", "--storage", "--etcd-prefix", "lost data"):  # fmt: skip
            assert needed in line
        got = health.readiness({}, index_loaded=True, warnings=[])
        assert got["ready"] is False
        assert got["not_ready"][0] == line
        assert got["fatal"] == {"code": "wrong_storage", "message": line}
    finally:
        health.reset_fatal()
    assert "fatal" not in health.readiness({}, index_loaded=True, warnings=[])


def _log_with(formatter: logging.Formatter, emit: object) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    logger = logging.getLogger("runstream.indexer")
    logger.addHandler(handler)
    try:
        emit()  # type: ignore[operator]
    finally:
        logger.removeHandler(handler)
    return out.getvalue()


def test_the_index_refusal_carries_its_reason_in_both_formats() -> None:
    follower = IndexFollower(Settings(topic_phases="x.phases"), RunIndex())
    rid = "0000000000000001"
    change = PhaseChanged(group="/project/a/branch/main", phase=Phase.RUNNING, result=Result.UNKNOWN, seq=2)  # fmt: skip
    # A time the index cannot hold (after 2106): refused, and the line says why.
    value = encode(make_event(change, id=f"{rid}.phase.2", run_id=rid, at=5_000_000_000_000))
    text = _log_with(TextFormatter(), lambda: follower.apply_value(value))
    as_json = _log_with(JsonFormatter(), lambda: follower.apply_value(value))
    assert follower.stats.refused == 2
    assert "index refused a phase change reason=" in text
    assert "out of range" in text
    assert f"run_id={rid}" in text
    assert '"reason":"time 5000000000000 ms out of range' in as_json


def test_the_text_format_shows_extras_reason_first_and_quotes() -> None:
    record = logging.LogRecord("x", logging.ERROR, "", 0, "refused", None, None)
    record.__dict__.update({"run_id": "0001", "reason": "run is final", "code": "final", "n": 3})
    line = TextFormatter().format(record)
    assert line.endswith('refused reason="run is final" code=final n=3 run_id=0001')


async def test_an_upgraded_worker_still_reads_the_checkpoints_written_at_the_root(
    tmp_path: Path,
) -> None:
    """Before issue 21 the data lived under ``rundata`` at the root; the pointer names the
    manifest by its full key, so the deployment's new base reads it, checkpoints on top of it
    under the prefix, and its garbage collection never touches the old files still named."""
    kv = MemoryKv()
    store = ost.open_storage(f"file://{tmp_path}")
    old = DataManager(store, kv, base="rundata", gc_grace=0.0)
    writer = await old.open_partition("runs.events-0", claim=True)
    await writer.checkpoint(puts={"run": {"a": b"1", "b": b"2"}}, deletes={}, offsets={"t/0": 5})
    new = DataManager(store, kv, base=rundata_base("/runstream/"), gc_grace=0.0, keep_manifests=1)
    upgraded = await new.open_partition("runs.events-0", claim=True)
    assert upgraded.manifest.offsets == {"t/0": 5}
    assert await upgraded.get("run", "a") == b"1"
    for i in range(3):
        await upgraded.checkpoint(puts={"run": {"c": b"%d" % i}}, deletes={}, offsets={"t/0": 6 + i})  # fmt: skip
        await new.collect_garbage("runs.events-0", now=1e12)
    again = await DataManager(store, kv, base=rundata_base("/runstream/")).read_partition("runs.events-0")  # fmt: skip
    assert await again.get("run", "a") == b"1"
    assert await again.get("run", "c") == b"2"
    _, key, _ = await new.current("runs.events-0")
    assert key is not None
    assert key.startswith("runstream/rundata/runs.events-0/manifests/")
