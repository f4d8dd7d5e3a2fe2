"""S3 adapter (boto3): the only module that imports boto3.

Semantics match the port (see ``ost.port``): a missing key is ``NotExist``; ``list`` pages
through everything with ListObjectsV2; writes above ``multipart_threshold`` use multipart
uploads (boto3's transfer manager); throttling and 5xx are retried with backoff by botocore's
"standard" retry mode, and an error left after the retries is ``StorageUnavailable``.
``persist`` changes nothing: S3 acknowledges a put only once it is durable. Every blocking
boto3 call runs in a thread.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from typing import Any, BinaryIO, TypeVar, cast

import boto3
import boto3.exceptions
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from ost.errors import NotExist, OstError, StorageUnavailable
from ost.keys import DELIMITER, check_key, check_prefix
from ost.port import ObjectInfo

__all__ = ["S3Storage"]

T = TypeVar("T")
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_RETRIABLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout"}


class S3Storage:
    """Object storage in one S3 bucket (AWS, SeaweedFS, MinIO...)."""

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = None,
        *,
        max_retries: int = 7,
        multipart_threshold: int = 16 << 20,
        multipart_chunksize: int = 8 << 20,
        max_pool_connections: int = 32,
        page_size: int = 1000,
    ) -> None:
        """Credentials default to boto3's chain (``AWS_ACCESS_KEY_ID``... env vars).

        ``max_retries`` retries (after the first try) with botocore's "standard" mode:
        exponential backoff with jitter on throttling, 5xx and connection errors.
        """
        self.bucket = bucket
        config = botocore.config.Config(
            retries={
                "max_attempts": max_retries,
                "mode": "standard",
            },  # retries after the first try
            max_pool_connections=max_pool_connections,
            s3={"addressing_style": "path"},
        )
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region or "us-east-1",
            config=config,
        )
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            use_threads=True,
        )
        self._page_size = page_size

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, endpoint={self._client.meta.endpoint_url!r})"

    async def stat(self, key: str) -> ObjectInfo:
        check_key(key)
        head = await _run(key, lambda: self._client.head_object(Bucket=self.bucket, Key=key))
        return ObjectInfo(key=key, size=head["ContentLength"], last_modified=head["LastModified"])

    async def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        check_key(key)
        if start < 0 or (length is not None and length < 0):
            raise ValueError("start and length must be non-negative")
        if start == 0 and length is None:
            return await _run(key, lambda: self._get(key, None))
        if length == 0:
            await self.stat(key)  # a missing key must still raise NotExist
            return b""
        end = "" if length is None else str(start + length - 1)
        try:
            return await _run(key, lambda: self._get(key, f"bytes={start}-{end}"))
        except _RangeNotSatisfiable:
            await self.stat(key)
            return b""

    def _get(self, key: str, byte_range: str | None) -> bytes:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if byte_range is not None:
            kwargs["Range"] = byte_range
        try:
            body = self._client.get_object(**kwargs)["Body"]
        except botocore.exceptions.ClientError as exc:
            if _code(exc) == "InvalidRange":
                raise _RangeNotSatisfiable from exc
            raise
        with body:
            data: bytes = body.read()
        return data

    async def write(
        self, key: str, data: bytes | BinaryIO, size: int = -1, persist: bool = True
    ) -> None:
        check_key(key)
        if isinstance(data, bytes | bytearray | memoryview):
            if size not in (-1, len(data)):
                raise ValueError(f"size {size} does not match the {len(data)} bytes given")
            if len(data) < self._transfer.multipart_threshold:
                # One PUT: cheaper than the transfer manager's thread pool for small objects.
                body = bytes(data)
                await _run(key, lambda: self._put(key, body))
                return
            stream: BinaryIO = io.BytesIO(data)
        else:
            stream = data if size < 0 else cast(BinaryIO, _Exactly(data, size))
        await _run(key, lambda: self._upload(key, stream))

    def _put(self, key: str, body: bytes) -> None:
        self._client.put_object(
            Bucket=self.bucket, Key=key, Body=body, ContentType="application/octet-stream"
        )

    def _upload(self, key: str, stream: BinaryIO) -> None:
        self._client.upload_fileobj(
            stream,
            self.bucket,
            key,
            ExtraArgs={"ContentType": "application/octet-stream"},
            Config=self._transfer,
        )

    async def delete(self, key: str) -> None:
        check_key(key)
        await _run(key, lambda: self._client.delete_object(Bucket=self.bucket, Key=key))

    async def list(
        self, prefix: str, start_after: str = "", recursive: bool = True
    ) -> AsyncIterator[ObjectInfo]:
        check_prefix(prefix)
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": prefix,
            "MaxKeys": self._page_size,
        }
        if start_after:
            kwargs["StartAfter"] = start_after
        if not recursive:
            kwargs["Delimiter"] = DELIMITER
        while True:
            page = await _run(prefix, lambda: self._client.list_objects_v2(**kwargs))
            for obj in page.get("Contents", ()):
                # Only objects: S3 may hold "directory marker" keys ending in "/".
                if obj["Key"].endswith(DELIMITER):
                    continue
                yield ObjectInfo(
                    key=obj["Key"], size=obj["Size"], last_modified=obj["LastModified"]
                )
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            kwargs["ContinuationToken"] = token


class _RangeNotSatisfiable(Exception):
    """Internal: a ranged read started at or after the end of the object."""


class _Exactly(io.RawIOBase):
    """Reads exactly ``size`` bytes of ``inner``; raises if ``inner`` ends early."""

    def __init__(self, inner: BinaryIO, size: int) -> None:
        self._inner = inner
        self._left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._left == 0:
            return b""
        want = self._left if n is None or n < 0 else min(n, self._left)
        chunk = self._inner.read(want)
        if not chunk:
            raise OstError(f"stream ended {self._left} bytes before the declared size")
        self._left -= len(chunk)
        return chunk


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


async def _run(key: str, fn: Callable[[], T]) -> T:
    """Run a blocking boto3 call in a thread and translate its errors into ost errors."""
    try:
        return await asyncio.to_thread(fn)
    except botocore.exceptions.ClientError as exc:
        code = _code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if code in _NOT_FOUND or (status == 404 and code != "NoSuchBucket"):
            raise NotExist(key) from exc
        if code in _RETRIABLE_CODES or status >= 500 or status == 429:
            raise StorageUnavailable(f"{key!r}: {exc}") from exc
        raise OstError(f"{key!r}: {exc}") from exc
    except (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectionClosedError,
        botocore.exceptions.ReadTimeoutError,
        botocore.exceptions.ConnectTimeoutError,
    ) as exc:
        raise StorageUnavailable(f"{key!r}: {exc}") from exc
    except boto3.exceptions.S3UploadFailedError as exc:
        # The transfer manager hides the ClientError; botocore has already retried.
        raise StorageUnavailable(f"{key!r}: {exc}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise OstError(f"{key!r}: {exc}") from exc
