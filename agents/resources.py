"""The worker's connections, built from ``Settings`` inside the running event loop."""

from __future__ import annotations

import asyncio
import logging
import os
from urllib.parse import urlsplit

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import ost
from agents.config import Settings
from agents.keys import RUNDATA_BASE
from datamanager import DataManager, EtcdKv

__all__ = ["Resources", "ensure_topics", "storage_url"]

log = logging.getLogger("runstream.resources")


def storage_url(url: str) -> str:
    """``file://./var/objects`` (relative, as in the defaults) → ``file:///abs/var/objects``."""
    parts = urlsplit(url)
    if parts.scheme == "file" and parts.netloc in (".", ".."):
        return "file://" + os.path.abspath(url[len("file://") :])
    return url


class Resources:
    """Object storage, etcd and the datamanager, created on first use in the worker's loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = asyncio.Lock()
        self._dm: DataManager | None = None
        self._kv: EtcdKv | None = None
        self._store: ost.ObjectStorage | None = None

    async def store(self) -> ost.ObjectStorage:
        async with self._lock:
            if self._store is None:
                s = self.settings
                self._store = ost.open_storage(
                    storage_url(s.storage), access_key=s.s3_access_key, secret_key=s.s3_secret_key
                )
            return self._store

    async def kv(self) -> EtcdKv:
        async with self._lock:
            if self._kv is None:
                self._kv = EtcdKv(self.settings.etcd, prefix=self.settings.etcd_prefix)
            return self._kv

    async def datamanager(self) -> DataManager:
        store, kv = await self.store(), await self.kv()
        async with self._lock:
            if self._dm is None:
                self._dm = DataManager(
                    store, kv, base=RUNDATA_BASE, max_file_size=self.settings.max_file_size
                )
            return self._dm

    async def close(self) -> None:
        if self._kv is not None:
            await self._kv.close()


async def ensure_topics(settings: Settings) -> None:
    """Create the four topics when missing; refuse to run when ``runs.events`` and
    ``runs.phases`` differ in partitions (phase changes go to the partition of the same number)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka, client_id="runstream-admin")
    await admin.start()
    try:
        names = [
            settings.topic_events,
            settings.topic_setup_errors,
            settings.topic_phases,
            settings.topic_dlq,
        ]
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(n, num_partitions=settings.partitions, replication_factor=settings.replication)
            for n in names
            if n not in existing
        ]
        if missing:
            await admin.create_topics(missing)
            log.info("created topics", extra={"topics": [t.name for t in missing]})
        for _ in range(100):  # new topics show their partitions in metadata shortly after
            described = await admin.describe_topics([settings.topic_events, settings.topic_phases])
            counts = {d["topic"]: len(d["partitions"]) for d in described}
            if all(counts.values()):
                break
            await asyncio.sleep(0.1)
        if counts.get(settings.topic_events) != counts.get(settings.topic_phases):
            raise RuntimeError(
                f"{settings.topic_events} and {settings.topic_phases} must have the same number of "
                f"partitions, found {counts}"
            )
    finally:
        await admin.close()
