"""Executors' heartbeats: the one shape of a record of ``runs.heartbeats``.

An executor claims tasks and proves it is alive with heartbeats, one per executor (not per
task), every :func:`heartbeat_interval_ms` of its lease. A heartbeat says "I am alive, and hold my
claims for ``lease_ms`` more milliseconds from now": every worker hears every heartbeat
(``agents.liveness``), and the partition owners release the tasks of an executor whose lease
lapsed. Heartbeats are not facts about a run and never go to ``runs.events``: they live on
``runs.heartbeats`` (key = executor id, compacted, short retention; docs/events.md).

Like every shape of ``events``, :class:`Heartbeat` is the one declaration: the follower decodes
with it, the API builds it, and ``docs/schemas/heartbeat.json`` is generated from it.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from events.errors import DecodeError, DecodeReason, validation_message
from events.model import Millis

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

MAX_EXECUTOR_ID = 200
#: An executor's id: the key of its heartbeats and the holder named by its claims.
ExecutorId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_EXECUTOR_ID,
        pattern="^[!-~]+(?![\\s\\S])",  # the end of the string in every dialect (not "$")
        description="printable ASCII without spaces, 1 to 200 characters; the same for the "
        "executor's whole life",
    ),
]

MIN_LEASE_MS = 1_000
MAX_LEASE_MS = 3_600_000
#: The lease of an executor that does not say (``runstream executors heartbeat``, the API).
DEFAULT_LEASE_MS = 30_000
LeaseMs = Annotated[
    int,
    Meta(
        ge=MIN_LEASE_MS,
        le=MAX_LEASE_MS,
        description="milliseconds the executor's claims stay alive after this heartbeat is "
        "received, 1000 (1 s) to 3600000 (1 h)",
    ),
]


def heartbeat_interval_ms(lease_ms: int) -> int:
    """How often an executor with lease ``lease_ms`` should send a heartbeat: a third of its
    lease, so that two heartbeats in a row may be lost or late before the lease lapses."""
    return lease_ms // 3


DEFAULT_HEARTBEAT_INTERVAL_MS = heartbeat_interval_ms(DEFAULT_LEASE_MS)


class Heartbeat(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
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
