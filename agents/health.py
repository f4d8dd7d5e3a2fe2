"""Lag and readiness of a worker: what ``/healthz`` says and the lag gauges on ``/metrics``.

* Consumer lag per owned partition of ``runs.events``: records between the materializer's next
  offset and the log's end, and seconds — how long the oldest record not applied yet has been in
  the log (0 when caught up). Measured by :class:`LagMonitor` every few seconds with one bare
  consumer (no group), so the figures are at most ``interval`` seconds old.
* Index lag: records of ``runs.phases`` the run index has not applied yet (all partitions).
* :func:`readiness`: the detail ``/healthz`` answers. A worker is ready when its index is loaded
  and every partition it owns has loaded its checkpoint and applied the log up to where it ended
  at assignment. Lag after that and topic configuration warnings are reported, not "not ready":
  a probe that restarts a lagging worker only makes it lag more.
* :func:`stop_for`: a condition no retry cures (an etcd pointer naming a manifest the storage
  does not hold: :func:`wrong_storage_line`) is logged once, in one line saying what to do, told
  by ``/healthz`` (``fatal``, first of ``not_ready``) and stops the worker (exit 3,
  ``agents.worker``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Gauge

from agents.indexing import source_key
from agents.kafka import bare_consumer, partitions_of
from agents.resources import topic_warnings
from datamanager import MissingManifest
from partition.owner import PartitionOwner

__all__ = [
    "CONSUMER_LAG_RECORDS",
    "CONSUMER_LAG_SECONDS",
    "INDEX_LAG_RECORDS",
    "LagMonitor",
    "readiness",
]

log = logging.getLogger("runstream.health")

CONSUMER_LAG_RECORDS = Gauge(
    "runstream_consumer_lag_records",
    "Records of runs.events between the materializer's position and the log's end, per owned "
    "partition",
    ["partition"],
)
CONSUMER_LAG_SECONDS = Gauge(
    "runstream_consumer_lag_seconds",
    "Seconds the oldest runs.events record not applied yet has been in the log (0: caught up), "
    "per owned partition",
    ["partition"],
)
INDEX_LAG_RECORDS = Gauge(
    "runstream_index_lag_records",
    "Records of runs.phases (all partitions) the run index has not applied yet",
)


@dataclass(slots=True)
class Lag:
    """The last measurement (``records``/``seconds`` per partition; ``index``: records)."""

    records: dict[int, int] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    index: int | None = None
    at: float | None = None  # time.time() of the measurement


#: Seconds the lag monitor keeps the phases topic's partitions before asking again.
PARTITIONS_MAX_AGE = 300.0


class LagMonitor:
    """Measures the lag every ``interval`` seconds (``run_forever``; tests call ``once``)."""

    def __init__(
        self,
        *,
        bootstrap: str,
        events_topic: str,
        phases_topic: str,
        owners: Callable[[], Mapping[int, PartitionOwner]],
        index_offsets: Callable[[], Mapping[str, int] | None],
        interval: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bootstrap = bootstrap
        self.events_topic = events_topic
        self.phases_topic = phases_topic
        self._owners = owners
        self._index_offsets = index_offsets
        self.interval = interval
        self._clock = clock
        self.lag = Lag()
        self._labelled: set[int] = set()
        # (when asked, monotonic; the partitions of the phases topic)
        self._phases_parts: tuple[float, list[int]] | None = None

    def consumer(self) -> AbstractAsyncContextManager[AIOKafkaConsumer]:
        """The consumer :meth:`once` measures with. One record batch per partition is all a
        measurement reads (the broker returns a partition's first batch whatever its size):
        with the default 1 MiB, every measurement had the worker's event loop unpack up to a
        megabyte of events per partition it owns."""
        return bare_consumer(
            self.bootstrap, auto_offset_reset="earliest", max_partition_fetch_bytes=1
        )

    async def run_forever(self) -> None:
        async with self.consumer() as consumer:
            while True:
                try:
                    await self.once(consumer)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("measuring the lag failed; will retry")
                await asyncio.sleep(self.interval)

    async def once(self, consumer: AIOKafkaConsumer) -> Lag:
        """Measure now and set the gauges."""
        owners = dict(self._owners())
        ends = await _ends(consumer, self.events_topic, owners)
        now = self._clock()
        lag = Lag(at=now)
        oldest: dict[int, int] = {}  # partition → offset of the oldest record not applied
        for p, owner in owners.items():
            pm = owner.pm
            if pm is None or p not in ends:
                continue  # still loading: its position is not known yet
            lag.records[p] = max(0, ends[p] - pm.next_offset)
            if lag.records[p] > 0:
                oldest[p] = pm.next_offset
            else:
                lag.seconds[p] = 0.0
        for p, ts in (await _timestamps(consumer, self.events_topic, oldest)).items():
            lag.seconds[p] = max(0.0, now - ts / 1000)
        lag.index = await self._index_lag(consumer)
        self.lag = lag
        self._publish(lag)
        return lag

    async def _index_lag(self, consumer: AIOKafkaConsumer) -> int | None:
        offsets = self._index_offsets()
        if offsets is None:
            return None
        now = time.monotonic()
        if self._phases_parts is None or now - self._phases_parts[0] > PARTITIONS_MAX_AGE:
            # Asked of the cluster (the metadata of every topic of the cluster: a large response
            # to decode on the event loop), so not at every measurement.
            self._phases_parts = (now, await partitions_of(consumer, self.phases_topic))
        tps = [TopicPartition(self.phases_topic, p) for p in self._phases_parts[1]]
        ends = await consumer.end_offsets(tps) if tps else {}
        return sum(
            max(0, int(end) - offsets.get(source_key(tp.topic, tp.partition), 0))
            for tp, end in ends.items()
        )

    def _publish(self, lag: Lag) -> None:
        for p in self._labelled - set(lag.records):
            with contextlib.suppress(KeyError):
                CONSUMER_LAG_RECORDS.remove(str(p))
            with contextlib.suppress(KeyError):
                CONSUMER_LAG_SECONDS.remove(str(p))
        for p, n in lag.records.items():
            CONSUMER_LAG_RECORDS.labels(str(p)).set(n)
        for p, s in lag.seconds.items():
            CONSUMER_LAG_SECONDS.labels(str(p)).set(s)
        self._labelled = set(lag.records)
        if lag.index is not None:
            INDEX_LAG_RECORDS.set(lag.index)


async def _ends(
    consumer: AIOKafkaConsumer, topic: str, owners: Mapping[int, PartitionOwner]
) -> dict[int, int]:
    if not owners:
        return {}
    got = await consumer.end_offsets([TopicPartition(topic, p) for p in owners])
    return {tp.partition: end for tp, end in got.items()}


async def _timestamps(
    consumer: AIOKafkaConsumer, topic: str, offsets: Mapping[int, int]
) -> dict[int, int]:
    """The timestamp (ms) of the record at each partition's offset (missing when not fetched
    within a second: the next measurement tries again)."""
    if not offsets:
        return {}
    tps = {p: TopicPartition(topic, p) for p in offsets}
    consumer.assign(list(tps.values()))
    for p, tp in tps.items():
        consumer.seek(tp, offsets[p])
    out: dict[int, int] = {}
    deadline = time.monotonic() + 1.0
    while len(out) < len(tps) and time.monotonic() < deadline:
        batch = await consumer.getmany(*tps.values(), timeout_ms=200, max_records=len(tps))
        for tp, records in batch.items():
            if records and tp.partition not in out:
                out[tp.partition] = records[0].timestamp
                consumer.pause(tp)
    # Every partition stays paused until the next measurement: a partition assigned and not
    # paused is fetched in the background meanwhile (records read, unpacked and dropped on the
    # worker's event loop). Paused, not unassigned: a consumer with nothing assigned asks the
    # broker for the metadata of every topic of the cluster at each refresh.
    consumer.pause(*tps.values())
    return out


#: The one line a worker stopped for (None: running); see :func:`stop_for`.
_FATAL: list[tuple[str, str]] = []
_ON_FATAL: list[Callable[[str], object]] = []


def wrong_storage_line(exc: MissingManifest) -> str:
    """The line of a worker whose etcd pointer names a manifest its storage does not hold."""
    return (
        f"stopping: {exc}. This etcd prefix's pointers were written by workers using other "
        "storage. Either --storage (RUNSTREAM_STORAGE) is wrong: start with the storage this "
        "prefix was used with (the default is file://./var/objects); or --etcd-prefix "
        "(RUNSTREAM_ETCD_PREFIX) is wrong: it names another deployment's pointers; or the "
        "storage lost data: restore it, or start on a new --etcd-prefix (and `runstream "
        "replay` the log into it)"
    )


def stop_for(line: str, *, code: str) -> None:
    """Stop the worker for ``line``: logged once (error, with ``code``), answered by
    ``/healthz`` from now on, and passed to every :func:`on_fatal` callback (the worker's stops
    it). Later calls (other partitions meeting the same condition) change nothing."""
    if _FATAL:
        return
    _FATAL.append((line, code))
    log.critical(line, extra={"code": code})
    for callback in _ON_FATAL:
        callback(line)


def fatal() -> tuple[str, str] | None:
    """(line, code) the worker stops for, or None."""
    return _FATAL[0] if _FATAL else None


def on_fatal(callback: Callable[[str], object]) -> None:
    """Call ``callback(line)`` when :func:`stop_for` is first called (at once if it was)."""
    _ON_FATAL.append(callback)
    if _FATAL:
        callback(_FATAL[0][0])


def reset_fatal() -> None:
    """Forget the condition and the callbacks (tests running several workers in one process)."""
    _FATAL.clear()
    _ON_FATAL.clear()


def readiness(
    owners: Mapping[int, PartitionOwner],
    *,
    index_loaded: bool,
    lag: Lag | None = None,
    warnings: list[Any] | None = None,
) -> dict[str, Any]:
    """What ``/healthz`` answers: ``ready``, ``not_ready`` (one sentence per reason), the owned
    partitions with their progress and lag, the index, and the topic configuration warnings."""
    lag = lag or Lag()
    not_ready: list[str] = []
    partitions: list[dict[str, Any]] = []
    for p, owner in sorted(owners.items()):
        pm = owner.pm
        row: dict[str, Any] = {"partition": p}
        if owner.dead or owner.closed:
            row["state"] = "stopping"
            not_ready.append(f"partition {p} is being handed over")
        elif pm is None:
            row["state"] = "loading"
            not_ready.append(f"partition {p} is loading its checkpoint")
        else:
            row["next_offset"] = pm.next_offset
            row["catch_up_to"] = owner.catch_up_to
            if owner.serving:
                row["state"] = "serving"
            else:
                row["state"] = "catching_up"
                left = owner.catch_up_to - pm.next_offset
                row["records_to_catch_up"] = left
                not_ready.append(
                    f"partition {p} is catching up with the log ({left:,} records left)"
                )
        if owner.lost_offsets is not None:
            # Not a reason to be unready (it reads on; waiting would not bring them back), but
            # no one reading the health of the partition should miss it.
            start, first = owner.lost_offsets
            row["offsets_lost"] = {"from": start, "to": first, "count": first - start}
        if p in lag.records:
            row["lag_records"] = lag.records[p]
        if p in lag.seconds:
            row["lag_seconds"] = round(lag.seconds[p], 3)
        partitions.append(row)
    if not index_loaded:
        not_ready.append("the run index is not loaded yet")
    stopping = fatal()
    extra: dict[str, Any] = {}
    if stopping is not None:
        not_ready.insert(0, stopping[0])
        extra = {"fatal": {"code": stopping[1], "message": stopping[0]}}
    return {
        **extra,
        "ready": not not_ready,
        "not_ready": not_ready,
        "partitions": partitions,
        "index": {"loaded": index_loaded, "lag_records": lag.index},
        "lag_measured_at": lag.at,
        "topic_warnings": [
            _warning(w) for w in (topic_warnings() if warnings is None else warnings)
        ],
    }


def _warning(w: Any) -> dict[str, str]:
    return {"topic": w.topic, "setting": w.setting, "value": w.value, "why": w.why}
