"""In-memory fakes of the ports of ``partition.owner.PartitionOwner`` (no tests here).

* :class:`FakeLog` is the log: a ``LogSender`` and a ``LogReader`` over in-memory topic
  partitions; its sends can be made to fail, or to be refused for size.
* :class:`FakeDatamanager` is the key/value store and the object storage of the datamanager:
  per partition, the entries of the last checkpoint, its offsets and a pointer revision that a
  claim bumps (so a claim by another owner fences the previous writer, as in etcd). Its
  checkpoints can fail, be fenced, or be held at a gate while a test does something else.
* :class:`FakeHooks` records what the owner asked of the wiring, the offsets it acknowledged
  among it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from datamanager.errors import Fenced, MissingManifest, NotExist, StorageError
from datamanager.manifest import Manifest


# ------------------------------------------------------------------------------------- the log
@dataclass(frozen=True, slots=True)
class FakeMeta:
    topic: str
    partition: int
    offset: int


class SendFailed(Exception):
    """What a failing fake send raises (a broker that did not acknowledge the record)."""


@dataclass(slots=True)
class Sent:
    topic: str
    key: bytes | None
    value: bytes
    partition: int | None
    headers: list[tuple[str, bytes]]


class FakeLog:
    """Topic partitions in memory. ``fail_sends``: every send's awaitable raises from then on;
    ``max_value``: a send of a larger value raises at once (too large for the broker);
    ``room``: a send waits for it first (the producer's buffer is full; ``blocked`` is set);
    ``starts``: where a partition's retained records start (the log's retention, see
    ``log_bounds``)."""

    def __init__(self, *, partitions: int = 1) -> None:
        self.partitions = partitions
        self.records: dict[tuple[str, int], list[bytes]] = {}
        self.sent: list[Sent] = []
        self.fail_sends = False
        self.max_value: int | None = None
        self.room: asyncio.Event | None = None
        self.blocked = asyncio.Event()
        # (topic, partition) → the first offset retained: say the records before it expired
        self.starts: dict[tuple[str, int], int] = {}

    def append(self, topic: str, partition: int, value: bytes) -> int:
        """Append a record; returns its offset."""
        log = self.records.setdefault((topic, partition), [])
        log.append(value)
        return len(log) - 1

    def values(self, topic: str, partition: int = 0) -> list[bytes]:
        return list(self.records.get((topic, partition), []))

    # LogSender
    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        partition: int | None,
        headers: Sequence[tuple[str, bytes]] | None,
    ) -> Awaitable[FakeMeta]:
        if self.room is not None:
            self.blocked.set()
            await self.room.wait()
        if self.max_value is not None and len(value) > self.max_value:
            raise SendFailed(f"record of {len(value)} bytes is too large")
        fut: asyncio.Future[FakeMeta] = asyncio.get_running_loop().create_future()
        if self.fail_sends:
            fut.set_exception(SendFailed("not acknowledged"))
            return fut
        p = 0 if partition is None else partition
        self.sent.append(Sent(topic, key, value, partition, list(headers or ())))
        fut.set_result(FakeMeta(topic, p, self.append(topic, p, value)))
        return fut

    async def send_batch(
        self, topic: str, partition: int, records: Sequence[tuple[bytes | None, bytes]]
    ) -> Awaitable[FakeMeta]:
        if self.room is not None:
            self.blocked.set()
            await self.room.wait()
        fut: asyncio.Future[FakeMeta] = asyncio.get_running_loop().create_future()
        if self.fail_sends:
            fut.set_exception(SendFailed("not acknowledged"))
            return fut
        offset = -1
        for key, value in records:
            self.sent.append(Sent(topic, key, value, partition, []))
            offset = self.append(topic, partition, value)
        fut.set_result(FakeMeta(topic, partition, offset))
        return fut

    # LogReader
    async def log_bounds(self, topic: str) -> tuple[Mapping[int, int], Mapping[int, int]]:
        parts = range(self.partitions)
        return (
            {p: self.starts.get((topic, p), 0) for p in parts},
            {p: len(self.records.get((topic, p), [])) for p in parts},
        )

    async def read_values(self, topic: str, partition: int, offset: int) -> list[bytes]:
        return self.values(topic, partition)[offset:]


# -------------------------------------------------------------------------------- datamanager
@dataclass(slots=True)
class Checkpointed:
    """One call of ``checkpoint`` as the writer received it."""

    puts: dict[str, dict[str, bytes]]
    deletes: dict[str, list[str]]
    offsets: dict[str, int]
    appends: dict[str, dict[str, bytes]] = field(default_factory=dict)


@dataclass(slots=True)
class _Partition:
    entries: dict[str, dict[str, bytes]] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    seq: int = 0
    revision: int = 0


class FakeDatamanager:
    """``PartitionOpener`` + the stored checkpoints. Knobs for the next checkpoint calls:
    ``fail_next`` (raise it once), ``gate`` (the call waits for it; ``entered`` is set first)."""

    def __init__(self) -> None:
        self.partitions: dict[str, _Partition] = {}
        self.calls: list[Checkpointed] = []
        self.fail_next: BaseException | None = None
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.claims = 0

    def part(self, name: str) -> _Partition:
        return self.partitions.setdefault(name, _Partition())

    async def open_partition(self, name: str, *, claim: bool = False) -> FakeWriter:
        part = self.part(name)
        if claim:
            part.revision += 1
            self.claims += 1
        return FakeWriter(self, name, part.revision)

    def entries(self, name: str, datatype: str) -> dict[str, bytes]:
        return dict(self.part(name).entries.get(datatype, {}))


class FakeWriter:
    """``PartitionStore`` of one partition, fenced once the pointer's revision moved."""

    def __init__(self, dm: FakeDatamanager, name: str, revision: int) -> None:
        self._dm = dm
        self._name = name
        self._revision = revision
        part = dm.part(name)
        self._manifest = Manifest(partition=name, seq=part.seq, offsets=dict(part.offsets))
        self._entries = {dt: dict(e) for dt, e in part.entries.items()}

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    async def load(self, datatype: str) -> list[tuple[str, bytes]]:
        return sorted(self._entries.get(datatype, {}).items())

    async def get(self, datatype: str, entry_id: str) -> bytes:
        try:
            return self._entries[datatype][entry_id]
        except KeyError:
            raise NotExist(f"{datatype}/{entry_id}") from None

    async def get_range(self, datatype: str, lo: str, hi: str) -> list[tuple[str, bytes]]:
        return sorted((k, v) for k, v in self._entries.get(datatype, {}).items() if lo <= k < hi)

    async def checkpoint(
        self,
        puts: Mapping[str, Mapping[str, bytes]],
        deletes: Mapping[str, Iterable[str]],
        offsets: Mapping[str, int],
        *,
        appends: Mapping[str, Mapping[str, bytes]] | None = None,
    ) -> Manifest:
        dm = self._dm
        appended = {dt: dict(e) for dt, e in (appends or {}).items() if e}
        dm.calls.append(
            Checkpointed(
                puts={dt: dict(e) for dt, e in puts.items()},
                deletes={dt: list(ids) for dt, ids in deletes.items()},
                offsets=dict(offsets),
                appends=appended,
            )
        )
        dm.entered.set()
        if dm.gate is not None:
            await dm.gate.wait()
        if dm.fail_next is not None:
            exc, dm.fail_next = dm.fail_next, None
            raise exc
        part = dm.part(self._name)
        if part.revision != self._revision:
            raise Fenced(f"{self._name}: the pointer moved")
        for dt, ids in deletes.items():
            for i in ids:
                part.entries.get(dt, {}).pop(i, None)
        for dt, e in [*puts.items(), *appended.items()]:
            part.entries.setdefault(dt, {}).update(e)
        part.offsets.update(offsets)
        part.seq += 1
        part.revision += 1
        self._revision = part.revision
        self._manifest = Manifest(partition=self._name, seq=part.seq, offsets=dict(part.offsets))
        self._entries = {dt: dict(e) for dt, e in part.entries.items()}
        return self._manifest


def storage_down() -> StorageError:
    return StorageError("object storage did not answer", retriable=True)


# --------------------------------------------------------------------------- records, wiring
@dataclass(slots=True)
class FakeHooks:
    """``OwnerHooks``: what the owner asked of the wiring."""

    seeks: list[tuple[int, int]] = field(default_factory=list)
    crashes: list[BaseException] = field(default_factory=list)
    fenced_owners: list[object] = field(default_factory=list)
    wrong_storages: list[MissingManifest] = field(default_factory=list)
    acked: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset), in order

    def acks(self, offset: int, partition: int = 0) -> int:
        """How many times the record at ``offset`` of ``partition`` was acknowledged."""
        return self.acked.count((partition, offset))

    def ack(self, partition: int, offsets: Iterable[int]) -> None:
        self.acked.extend((partition, offset) for offset in offsets)

    async def seek(self, partition: int, offset: int) -> None:
        self.seeks.append((partition, offset))

    async def crash(self, exc: BaseException) -> None:
        self.crashes.append(exc)

    def wrong_storage(self, exc: MissingManifest) -> None:
        self.wrong_storages.append(exc)

    def fenced(self, partition: int, owner: object) -> None:
        self.fenced_owners.append(owner)
