"""Prometheus metrics of the partition engine (served with the worker's at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = [
    "CHECKPOINTS",
    "CHECKPOINT_SECONDS",
    "DEAD_LETTERS",
    "DECISIONS",
    "EVENTS",
    "EVENTS_REJECTED",
    "EXPIRED_OFFSETS",
    "PHASE_CHANGES",
    "RECORDS",
]

RECORDS = Counter("runstream_records_total", "Kafka records consumed by the materializer")
EVENTS = Counter(
    "runstream_events_total",
    "Events seen by the materializer, by outcome",
    ["outcome"],  # applied, duplicate, rejected
)
EVENTS_REJECTED = Counter(
    "runstream_events_rejected_total",
    "Events the materializer refused, by reason code (partition.admission.RefusalCode)",
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
EXPIRED_OFFSETS = Counter(
    "runstream_expired_offsets_total",
    "Offsets of runs.events a loading owner needed and the log no longer held (retention passed "
    "its checkpoint): records lost to the materialized state",
)
DECISIONS = Counter(
    "runstream_time_decisions_total",
    "Decisions taken from time and appended to runs.events (partition.decisions), by reason",
    ["reason"],  # executor_lost, timeout
)
