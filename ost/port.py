"""The object storage port: a small, flat key/value blob interface (Agola's "ost").

Contract shared by every adapter (checked by ``tests/contract``):

* Keys are ``/``-separated paths of non-empty segments, without ``.``/``..`` segments, a
  leading ``/`` or NUL (see :func:`ost.keys.check_key`); anything else raises ``InvalidKey``.
* ``write`` is atomic: a reader sees the old object, or the whole new one, never a part.
* ``read(key, start, length)`` returns the bytes ``[start, start+length)`` clipped to the
  object's end (``length=None`` reads to the end); a missing key raises ``NotExist``.
* ``list(prefix, start_after, recursive)`` yields objects only (never "directories") whose key
  starts with the plain string ``prefix``, strictly after ``start_after``, in flat byte order.
  ``recursive=False`` keeps only keys whose remainder after ``prefix`` has no ``/``.
  Exception: a server that stores keys as a directory tree (SeaweedFS) may place ``a/b``
  before a sibling ``a-b`` (a character below ``/`` after a shared stem). Keys built by
  runstream never rely on order across such siblings.
* ``delete`` of a missing key: the posix adapter raises ``NotExist``, S3 deletes are
  idempotent and succeed. Callers that want idempotence catch ``NotExist``.
* The posix namespace is hierarchical: ``a/b`` and ``a/b/c`` cannot both exist there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol

__all__ = ["ObjectInfo", "ObjectStorage"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectInfo:
    """What ``stat`` and ``list`` report about one object. ``last_modified`` is timezone-aware UTC."""

    key: str
    size: int
    last_modified: datetime


class ObjectStorage(Protocol):
    """Asynchronous object storage. Every adapter runs its blocking calls off the event loop."""

    async def stat(self, key: str) -> ObjectInfo:
        """Size and modification time of ``key``. Raises ``NotExist``."""
        ...

    async def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        """Bytes ``[start, start+length)`` of ``key``, clipped to its end. Raises ``NotExist``."""
        ...

    async def write(
        self, key: str, data: bytes | BinaryIO, size: int = -1, persist: bool = True
    ) -> None:
        """Atomically create or replace ``key``.

        ``data`` is bytes or a binary stream. With a stream and ``size >= 0`` exactly ``size``
        bytes are read (a shorter stream is an error); ``size < 0`` reads it to EOF. With bytes,
        ``size`` must be -1 or ``len(data)``. ``persist=True`` means durable when the call
        returns; ``persist=False`` allows skipping fsync (posix only; S3 ignores it).
        """
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``. Posix raises ``NotExist`` if missing; S3 is idempotent."""
        ...

    def list(
        self, prefix: str, start_after: str = "", recursive: bool = True
    ) -> AsyncIterator[ObjectInfo]:
        """Objects under ``prefix`` after ``start_after`` (exclusive), in flat byte order."""
        ...
