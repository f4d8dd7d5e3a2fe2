"""Open an object storage from a URL: ``file:///path`` or ``s3://bucket?endpoint=http://...``."""

from __future__ import annotations

import os
from urllib.parse import parse_qs, unquote, urlsplit

from ost.errors import OstError
from ost.port import ObjectStorage

__all__ = ["open_storage"]


def open_storage(
    url: str,
    *,
    access_key: str | None = None,
    secret_key: str | None = None,
    region: str | None = None,
) -> ObjectStorage:
    """Build the adapter named by ``url``.

    * ``file:///var/lib/runstream/ost`` -> ``PosixStorage`` rooted there.
    * ``s3://bucket?endpoint=http://127.0.0.1:8333&region=us-east-1`` -> ``S3Storage``.
      Credentials come from the arguments, else ``AWS_ACCESS_KEY_ID`` /
      ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_REGION`` / ``AWS_DEFAULT_REGION``).

    Raises ``OstError`` for any other scheme or a URL without a path / bucket.
    """
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.scheme == "file":
        path = unquote(parts.path)
        if not path or parts.netloc not in ("", "localhost"):
            raise OstError(f"bad file URL {url!r}: want file:///absolute/path")
        from ost.posix import PosixStorage

        return PosixStorage(path)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise OstError(f"bad s3 URL {url!r}: want s3://bucket?endpoint=...")
        # Imported here so that a posix-only process never pays for importing boto3.
        from ost.s3 import S3Storage

        return S3Storage(
            parts.netloc,
            endpoint_url=query.get("endpoint"),
            access_key=access_key or os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_key=secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY"),
            region=region
            or query.get("region")
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION"),
        )
    raise OstError(f"unsupported object storage URL {url!r}: want file:// or s3://")
