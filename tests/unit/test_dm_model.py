"""Pure parts of the datamanager: keys, manifests, checkpoint planning and merging."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datamanager import keys
from datamanager.errors import CorruptData
from datamanager.manifest import FileRef, Manifest, Pointer
from datamanager.merge import assign, combine, merge_entries


def ref(first: str, last: str, n: int = 0) -> FileRef:
    return FileRef(
        key=f"f{n}", first_id=first, last_id=last, count=1, size=1, index_offset=0, index_length=1
    )


def test_keys_are_zero_padded_and_ordered() -> None:
    k9 = keys.manifest_key("rundata", "runs.events-3", 9, "abc")
    k10 = keys.manifest_key("rundata", "runs.events-3", 10, "abc")
    assert k9 < k10
    assert k9 == "rundata/runs.events-3/manifests/00000000000000000009-abc.json"
    assert keys.parse_seq(k10) == 10
    d = keys.data_file_key("rundata", "p", "run", 7, "tok", 2)
    assert d == "rundata/p/data/run/00000000000000000007-tok-0002.sst"
    assert keys.parse_seq(d) == 7
    assert keys.parse_seq("rundata/p/data/run/junk.sst") is None
    assert keys.partition_pointer_key("p") == "datamanager/partitions/p"
    assert keys.sequence_key("runs") == "sequences/runs"
    assert keys.lock_key("gc") == "locks/gc"


@pytest.mark.parametrize("bad", ["", "a/b", "../x", ".hidden", "a b", "x" * 201])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        keys.partition_pointer_key(bad)


def test_manifest_round_trip() -> None:
    m = Manifest(
        partition="p",
        seq=3,
        offsets={"runs.events/3": 42},
        files={"run": (ref("a", "c"), ref("d", "f", 1)), "empty": ()},
        previous="base/p/manifests/2.json",
        created_at=1.5,
    )
    back = Manifest.decode(m.encode())
    assert back == m
    assert back.datatypes() == ["run"]  # a datatype with no files is not listed
    assert back.file_for("run", "b") == ref("a", "c")
    assert back.file_for("run", "e") == ref("d", "f", 1)
    assert back.file_for("run", "cc") is None  # between two files: in neither
    assert back.file_for("run", "z") is None
    assert back.file_for("other", "a") is None
    assert back.referenced_keys() == {"f0", "f1"}


@pytest.mark.parametrize("data", [b"", b"{}", b'{"version": 99}', b"[1]"])
def test_bad_manifest_is_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptData):
        Manifest.decode(data)


def test_pointer_round_trip() -> None:
    p = Pointer(seq=4, manifest="k")
    assert Pointer.decode(p.encode()) == p
    with pytest.raises(CorruptData):
        Pointer.decode(b"nope")


def test_assign_groups_changes_by_file() -> None:
    files = [ref("b", "d", 0), ref("f", "h", 1), ref("j", "l", 2)]
    plan = assign(files, {"a": b"1", "c": None, "e": b"2", "i": b"3", "z": b"4"})
    # "a" (before all) and "c" to file 0; "e" (a gap) to the next file; "z" (after all) to the last.
    assert plan.groups == {0: {"a": b"1", "c": None}, 1: {"e": b"2"}, 2: {"i": b"3", "z": b"4"}}
    assert assign([], {"x": b""}).fresh == {"x": b""}


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(max_size=4), st.binary(max_size=4)),
    st.dictionaries(st.text(max_size=4), st.none() | st.binary(max_size=4)),
)
def test_merge_matches_a_dict_model(
    old: dict[str, bytes], changes: dict[str, bytes | None]
) -> None:
    model = dict(old)
    for k, v in changes.items():
        if v is None:
            model.pop(k, None)
        else:
            model[k] = v
    assert merge_entries(sorted(old.items()), changes) == sorted(model.items())


def test_combine_refuses_put_and_delete_of_one_id() -> None:
    assert combine({"run": {"1": b"a"}}, {"run": ["2"], "cfg": []}) == {
        "run": {"1": b"a", "2": None}
    }
    with pytest.raises(ValueError, match="both put and deleted"):
        combine({"run": {"1": b"a"}}, {"run": ["1"]})
