"""Object key rules and the storage URL factory (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ost import InvalidKey, OstError, PosixStorage, check_key, check_prefix, open_storage


@pytest.mark.parametrize("key", ["a", "a/b/c", "runs/0000000000000001", "x.y-z_1", "é/日本"])
def test_good_keys(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize(
    "key", ["", "/a", "a/", "a//b", "..", "a/../b", "./a", "a/.", "a\x00", "a\x7f", "x" * 1025]
)
def test_bad_keys(key: str) -> None:
    with pytest.raises(InvalidKey):
        check_key(key)


@pytest.mark.parametrize("prefix", ["", "a", "a/", "a/b/c-"])
def test_good_prefixes(prefix: str) -> None:
    assert check_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["/", "/a", "a//", "../", "a/..", "\x00"])
def test_bad_prefixes(prefix: str) -> None:
    with pytest.raises(InvalidKey):
        check_prefix(prefix)


def test_open_storage_file_url(tmp_path: Path) -> None:
    storage = open_storage(f"file://{tmp_path}/ost")
    assert isinstance(storage, PosixStorage)
    assert storage.root == tmp_path / "ost"


def test_open_storage_s3_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sk")
    storage = open_storage("s3://bucket?endpoint=http://127.0.0.1:8333&region=eu-west-1")
    assert type(storage).__name__ == "S3Storage"
    assert storage.bucket == "bucket"  # type: ignore[attr-defined]


@pytest.mark.parametrize("url", ["http://x", "file://host/p", "s3://", "ftp://a/b"])
def test_open_storage_refuses_other_urls(url: str) -> None:
    with pytest.raises(OstError):
        open_storage(url)
