"""Every etcd key and object key prefix the agents use, built in one place (STYLE.md point 7).

etcd keys are relative to the ``Settings.etcd_prefix`` that ``EtcdKv`` prepends; object keys are
relative to the storage root.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "INDEX_PREFIX",
    "RUNDATA_BASE",
    "RUN_ID_SEQUENCE",
    "cluster_secret_key",
    "index_dump_lock",
    "run_request_key",
    "scheduler_slots_key",
    "scheduler_slots_prefix",
    "setup_report_key",
]

#: Object key prefix of the materialized run state (the datamanager's ``base``).
RUNDATA_BASE = "rundata"
#: Object key prefix of the index dumps (``indexer.DumpStore`` adds ``index/dumps/...``).
INDEX_PREFIX = ""
#: Name of the etcd sequence run ids are allocated from (``datamanager.keys.sequence_key``).
RUN_ID_SEQUENCE = "runs"


def index_dump_lock() -> str:
    """Name of the lease lock held while the index is dumped (one dumper at a time)."""
    return "index-dump"


def setup_report_key(report_id: str) -> str:
    """etcd key mapping a setup-error report to the run id allocated for it (exactly-once)."""
    return f"agents/setup-reports/{report_id}"


def run_request_key(request_id: str) -> str:
    """etcd key mapping a creation request (``runs.requests``) to the run id allocated for it."""
    return f"agents/run-requests/{request_id}"


def request_number_key(request_key: str) -> str:
    """etcd key holding the run number taken for the request whose run id is at
    ``request_key`` (:func:`run_request_key`, :func:`setup_report_key`): a retried request keeps
    its number. A prefix of its own, since a request id may contain "/"."""
    return "agents/request-numbers/" + request_key.removeprefix("agents/")


def cluster_secret_key() -> str:
    """etcd key of the secret the workers sign their hops with, when no
    ``RUNSTREAM_CLUSTER_SECRET`` is set (``agents.access``; put once, by the first worker)."""
    return "agents/cluster-secret"


def scheduler_slots_prefix() -> str:
    """etcd prefix of the scheduler's running slots, one key per group (``agents.scheduler``)."""
    return "agents/scheduler/slots/"


def scheduler_slots_key(group: str) -> str:
    """etcd key of ``group``'s running slots: a digest, since group paths are long and free-form
    (the value names the group)."""
    return scheduler_slots_prefix() + hashlib.blake2b(group.encode(), digest_size=16).hexdigest()
