"""The ports of a partition's owner (``partition.owner``): what it needs from the datamanager, the
log and the wiring, as ``typing.Protocol``s. The worker adapts the datamanager, Faust's producer
and consumer and bare aiokafka consumers to them (``agents.materializer_service``); unit tests use in-memory
fakes (``tests/fakes_owner.py``)."""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Protocol

from datamanager.errors import MissingManifest
from datamanager.manifest import Manifest

__all__ = [
    "LogReader",
    "LogSender",
    "OwnerHooks",
    "PartitionOpener",
    "PartitionStore",
    "RecordMeta",
]


class PartitionStore(Protocol):
    """The datamanager's handle on one partition (``datamanager.PartitionWriter``)."""

    @property
    def manifest(self) -> Manifest: ...

    async def load(self, datatype: str) -> list[tuple[str, bytes]]: ...

    async def get(self, datatype: str, entry_id: str) -> bytes:
        """Raises ``datamanager.errors.NotExist``."""
        ...

    async def get_range(self, datatype: str, lo: str, hi: str) -> list[tuple[str, bytes]]:
        """Entries with ``lo <= id < hi`` in id order, appended ones included."""
        ...

    async def checkpoint(
        self,
        puts: Mapping[str, Mapping[str, bytes]],
        deletes: Mapping[str, Iterable[str]],
        offsets: Mapping[str, int],
        *,
        appends: Mapping[str, Mapping[str, bytes]] | None = None,
    ) -> object:
        """Raises ``Fenced`` (the handle is dead) or a storage / etcd error (retry with the same
        changes). ``appends``: entries of append-only datatypes (written once, never rewritten
        by the checkpoint that adds them)."""
        ...


class PartitionOpener(Protocol):
    """What opens partitions (``datamanager.DataManager``)."""

    async def open_partition(self, name: str, *, claim: bool = False) -> PartitionStore: ...


class RecordMeta(Protocol):
    """Where the broker stored a sent record (aiokafka's ``RecordMetadata``)."""

    @property
    def topic(self) -> str: ...

    @property
    def offset(self) -> int: ...


class LogSender(Protocol):
    """Sends records to Kafka (the Faust producer in the worker)."""

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        partition: int | None,
        headers: Sequence[tuple[str, bytes]] | None,
    ) -> Awaitable[RecordMeta]:
        """Queue one record. Raises when it cannot be queued (e.g. too large); the awaitable
        resolves once the broker acknowledged it, or raises: then the record was not written."""
        ...

    async def send_batch(
        self, topic: str, partition: int, records: Sequence[tuple[bytes | None, bytes]]
    ) -> Awaitable[RecordMeta]:
        """Queue ``(key, value)`` records, in this order, for one partition (no headers).
        Raises when they cannot be queued; the awaitable resolves to where the *last* one was
        stored once the broker acknowledged them all, or raises: then some may be missing."""
        ...


class LogReader(Protocol):
    """Reads the log outside the consumer group (``agents.kafka``)."""

    async def log_bounds(self, topic: str) -> tuple[Mapping[int, int], Mapping[int, int]]:
        """For every partition of ``topic``: (partition → the first offset the log still holds,
        retention deletes older ones; partition → the end offset its reader reads up to)."""
        ...

    async def read_values(self, topic: str, partition: int, offset: int) -> list[bytes]:
        """The values of the records of ``topic``/``partition`` from ``offset`` to its end now."""
        ...


class OwnerHooks(Protocol):
    """What the owner asks of the wiring."""

    async def seek(self, partition: int, offset: int) -> None:
        """Make the consumer read ``partition`` again from ``offset``. Once it returned, the
        owner's ``handle`` is given only records read from ``offset`` on, in order: nothing read
        before (the first may be past ``offset`` where the offsets between hold no record, a
        transaction's marker say; the wiring calls ``skip_to`` where it read past such offsets
        with no record after them)."""
        ...

    async def crash(self, exc: BaseException) -> None:
        """Stop the worker: it restarts from the last checkpoints."""
        ...

    def ack(self, partition: int, offsets: Iterable[int]) -> None:
        """The records at ``offsets`` of ``partition`` are in a checkpoint: the consumer group
        may commit their offsets (Faust's acks)."""
        ...

    def fenced(self, partition: int, owner: object) -> None:
        """The owner ``owner`` of ``partition`` is dead (another owner took the partition):
        replace it if ``partition`` is still assigned here and ``owner`` is still its owner."""
        ...

    def wrong_storage(self, exc: MissingManifest) -> None:
        """The partition's manifest is missing where the deployment said it would be (the
        wrong bucket or prefix): no retry helps, so the worker stops saying what to fix."""
        ...
