"""Posix adapter: objects are files under ``<root>/data/<key>``.

Writes go to ``<root>/tmp/`` first, are fsynced, renamed into place, and the parent
directories are fsynced (``persist=False`` skips both fsyncs). Temporary files left by a crashed
process are removed when a ``PosixStorage`` is opened. Every blocking call runs in a thread.
The namespace is hierarchical: ``a/b`` and ``a/b/c`` cannot both exist.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, TypeVar

from ost.errors import NotExist, OstError, StorageUnavailable
from ost.keys import DELIMITER, check_key, check_prefix
from ost.port import ObjectInfo

__all__ = ["PosixStorage"]

T = TypeVar("T")
_CHUNK = 1 << 20
_DIR_MODE = 0o770
_FILE_MODE = 0o660
# A temporary file this old is stale even if its writer's pid is alive (pid reuse, NFS peers).
_STALE_TMP_AGE = 24 * 3600.0
# errno values a retry might cure.
_TRANSIENT = {errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.EIO, errno.ENOSPC, errno.EMFILE}


class PosixStorage:
    """Object storage on a local (or shared) filesystem rooted at ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._data = self.root / "data"
        self._tmp = self.root / "tmp"
        self._data.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        self._tmp.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        self._host = socket.gethostname().replace(".", "_")
        self.clean_stale_tmp()

    def __repr__(self) -> str:
        return f"PosixStorage({str(self.root)!r})"

    def clean_stale_tmp(self) -> int:
        """Remove temporary files whose writer is dead (or that are a day old). Returns the count.

        Temp files are named ``<host>.<pid>.<uuid>``; a file of this host whose pid no longer
        runs was left by a crash. Files of other hosts are only removed by age.
        """
        removed = 0
        now = time.time()
        for entry in os.scandir(self._tmp):
            host, _, rest = entry.name.partition(".")
            pid_text = rest.partition(".")[0]
            dead = host == self._host and pid_text.isdigit() and not _pid_alive(int(pid_text))
            with contextlib.suppress(FileNotFoundError):
                if dead or now - entry.stat().st_mtime > _STALE_TMP_AGE:
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def _path(self, key: str) -> Path:
        return self._data / check_key(key)

    async def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        return await _run(key, lambda: _stat(key, path))

    async def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        if start < 0 or (length is not None and length < 0):
            raise ValueError("start and length must be non-negative")
        path = self._path(key)
        return await _run(key, lambda: _read(path, start, length))

    async def write(
        self, key: str, data: bytes | BinaryIO, size: int = -1, persist: bool = True
    ) -> None:
        path = self._path(key)
        if isinstance(data, bytes | bytearray | memoryview) and size not in (-1, len(data)):
            raise ValueError(f"size {size} does not match the {len(data)} bytes given")
        await _run(key, lambda: self._write(path, data, size, persist), writing=True)

    async def delete(self, key: str) -> None:
        path = self._path(key)
        await _run(key, lambda: self._delete(path))

    async def list(
        self, prefix: str, start_after: str = "", recursive: bool = True
    ) -> AsyncIterator[ObjectInfo]:
        check_prefix(prefix)
        infos = await _run(prefix, lambda: self._list(prefix, start_after, recursive))
        for info in infos:
            yield info

    def _write(self, path: Path, data: bytes | BinaryIO, size: int, persist: bool) -> None:
        tmp = self._tmp / f"{self._host}.{os.getpid()}.{uuid.uuid4().hex}"
        try:
            with open(tmp, "xb") as f:
                _copy(data, f, size)
                if persist:
                    f.flush()
                    os.fsync(f.fileno())
            os.chmod(tmp, _FILE_MODE)
            self._rename_into_place(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if persist:
            self._fsync_parents(path)

    def _rename_into_place(self, tmp: Path, path: Path) -> None:
        # A concurrent delete may prune the parent directory between makedirs and rename.
        for _ in range(5):
            path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            try:
                os.rename(tmp, path)
                return
            except FileNotFoundError:
                if not tmp.exists():
                    raise
        raise OstError(f"could not create the parent directory of {path}", retriable=True)

    def _fsync_parents(self, path: Path) -> None:
        # Walk up to the data dir: a newly created directory is only durable once its parent is.
        parent = path.parent
        while True:
            fd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            if parent == self._data:
                break
            parent = parent.parent

    def _delete(self, path: Path) -> None:
        if path.is_dir():
            raise FileNotFoundError(str(path))
        os.unlink(path)
        parent = path.parent
        while parent != self._data:
            try:
                os.rmdir(parent)
            except OSError:
                break  # not empty (or gone): leave it
            parent = parent.parent

    def _list(self, prefix: str, start_after: str, recursive: bool) -> builtins.list[ObjectInfo]:
        cut = prefix.rfind(DELIMITER) + 1
        base_key, name_prefix = prefix[:cut], prefix[cut:]
        base = self._data / base_key if base_key else self._data
        found: builtins.list[tuple[str, os.stat_result]] = []
        try:
            entries = list(os.scandir(base))
        except (FileNotFoundError, NotADirectoryError):
            return []
        for entry in entries:
            if not entry.name.startswith(name_prefix):
                continue
            key = base_key + entry.name
            if entry.is_dir(follow_symlinks=False):
                if recursive:
                    _walk(Path(entry.path), key + DELIMITER, found)
            elif entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    found.append((key, entry.stat()))
        # Python str order is code point order, which is UTF-8 byte order: flat S3 order.
        found.sort(key=lambda item: item[0])
        return [_info(k, st) for k, st in found if k > start_after]


def _walk(directory: Path, key_prefix: str, found: list[tuple[str, os.stat_result]]) -> None:
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return  # removed while we walked
    for entry in entries:
        key = key_prefix + entry.name
        if entry.is_dir(follow_symlinks=False):
            _walk(Path(entry.path), key + DELIMITER, found)
        elif entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                found.append((key, entry.stat()))


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(
        key=key, size=st.st_size, last_modified=datetime.fromtimestamp(st.st_mtime, UTC)
    )


def _stat(key: str, path: Path) -> ObjectInfo:
    st = os.stat(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(str(path))
    return _info(key, st)


def _read(path: Path, start: int, length: int | None) -> bytes:
    with open(path, "rb") as f:
        if start:
            f.seek(start)
        return f.read() if length is None else f.read(length)


def _copy(data: bytes | BinaryIO, f: BinaryIO, size: int) -> None:
    if isinstance(data, bytes | bytearray | memoryview):
        f.write(data)
        return
    remaining = size
    while remaining != 0:
        chunk = data.read(_CHUNK if remaining < 0 else min(_CHUNK, remaining))
        if not chunk:
            if remaining > 0:
                raise OstError(f"stream ended {remaining} bytes before the declared size")
            return
        f.write(chunk)
        if remaining > 0:
            remaining -= len(chunk)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


async def _run(key: str, fn: Callable[[], T], *, writing: bool = False) -> T:
    """Run ``fn`` in a thread and translate OS errors into ost errors."""
    try:
        return await asyncio.to_thread(fn)
    except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
        if writing:
            # The hierarchical namespace: "a/b" cannot be an object and a prefix of one.
            raise OstError(f"{key!r} collides with an existing object or prefix") from exc
        raise NotExist(key) from exc
    except FileNotFoundError as exc:
        raise NotExist(key) from exc
    except OSError as exc:
        if exc.errno in _TRANSIENT:
            raise StorageUnavailable(f"{key!r}: {exc}") from exc
        raise OstError(f"{key!r}: {exc}") from exc
