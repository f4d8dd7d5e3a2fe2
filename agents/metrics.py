"""Prometheus metrics of the worker's services (served at ``/metrics``); the partition engine's
own are in ``partition.metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = [
    "CONSUMER_FETCH_WAIT",
    "EXECUTORS_KNOWN",
    "HEARTBEATS",
    "HEARTBEATS_MALFORMED",
    "INDEX_BYTES",
    "INDEX_RUNS",
    "PARTITIONS_OWNED",
    "STUCK_RUNS",
    "STUCK_TASKS",
]

CONSUMER_FETCH_WAIT = Gauge(
    "runstream_consumer_fetch_wait_seconds",
    "How long the broker may hold a fetch of the worker's reader of runs.events for more "
    "records: short and for the first record while records come rarely, 2 ms for 64 KiB "
    "under load (agents.fetchpolicy)",
)
PARTITIONS_OWNED = Gauge("runstream_partitions_owned", "runs.events partitions this worker owns")
INDEX_RUNS = Gauge("runstream_index_runs", "Runs in this worker's run index")
INDEX_BYTES = Gauge(
    "runstream_index_bytes",
    "Bytes this worker's run index holds (columns, posting lists, groups, names); every 10 s",
)
HEARTBEATS = Counter(
    "runstream_heartbeats_received",
    "Executors' heartbeats this worker read from runs.heartbeats (agents.liveness)",
)
HEARTBEATS_MALFORMED = Counter(
    "runstream_heartbeats_malformed",
    "Records of runs.heartbeats this worker could not read as a heartbeat, skipped",
)
EXECUTORS_KNOWN = Gauge(
    "runstream_executors_known",
    "Executors this worker heard a heartbeat from in the last hour",
)
STUCK_RUNS = Gauge(
    "runstream_stuck_runs",
    "Active runs of this worker's partitions with no progress for longer than --stuck-after",
)
STUCK_TASKS = Gauge(
    "runstream_stuck_tasks",
    "Tasks running or claimed, in those runs, since before --stuck-after",
)
