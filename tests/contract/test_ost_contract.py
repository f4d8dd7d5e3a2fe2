"""One contract suite for the object storage port, run against every adapter.

``OstContract`` holds the tests; each adapter subclass only provides the ``storage`` fixture.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from botocore.awsrequest import AWSRequest, AWSResponse

from ost import InvalidKey, NotExist, ObjectStorage, OstError, PosixStorage, StorageUnavailable
from ost.s3 import S3Storage
from tests.conftest import S3Endpoint

pytestmark = pytest.mark.timeout(120)

BAD_KEYS = ["", "/abs", "a//b", "a/", "../x", "a/../b", "a/./b", ".", "a\x00b", "a\nb"]


async def keys(
    storage: ObjectStorage, prefix: str, start_after: str = "", recursive: bool = True
) -> list[str]:
    return [o.key async for o in storage.list(prefix, start_after, recursive)]


class OstContract:
    """Behaviour every adapter must show. Subclasses define the ``storage`` fixture."""

    # Whether "a-b" < "a/b" < "a0" (flat byte order) holds even when "a/" is also a "directory".
    # SeaweedFS stores keys as a directory tree and lists such siblings in tree order; order
    # among keys without that clash is flat byte order on every adapter.
    flat_order_across_delimiter = True

    async def test_write_read_stat(self, storage: ObjectStorage) -> None:
        await storage.write("a/b/c.bin", b"hello world")
        assert await storage.read("a/b/c.bin") == b"hello world"
        info = await storage.stat("a/b/c.bin")
        assert info.key == "a/b/c.bin"
        assert info.size == 11
        assert isinstance(info.last_modified, datetime)
        assert info.last_modified.tzinfo is not None

    async def test_overwrite_replaces_whole_object(self, storage: ObjectStorage) -> None:
        await storage.write("k", b"a much longer first version")
        await storage.write("k", b"short")
        assert await storage.read("k") == b"short"
        assert (await storage.stat("k")).size == 5

    async def test_empty_object(self, storage: ObjectStorage) -> None:
        await storage.write("empty", b"")
        assert await storage.read("empty") == b""
        assert (await storage.stat("empty")).size == 0

    async def test_ranged_reads(self, storage: ObjectStorage) -> None:
        data = bytes(range(256)) * 4
        await storage.write("r", data)
        assert await storage.read("r", 10, 20) == data[10:30]
        assert await storage.read("r", 1000) == data[1000:]
        assert await storage.read("r", 1000, 100) == data[1000:]  # clipped at the end
        assert await storage.read("r", 5000, 10) == b""  # past the end
        assert await storage.read("r", 3, 0) == b""
        assert await storage.read("r", 0, None) == data

    async def test_missing_key_is_not_exist(self, storage: ObjectStorage) -> None:
        with pytest.raises(NotExist) as err:
            await storage.stat("nope/x")
        assert err.value.key == "nope/x"
        assert not err.value.retriable
        with pytest.raises(NotExist):
            await storage.read("nope/x")
        with pytest.raises(NotExist):
            await storage.read("nope/x", 5, 10)
        with pytest.raises(NotExist):
            await storage.read("nope/x", 0, 0)

    async def test_a_prefix_is_not_an_object(self, storage: ObjectStorage) -> None:
        await storage.write("dir/file", b"x")
        with pytest.raises(NotExist):
            await storage.stat("dir")
        with pytest.raises(NotExist):
            await storage.read("dir")

    async def test_delete(self, storage: ObjectStorage) -> None:
        await storage.write("d/x", b"1")
        await storage.delete("d/x")
        with pytest.raises(NotExist):
            await storage.stat("d/x")
        assert await keys(storage, "") == []

    async def test_delete_missing_is_not_exist_or_idempotent(self, storage: ObjectStorage) -> None:
        # The port allows both (posix raises NotExist, S3 deletes are idempotent); never another error.
        with contextlib.suppress(NotExist):
            await storage.delete("never/written")

    async def test_stream_write_to_eof_and_with_size(self, storage: ObjectStorage) -> None:
        payload = b"0123456789" * 100_000
        await storage.write("s/eof", io.BytesIO(payload))
        assert await storage.read("s/eof") == payload
        await storage.write("s/sized", io.BytesIO(payload + b"tail not read"), size=len(payload))
        assert await storage.read("s/sized") == payload

    async def test_short_stream_fails_and_leaves_nothing(self, storage: ObjectStorage) -> None:
        with pytest.raises(OstError):
            await storage.write("s/short", io.BytesIO(b"abc"), size=10)
        with pytest.raises(NotExist):
            await storage.stat("s/short")

    async def test_bytes_with_wrong_size_is_refused(self, storage: ObjectStorage) -> None:
        with pytest.raises(ValueError, match="size"):
            await storage.write("w", b"abc", size=2)

    async def test_persist_false_still_writes(self, storage: ObjectStorage) -> None:
        await storage.write("p/cache", b"recreatable", persist=False)
        assert await storage.read("p/cache") == b"recreatable"

    async def test_large_write(self, storage: ObjectStorage) -> None:
        payload = bytes(range(256)) * (40 * 4096 // 1)  # 40 MiB: above the S3 multipart threshold
        await storage.write("big/blob", io.BytesIO(payload), size=len(payload))
        assert (await storage.stat("big/blob")).size == len(payload)
        assert await storage.read("big/blob", len(payload) - 7) == payload[-7:]
        assert await storage.read("big/blob", 12_345_678, 9) == payload[12_345_678:12_345_687]

    @pytest.mark.parametrize("key", BAD_KEYS)
    async def test_bad_keys_are_refused(self, storage: ObjectStorage, key: str) -> None:
        with pytest.raises(InvalidKey):
            await storage.write(key, b"x")
        with pytest.raises(InvalidKey):
            await storage.read(key)
        with pytest.raises(InvalidKey):
            await storage.stat(key)
        with pytest.raises(InvalidKey):
            await storage.delete(key)

    @pytest.mark.parametrize("prefix", ["/abs", "../", "a/../", "a//"])
    async def test_bad_prefixes_are_refused(self, storage: ObjectStorage, prefix: str) -> None:
        with pytest.raises(InvalidKey):
            await keys(storage, prefix)

    async def test_list_is_flat_byte_order(self, storage: ObjectStorage) -> None:
        # "a-b" < "a/b" < "a0" in byte order, whatever the directory layout.
        names = ["a0", "a-b", "a/b", "a/c/d", "b", "a/c-e"]
        for k in names:
            await storage.write(k, k.encode())
        listed = await keys(storage, "")
        if self.flat_order_across_delimiter:
            assert listed == sorted(names)
        else:
            assert sorted(listed) == sorted(names)
        unclashed = ["q/0", "q/1/a", "q/1/b", "q/2", "q/20/x", "q/3"]
        for k in unclashed:
            await storage.write(k, b"")
        assert await keys(storage, "q/") == unclashed

    async def test_list_prefix_is_a_plain_string_prefix(self, storage: ObjectStorage) -> None:
        for k in ["runs/1", "runs/10", "runs/2", "runsx/1", "run"]:
            await storage.write(k, b"")
        assert await keys(storage, "runs/") == ["runs/1", "runs/10", "runs/2"]
        assert await keys(storage, "runs/1") == ["runs/1", "runs/10"]
        assert await keys(storage, "runs") == ["runs/1", "runs/10", "runs/2", "runsx/1"]
        assert await keys(storage, "zzz") == []

    async def test_list_start_after_is_exclusive(self, storage: ObjectStorage) -> None:
        names = [f"p/{i:04d}" for i in range(20)]
        for k in names:
            await storage.write(k, b"")
        assert await keys(storage, "p/", "p/0009") == names[10:]
        assert await keys(storage, "p/", "p/0008x") == names[9:]
        assert await keys(storage, "p/", "p/0019") == []
        assert await keys(storage, "p/", "a") == names

    async def test_list_non_recursive(self, storage: ObjectStorage) -> None:
        for k in ["x/1", "x/2", "x/sub/3", "x/sub/deeper/4", "x3", "y/5"]:
            await storage.write(k, b"")
        assert await keys(storage, "x/", recursive=False) == ["x/1", "x/2"]
        assert await keys(storage, "x/s", recursive=False) == []
        assert await keys(storage, "x", recursive=False) == ["x3"]
        assert await keys(storage, "", recursive=False) == ["x3"]
        assert await keys(storage, "x/", "x/1", recursive=False) == ["x/2"]

    async def test_list_reports_size(self, storage: ObjectStorage) -> None:
        await storage.write("sz/a", b"12345")
        [info] = [o async for o in storage.list("sz/")]
        assert (info.key, info.size) == ("sz/a", 5)

    async def test_list_pages_through_everything(self, storage: ObjectStorage) -> None:
        names = [f"many/{i:05d}" for i in range(2_300)]
        await _write_all(storage, names)
        assert await keys(storage, "many/") == names
        assert await keys(storage, "many/", "many/01999") == names[2000:]


async def _write_all(storage: ObjectStorage, names: list[str]) -> None:
    import asyncio

    sem = asyncio.Semaphore(32)

    async def one(k: str) -> None:
        async with sem:
            await storage.write(k, b"x", persist=False)

    await asyncio.gather(*(one(k) for k in names))


class TestPosix(OstContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> PosixStorage:
        return PosixStorage(tmp_path / "ost")

    async def test_layout_and_no_temp_left(self, tmp_path: Path) -> None:
        storage = PosixStorage(tmp_path / "ost")
        await storage.write("a/b", b"x")
        assert (tmp_path / "ost" / "data" / "a" / "b").read_bytes() == b"x"
        assert list((tmp_path / "ost" / "tmp").iterdir()) == []

    async def test_persist_fsyncs_file_and_directories(
        self, storage: PosixStorage, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        synced: list[int] = []
        real_fsync = os.fsync

        def counting_fsync(fd: int) -> None:
            synced.append(fd)
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", counting_fsync)
        await storage.write("f/a/b", b"durable")
        assert len(synced) == 4  # the temp file, then f/a, f and the data dir itself
        synced.clear()
        await storage.write("f/a/c", b"recreatable", persist=False)
        assert synced == []

    async def test_missing_delete_raises_not_exist(self, storage: PosixStorage) -> None:
        with pytest.raises(NotExist):
            await storage.delete("never")

    async def test_delete_prunes_empty_directories(self, tmp_path: Path) -> None:
        storage = PosixStorage(tmp_path / "ost")
        await storage.write("a/b/c/d", b"x")
        await storage.delete("a/b/c/d")
        assert list((tmp_path / "ost" / "data").iterdir()) == []

    def test_stale_temp_files_are_cleaned_at_start(self, tmp_path: Path) -> None:
        PosixStorage(tmp_path / "ost")
        host = socket.gethostname().replace(".", "_")
        proc = subprocess.Popen(["true"])
        proc.wait()
        stale = tmp_path / "ost" / "tmp" / f"{host}.{proc.pid}.deadbeef"
        stale.write_bytes(b"half written")
        mine = tmp_path / "ost" / "tmp" / f"{host}.{os.getpid()}.cafe"
        mine.write_bytes(b"in flight")
        PosixStorage(tmp_path / "ost")
        assert not stale.exists()
        assert mine.exists()  # a live writer's temp file is not touched

    async def test_object_and_prefix_collide_clearly(self, storage: PosixStorage) -> None:
        # The posix namespace is hierarchical (as Agola's); the error says so.
        await storage.write("h/a", b"x")
        with pytest.raises(OstError, match="collides"):
            await storage.write("h/a/b", b"y")
        await storage.write("h/c/d", b"x")
        with pytest.raises(OstError, match="collides"):
            await storage.write("h/c", b"y")


@pytest.mark.s3
class TestS3(OstContract):
    flat_order_across_delimiter = False  # SeaweedFS lists in directory-tree order

    @pytest.fixture
    def storage(self, s3_endpoint: S3Endpoint, s3_bucket: str) -> S3Storage:
        return S3Storage(
            s3_bucket,
            endpoint_url=s3_endpoint.url,
            access_key=s3_endpoint.access_key,
            secret_key=s3_endpoint.secret_key,
            region=s3_endpoint.region,
        )

    async def test_large_writes_use_multipart(self, storage: S3Storage) -> None:
        payload = os.urandom(20 << 20)  # above the 16 MiB multipart threshold
        await storage.write("mp/big", payload)
        head = storage._client.head_object(Bucket=storage.bucket, Key="mp/big")
        assert "-" in head["ETag"]  # a multipart ETag is "<md5 of md5s>-<parts>"
        assert await storage.read("mp/big", 17 << 20, 5) == payload[17 << 20 : (17 << 20) + 5]
        await storage.write("mp/small", b"x" * 1000)
        head = storage._client.head_object(Bucket=storage.bucket, Key="mp/small")
        assert "-" not in head["ETag"]

    async def test_missing_delete_is_idempotent(self, storage: S3Storage) -> None:
        await storage.delete("never")

    async def test_missing_bucket_is_not_not_exist(
        self, s3_endpoint: S3Endpoint, unique: str
    ) -> None:
        storage = S3Storage(
            f"missing-{unique}",
            endpoint_url=s3_endpoint.url,
            access_key=s3_endpoint.access_key,
            secret_key=s3_endpoint.secret_key,
        )
        with pytest.raises(OstError) as err:
            await storage.read("k")
        assert not isinstance(err.value, NotExist)

    @pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError")])
    async def test_throttling_and_5xx_are_retried(
        self, storage: S3Storage, status: int, code: str
    ) -> None:
        await storage.write("retry/k", b"payload")
        failures = _inject_failures(storage, "GetObject", status, code, times=2)
        assert await storage.read("retry/k") == b"payload"
        assert failures == [status, status]  # two refused attempts, then the real one

    async def test_5xx_left_after_the_retries_is_retriable(
        self, s3_endpoint: S3Endpoint, s3_bucket: str
    ) -> None:
        storage = S3Storage(
            s3_bucket,
            endpoint_url=s3_endpoint.url,
            access_key=s3_endpoint.access_key,
            secret_key=s3_endpoint.secret_key,
            max_retries=2,
        )
        await storage.write("retry/k", b"payload")
        failures = _inject_failures(storage, "GetObject", 503, "SlowDown", times=100)
        with pytest.raises(StorageUnavailable) as err:
            await storage.read("retry/k")
        assert err.value.retriable
        assert failures == [503, 503, 503]  # the first try and 2 retries

    async def test_unreachable_server_is_retriable(self) -> None:
        storage = S3Storage(
            "b", endpoint_url="http://127.0.0.1:9", access_key="x", secret_key="y", max_retries=0
        )
        with pytest.raises(OstError) as err:
            await storage.stat("k")
        assert err.value.retriable


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: object) -> Iterator[bytes]:
        yield self._body


def _inject_failures(
    storage: S3Storage, operation: str, status: int, code: str, times: int
) -> list[int]:
    """Make the next ``times`` HTTP attempts of ``operation`` answer ``status`` without sending."""
    sent: list[int] = []
    body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()

    def before_send(request: AWSRequest, **_: object) -> AWSResponse | None:
        if len(sent) >= times:
            return None
        sent.append(status)
        return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _Raw(body))

    storage._client.meta.events.register(f"before-send.s3.{operation}", before_send)
    return sent
