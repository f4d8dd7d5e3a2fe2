"""Every etcd key and object key prefix the agents use, built in one place (zero-padded, so text
order is numeric order).

etcd keys are relative to the ``Settings.etcd_prefix`` that ``EtcdKv`` prepends. Every object key
a deployment writes lives under its own prefix, :func:`object_prefix` of that same etcd prefix
(``/runstream/`` → ``runstream/``): two deployments sharing one bucket never read or collect each
other's objects (issue 21).
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

__all__ = [
    "LEGACY_INDEX_PREFIX",
    "RUNDATA_BASE",
    "RUN_ID_SEQUENCE",
    "cluster_secret_key",
    "index_dump_lock",
    "index_prefix",
    "object_prefix",
    "run_request_key",
    "rundata_base",
    "scheduler_slots_key",
    "scheduler_slots_prefix",
    "setup_report_key",
]

#: Object key prefix, under the deployment's, of the materialized run state (:func:`rundata_base`).
RUNDATA_BASE = "rundata"
#: Where every deployment wrote its index dumps before issue 21 (``index/dumps/`` at the
#: storage root): never read, since any deployment on the bucket may have written them.
LEGACY_INDEX_PREFIX = ""
#: Name of the etcd sequence run ids are allocated from (``datamanager.keys.sequence_key``).
RUN_ID_SEQUENCE = "runs"


def object_prefix(etcd_prefix: str) -> str:
    """The object key prefix of the deployment whose etcd keys live under ``etcd_prefix``: its
    segments, each %-escaped where a key could not hold it, ending with ``/``
    (``/runstream/`` → ``runstream/``, ``/ci/prod`` → ``ci/prod/``; ``/`` or empty → ``_root/``)."""
    segments = [
        "%2E" * len(s) if s in (".", "..") else quote(s, safe="-_.~+=,@")
        for s in etcd_prefix.split("/")
        if s
    ]
    return "/".join(segments or ["_root"]) + "/"


def rundata_base(etcd_prefix: str) -> str:
    """The datamanager's ``base`` of the deployment: ``<object_prefix>rundata``."""
    return object_prefix(etcd_prefix) + RUNDATA_BASE


def index_prefix(etcd_prefix: str) -> str:
    """The ``indexer.DumpStore`` prefix of the deployment: its dumps are
    ``<object_prefix>index/dumps/...``."""
    return object_prefix(etcd_prefix)


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
