"""Index dumps in object storage: list, write, load the newest valid one, prune old ones.

Atomicity: a dump is encoded and checksummed in memory, then written with one ``write`` (atomic
in every ``ost`` adapter), so an interrupted dump never exists under its final key. A reader
still validates every dump it loads (digest and framing) and falls back to the previous one
with a warning, so a corrupt or truncated object (disk, bit rot, a foreign writer) costs only
a longer replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from indexer.dump import DumpHeader, decode, read_header
from indexer.errors import BadDump, NoValidDump
from indexer.index import RunIndex
from indexer.keys import dump_key, dumps_prefix, parse_dump_key
from ost.errors import NotExist
from ost.port import ObjectStorage

__all__ = ["DumpStore", "LoadedDump"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedDump:
    """The index decoded from dump ``key``; replay the log from ``header.offsets``."""

    index: RunIndex
    header: DumpHeader
    key: str
    number: int
    skipped: tuple[str, ...]  # newer dumps that were invalid, newest first


class DumpStore:
    """The dumps of one indexer deployment, under ``<prefix>index/dumps/``."""

    def __init__(self, storage: ObjectStorage, prefix: str = "") -> None:
        self.storage = storage
        self.prefix = prefix

    async def numbers(self) -> list[int]:
        """Numbers of the dumps present, ascending (stray objects under the prefix ignored)."""
        found = []
        async for info in self.storage.list(dumps_prefix(self.prefix)):
            number = parse_dump_key(info.key, self.prefix)
            if number is not None:
                found.append(number)
        return sorted(found)

    async def write(self, data: bytes) -> tuple[int, str]:
        """Store ``data`` as the next dump (newest number + 1); returns its number and key.

        Call it under the dump lock, or two writers could pick the same number.
        """
        numbers = await self.numbers()
        number = numbers[-1] + 1 if numbers else 1
        key = dump_key(number, self.prefix)
        await self.storage.write(key, data)
        return number, key

    async def check(self, key: str) -> DumpHeader:
        """Read ``key`` back and validate it. Raises ``BadDump`` or ``NotExist``."""
        data = await self.storage.read(key)
        return await asyncio.to_thread(read_header, data)

    async def load_latest(self) -> LoadedDump | None:
        """The newest valid dump, or None when there is no dump at all.

        Invalid dumps (checksum, truncation, unknown version) and dumps deleted meanwhile are
        skipped with a warning naming the key and the reason. Raises ``NoValidDump`` if dumps
        exist but none is valid; storage outages propagate (``ost`` errors), since starting
        from nothing would then silently need the whole log.
        """
        numbers = await self.numbers()
        skipped: list[str] = []
        for number in reversed(numbers):
            key = dump_key(number, self.prefix)
            try:
                data = await self.storage.read(key)
                index, header = await asyncio.to_thread(decode, data)
            except (BadDump, NotExist) as exc:
                log.warning("index dump %s is unusable (%s); trying the previous one", key, exc)
                skipped.append(key)
                continue
            return LoadedDump(
                index=index, header=header, key=key, number=number, skipped=tuple(skipped)
            )
        if skipped:
            raise NoValidDump(f"none of the {len(skipped)} index dumps is valid: {skipped}")
        return None

    async def prune(self, keep: int, *, newest_valid: int) -> list[str]:
        """Delete dumps older than the ``keep`` newest, never ``newest_valid`` or anything newer.

        Returns the deleted keys. Idempotent: a dump already gone is fine.
        """
        numbers = await self.numbers()
        doomed = [n for n in numbers[: max(0, len(numbers) - keep)] if n < newest_valid]
        deleted = []
        for number in doomed:
            key = dump_key(number, self.prefix)
            with contextlib.suppress(NotExist):
                await self.storage.delete(key)
            deleted.append(key)
        return deleted
