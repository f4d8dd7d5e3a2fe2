"""Executors' heartbeats: the one shape of a record of ``runs.heartbeats``.

An executor claims tasks and proves it is alive with heartbeats, one per executor (not per
task), every :func:`heartbeat_interval_ms` of its lease. A heartbeat says "I am alive, and hold my
claims for ``lease_ms`` more milliseconds from now": every worker hears every heartbeat
(``agents.liveness``), and the partition owners release the tasks of an executor whose lease
lapsed. Heartbeats are not facts about a run and never go to ``runs.events``: they live on
``runs.heartbeats`` (key = executor id, compacted, short retention; docs/events.md).

Like every shape of ``events``, :class:`Heartbeat` is the one declaration: the follower decodes
with it, the API builds it, and ``docs/schemas/heartbeat.json`` is generated from it. The executor
id and the lease's bounds are the claims' own (``events.model.ExecutorId``, ``Lease``; the default
lease ``events.catalogue.DEFAULT_LEASE_MS``), re-exported here.
"""

from __future__ import annotations

from typing import Annotated, get_args

import msgspec
from msgspec import Meta

from events.catalogue import DEFAULT_LEASE_MS
from events.errors import DecodeError, DecodeReason, validation_message
from events.model import ExecutorId, Lease, Millis, Shape

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL_MS",
    "DEFAULT_LEASE_MS",
    "MAX_EXECUTOR_ID",
    "MAX_LEASE_MS",
    "MIN_LEASE_MS",
    "ExecutorId",
    "Heartbeat",
    "LeaseMs",
    "decode_heartbeat",
    "encode_heartbeat",
    "heartbeat_interval_ms",
]

# The bounds, read from the declarations (for messages and tools; never a second copy).
_ID_META: Meta = get_args(ExecutorId)[1]
_LEASE_META: Meta = get_args(Lease)[1]
MAX_EXECUTOR_ID = int(_ID_META.max_length or 0)  # 200
MIN_LEASE_MS = int(_LEASE_META.ge or 0)  # 1 s
MAX_LEASE_MS = int(_LEASE_META.le or 0)  # 1 h
#: A heartbeat's lease: the bounds of a claim's (``events.model.Lease``), said of a heartbeat.
LeaseMs = Annotated[
    Lease,
    Meta(
        description="milliseconds the executor's claims stay alive after this heartbeat is "
        "received, 1000 (1 s) to 3600000 (1 h)"
    ),
]


def heartbeat_interval_ms(lease_ms: int) -> int:
    """How often an executor with lease ``lease_ms`` should send a heartbeat: a third of its
    lease, so that two heartbeats in a row may be lost or late before the lease lapses."""
    return lease_ms // 3


DEFAULT_HEARTBEAT_INTERVAL_MS = heartbeat_interval_ms(DEFAULT_LEASE_MS)


class Heartbeat(Shape):
    """The executor ``executor_id`` is alive; its claims hold for ``lease_ms`` from receipt.

    ``at`` is when the executor sent it (its clock, ms since the epoch): for people and tools.
    Liveness is judged on each worker's own clock, from when the worker received the heartbeat,
    so executors' clocks never decide a lease."""

    executor_id: ExecutorId
    lease_ms: LeaseMs
    at: Millis


_decoder = msgspec.json.Decoder(Heartbeat)
_encoder = msgspec.json.Encoder()


def encode_heartbeat(heartbeat: Heartbeat) -> bytes:
    """The JSON value of a ``runs.heartbeats`` record (its key is ``heartbeat.executor_id``)."""
    return _encoder.encode(heartbeat)


def decode_heartbeat(value: bytes) -> Heartbeat:
    """A ``runs.heartbeats`` record's value; ``DecodeError`` naming what is wrong."""
    try:
        return _decoder.decode(value)
    except msgspec.ValidationError as exc:
        raise DecodeError(DecodeReason.SCHEMA, validation_message(exc, Heartbeat)) from None
    except msgspec.DecodeError as exc:
        raise DecodeError(DecodeReason.INVALID_JSON, str(exc)) from None
