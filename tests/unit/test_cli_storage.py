"""``runstream storage ls | cat`` on posix storage: keys with kind, and every format runstream
writes printed as JSON lines that decode back to what was stored."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import orjson
import pytest

from agents.cli.main import main
from agents.cli.storage import cat_lines, kind_of
from datamanager import datafile
from datamanager.errors import CorruptData
from datamanager.manifest import FileRef, Manifest
from events.model import Phase, Result
from indexer import RunIndex
from indexer.dump import encode, snapshot
from ost import PosixStorage
from partition.finals import FinalIds

BASE = "rundata/runs.events-0"
ACTIVE_KEY = f"{BASE}/data/active/00000000000000000001-abc-0000.sst"
META_KEY = f"{BASE}/data/meta/00000000000000000001-abc-0000.sst"
MANIFEST_KEY = f"{BASE}/manifests/00000000000000000001-abc.json"
DUMP_KEY = "index/dumps/00000000000000000007.rsix"
STATES = {f"{i:016d}": {"run": {"id": f"{i:016d}", "phase": "queued"}} for i in range(1, 6)}


def _objects() -> dict[str, bytes]:
    meta = {"partition": "runs.events-0", "seq": 1, "offsets": {"runs.events/0": 42}}
    [active] = datafile.encode_files(
        ((k, orjson.dumps(v)) for k, v in STATES.items()), max_file_size=1 << 20, meta=meta
    )
    [final_ids] = datafile.encode_files(
        [("final-ids", FinalIds(np.array([3, 9, 12])).to_bytes())], max_file_size=1 << 20, meta=meta
    )
    manifest = Manifest(
        partition="runs.events-0",
        seq=1,
        offsets={"runs.events/0": 42},
        files={
            "active": (
                FileRef(
                    key=ACTIVE_KEY,
                    first_id=active.first_id,
                    last_id=active.last_id,
                    count=active.count,
                    size=len(active.data),
                    index_offset=active.index_offset,
                    index_length=active.index_length,
                ),
            )
        },
        created_at=1.5,
    )
    index = RunIndex()
    index.apply(1, "/project/p/branch/main", Phase.RUNNING, Result.UNKNOWN, 4, at=7_000)
    index.apply(1, "/project/p/branch/main", Phase.QUEUED, Result.UNKNOWN, 1, at=5_000, name="ci", counter=2)  # fmt: skip
    index.apply(3, "/user/u", Phase.FINISHED, Result.FAILED, 9)
    index.mark_offset("runs.phases/0", 17)
    return {
        ACTIVE_KEY: active.data,
        META_KEY: final_ids.data,
        MANIFEST_KEY: manifest.encode(),
        DUMP_KEY: encode(snapshot(index)),
        "notes/readme.txt": b"hello",
    }


@pytest.fixture
def storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    store = PosixStorage(str(tmp_path))

    async def fill() -> None:
        for key, data in _objects().items():
            await store.write(key, data)

    asyncio.run(fill())
    monkeypatch.setenv("RUNSTREAM_STORAGE", f"file://{tmp_path}")
    return str(tmp_path)


def _json_lines(text: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in text.splitlines()]


def test_ls_lists_every_key_with_size_and_kind(
    storage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["storage", "ls", "--json"]) == 0
    listed = {o["key"]: o for o in _json_lines(capsys.readouterr().out)}
    objects = _objects()
    assert set(listed) == set(objects)
    assert {k: o["kind"] for k, o in listed.items()} == {
        ACTIVE_KEY: "datafile",
        META_KEY: "datafile",
        MANIFEST_KEY: "manifest",
        DUMP_KEY: "index-dump",
        "notes/readme.txt": "other",
    }
    assert listed[DUMP_KEY]["size"] == len(objects[DUMP_KEY])
    assert main(["storage", "ls", "index/"]) == 0
    out = capsys.readouterr().out
    assert DUMP_KEY in out
    assert ACTIVE_KEY not in out


def test_cat_data_file_prints_meta_then_every_entry_decoded(
    storage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["storage", "cat", ACTIVE_KEY]) == 0
    head, *entries = _json_lines(capsys.readouterr().out)
    assert head["kind"] == "datafile"
    assert head["datatype"] == "active"
    assert head["meta"] == {
        "partition": "runs.events-0",
        "seq": 1,
        "offsets": {"runs.events/0": 42},
    }
    assert head["entries"] == len(STATES)
    assert {e["key"]: e["value"] for e in entries} == STATES


def test_cat_final_ids_entry_lists_the_ids(
    storage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["storage", "cat", META_KEY]) == 0
    head, entry = _json_lines(capsys.readouterr().out)
    assert head["datatype"] == "meta"
    assert entry == {"key": "final-ids", "value": {"final_ids": 3, "ids": [3, 9, 12]}}


def test_cat_manifest(storage: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["storage", "cat", MANIFEST_KEY]) == 0
    [doc] = _json_lines(capsys.readouterr().out)
    assert doc["kind"] == "manifest"
    assert doc["seq"] == 1
    assert doc["offsets"] == {"runs.events/0": 42}
    assert doc["files"]["active"][0][0] == ACTIVE_KEY  # type: ignore[index]


def test_cat_index_dump_prints_header_then_runs(
    storage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["storage", "cat", DUMP_KEY]) == 0
    head, *runs = _json_lines(capsys.readouterr().out)
    assert head["kind"] == "index-dump"
    assert head["runs"] == 2
    assert head["offsets"] == {"runs.phases/0": 17}
    assert runs == [
        {"key": f"{1:016d}", "value": {"group": "/project/p/branch/main", "phase": "running", "result": "unknown", "seq": 4, "name": "ci", "counter": 2, "enqueue_time": 5_000, "start_time": 7_000, "end_time": None}},
        {"key": f"{3:016d}", "value": {"group": "/user/u", "phase": "finished", "result": "failed", "seq": 9, "name": "", "counter": 0, "enqueue_time": None, "start_time": None, "end_time": None}},
    ]  # fmt: skip


def test_cat_missing_key_is_one_error_line(
    storage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["storage", "cat", "rundata/nothing.json"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("runstream: error: no object")
    assert "Traceback" not in err


def test_kinds_and_corrupt_objects() -> None:
    assert kind_of("a/manifests/x.json") == "manifest"
    assert kind_of("a/data/final/x.sst") == "datafile"
    assert kind_of("x.rsix") == "index-dump"
    with pytest.raises(CorruptData):
        list(cat_lines(ACTIVE_KEY, _objects()[ACTIVE_KEY][:-3]))
    with pytest.raises(ValueError, match="not a manifest"):
        list(cat_lines("notes/readme.txt", b"hello"))
