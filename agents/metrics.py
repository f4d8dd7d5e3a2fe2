"""Prometheus metrics of the worker (served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "CHECKPOINTS",
    "CHECKPOINT_SECONDS",
    "DEAD_LETTERS",
    "DECISIONS",
    "EVENTS",
    "EVENTS_REJECTED",
    "EXECUTORS_KNOWN",
    "HEARTBEATS",
    "HEARTBEATS_MALFORMED",
    "INDEX_RUNS",
    "PARTITIONS_OWNED",
    "PHASE_CHANGES",
    "RECORDS",
    "STUCK_RUNS",
    "STUCK_TASKS",
]

RECORDS = Counter("runstream_records_total", "Kafka records consumed by the materializer")
EVENTS = Counter(
    "runstream_events_total",
    "Events seen by the materializer, by outcome",
    ["outcome"],  # applied, duplicate, rejected
)
EVENTS_REJECTED = Counter(
    "runstream_events_rejected_total",
    "Events the materializer refused, by reason code (agents.admission.RefusalCode)",
    ["reason"],
)
DEAD_LETTERS = Counter(
    "runstream_dead_letters_total", "Records sent to the dead-letter topic", ["reason"]
)
PHASE_CHANGES = Counter("runstream_phase_changes_total", "run.phase_changed events emitted")
CHECKPOINTS = Counter(
    "runstream_checkpoints_total", "Partition checkpoints, by outcome", ["outcome"]
)
CHECKPOINT_SECONDS = Histogram(
    "runstream_checkpoint_seconds", "Time to write one partition checkpoint"
)
PARTITIONS_OWNED = Gauge("runstream_partitions_owned", "runs.events partitions this worker owns")
INDEX_RUNS = Gauge("runstream_index_runs", "Runs in this worker's run index")
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
DECISIONS = Counter(
    "runstream_time_decisions_total",
    "Decisions taken from time and appended to runs.events (agents.decisions), by reason",
    ["reason"],  # executor_lost, timeout
)
STUCK_RUNS = Gauge(
    "runstream_stuck_runs",
    "Active runs of this worker's partitions with no progress for longer than --stuck-after",
)
STUCK_TASKS = Gauge(
    "runstream_stuck_tasks",
    "Tasks running or claimed, in those runs, since before --stuck-after",
)
