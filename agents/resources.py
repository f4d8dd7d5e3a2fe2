"""The worker's connections, built from ``Settings`` inside the running event loop."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from prometheus_client import Gauge

import ost
from agents.config import Settings
from agents.keys import rundata_base
from datamanager import DataManager, EtcdKv

__all__ = [
    "HEARTBEATS_RETENTION_MS",
    "TOPIC_CONFIG_UNSAFE",
    "Resources",
    "TopicWarning",
    "check_topic_config",
    "ensure_topics",
    "storage_url",
    "topic_configs",
    "topic_warnings",
]

log = logging.getLogger("runstream.resources")

TOPIC_CONFIG_UNSAFE = Gauge(
    "runstream_topic_config_unsafe",
    "1 when a setting of an input topic lets history be deleted or acknowledged events be lost "
    "(checked at start-up), else 0",
    ["topic", "setting"],
)


#: ``retention.ms`` of the heartbeats topic: a heartbeat matters for a lease (an hour at most),
#: so a day is plenty, and compaction keeps one record per executor besides.
HEARTBEATS_RETENTION_MS = 86_400_000


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
                    store,
                    kv,
                    base=rundata_base(self.settings.etcd_prefix),
                    max_file_size=self.settings.max_file_size,
                )
            return self._dm

    async def close(self) -> None:
        if self._kv is not None:
            await self._kv.close()


def topic_configs(settings: Settings, topic: str) -> dict[str, str]:
    """The settings runstream gives ``topic`` when it creates it: the input topics (the source of
    truth) keep their history (``retention.ms`` = ``--events-retention-ms``, -1 by default); with
    replication above 1, a write is acknowledged once replication − 1 replicas hold it. The
    heartbeats topic keeps the last heartbeat of each executor (compacted) and nothing older than
    a day (:data:`HEARTBEATS_RETENTION_MS`): it is read from its end, never replayed."""
    configs: dict[str, str] = {}
    if topic in (settings.topic_events, settings.topic_setup_errors):
        configs["retention.ms"] = str(settings.events_retention_ms)
    if topic == settings.topic_heartbeats:
        configs["cleanup.policy"] = "compact,delete"
        configs["retention.ms"] = str(HEARTBEATS_RETENTION_MS)
    if settings.replication > 1:
        configs["min.insync.replicas"] = str(settings.replication - 1)
    return configs


async def ensure_topics(settings: Settings) -> None:
    """Create the runstream topics when missing; refuse to run when ``runs.events``,
    ``runs.phases``, ``runs.tasks`` and ``runs.refusals`` differ in partitions (phase changes,
    ready tasks and answers go to the partition of the same number). One of those created
    beside an existing ``runs.events`` (an upgrade adding ``runs.tasks``) gets its partition
    count, whatever ``--partitions`` says. Then check the input topics' settings
    (:func:`topic_warnings`)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka, client_id="runstream-admin")
    await admin.start()
    try:
        names = [
            settings.topic_events,
            settings.topic_setup_errors,
            settings.topic_phases,
            settings.topic_dlq,
            settings.topic_requests,
            settings.topic_replies,
            settings.topic_heartbeats,
            settings.topic_refusals,
            settings.topic_tasks,
        ]
        same = [
            settings.topic_events,
            settings.topic_phases,
            settings.topic_tasks,
            settings.topic_refusals,
        ]
        existing = set(await admin.list_topics())
        partitions = dict.fromkeys(names, settings.partitions)
        if settings.topic_events in existing:
            [log_topic] = await admin.describe_topics([settings.topic_events])
            if log_topic["partitions"]:  # its outputs go to the partition of the same number
                partitions.update(dict.fromkeys(same, len(log_topic["partitions"])))
        missing = [
            NewTopic(
                n,
                num_partitions=partitions[n],
                replication_factor=settings.replication,
                topic_configs=topic_configs(settings, n),
            )
            for n in names
            if n not in existing
        ]
        if missing:
            await admin.create_topics(missing)
            log.info("created topics", extra={"topics": [t.name for t in missing]})
        for _ in range(100):  # new topics show their partitions in metadata shortly after
            described = await admin.describe_topics(same)
            counts = {d["topic"]: len(d["partitions"]) for d in described}
            if all(counts.values()):
                break
            await asyncio.sleep(0.1)
        if len(set(counts.values())) != 1:  # the outputs go to the partition of the same number
            raise RuntimeError(
                f"{', '.join(same[:-1])} and {same[-1]} must have the same number of partitions, "
                f"found {counts}"
            )
        await check_topics(admin, [settings.topic_events, settings.topic_setup_errors])
    finally:
        await admin.close()


# ------------------------------------------------------------------ the input topics' settings
@dataclass(frozen=True, slots=True, kw_only=True)
class TopicWarning:
    """A setting of an input topic that lets history be deleted or acknowledged events be lost."""

    topic: str
    setting: str
    value: str
    why: str

    def as_dict(self) -> dict[str, str]:
        return {"topic": self.topic, "setting": self.setting, "value": self.value, "why": self.why}


#: Every setting :func:`check_topic_config` judges (the metric has a series for each).
CHECKED = (
    "retention.ms",
    "retention.bytes",
    "cleanup.policy",
    "min.insync.replicas",
    "unclean.leader.election.enable",
)
_warnings: list[TopicWarning] = []


def topic_warnings() -> list[TopicWarning]:
    """The warnings of the last start-up check (empty when every input topic is safe)."""
    return list(_warnings)


def check_topic_config(topic: str, config: dict[str, str], replication: int) -> list[TopicWarning]:
    """Pure: what in an input topic's effective ``config`` (as DescribeConfigs reports it, broker
    defaults included) would delete history or lose acknowledged events."""
    out: list[TopicWarning] = []

    def warn(setting: str, why: str) -> None:
        out.append(TopicWarning(topic=topic, setting=setting, value=config[setting], why=why))

    if config.get("retention.ms", "-1") != "-1":
        warn("retention.ms", "records older than this are deleted: replay cannot rebuild state")
    if config.get("retention.bytes", "-1") != "-1":
        warn("retention.bytes", "the oldest records are deleted past this size: replay breaks")
    if "compact" in config.get("cleanup.policy", "delete"):
        warn("cleanup.policy", "compaction keeps one record per key: a run's history is lost")
    if replication >= 3 and int(config.get("min.insync.replicas", "1")) < 2:
        warn(
            "min.insync.replicas",
            f"with {replication} replicas, a write acknowledged by one replica is lost with it",
        )
    if config.get("unclean.leader.election.enable", "false") == "true":
        warn(
            "unclean.leader.election.enable",
            "an out-of-sync replica may become leader and drop acknowledged records",
        )
    return out


async def check_topics(admin: AIOKafkaAdminClient, topics: list[str]) -> list[TopicWarning]:
    """Read the topics' effective settings, log a warning for each unsafe one, set the
    ``runstream_topic_config_unsafe`` gauge and keep the list for :func:`topic_warnings`."""
    configs = await _describe_configs(admin, topics)
    replicas = {
        d["topic"]: max((len(p["replicas"]) for p in d["partitions"]), default=0)
        for d in await admin.describe_topics(topics)
    }
    found: list[TopicWarning] = []
    for topic in topics:
        warnings = check_topic_config(topic, configs.get(topic, {}), replicas.get(topic, 0))
        unsafe = {w.setting for w in warnings}
        for setting in CHECKED:
            TOPIC_CONFIG_UNSAFE.labels(topic, setting).set(1 if setting in unsafe else 0)
        found.extend(warnings)
    for w in found:
        log.warning("unsafe topic setting: %s", w.why, extra=w.as_dict())
    _warnings[:] = found
    return found


async def _describe_configs(
    admin: AIOKafkaAdminClient, topics: list[str]
) -> dict[str, dict[str, str]]:
    resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
    responses: list[Any] = await admin.describe_configs(resources)
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for error_code, _msg, _type, name, entries in response.resources:
            if error_code == 0:
                out[name] = {e[0]: e[1] for e in entries if e[1] is not None}
    return out
