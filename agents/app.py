"""The Faust application: topics of raw bytes (the events codec owns the wire format) and web routes."""

from __future__ import annotations

import logging
import socket
import tempfile
from pathlib import Path
from typing import Any

import faust

from agents import quirks
from agents.config import Settings

__all__ = ["FETCH_MAX_WAIT_MS", "Topics", "create_app", "self_url"]

log = logging.getLogger("runstream.app")

#: How long the broker may hold a fetch of the worker's consumer open while none of the
#: partitions in it has a new record. Faust fixes aiokafka's ``fetch_max_wait_ms`` at 1,500 ms
#: with no setting for it (``agents.quirks.override_fixed_fetch_wait``), and aiokafka sends no
#: fetch for a partition while a fetch to its broker is in flight: once the records of a busy
#: partition wait more than its prefetch backoff (100 ms: an event-loop hiccup) to be handed to
#: Faust, the next fetch goes out for the *idle* partitions of that broker alone, and the busy
#: one is fetched again only when the broker gives up on it. Every write then waited ~1.5 s for
#: its apply (bench/bench_api.py: bursts of 1.41-1.52 s applies, p99 of a creation 1.5-1.7 s in
#: about half the phases). 50 ms bounds that wait; an idle worker sends 20 empty fetches a second
#: for it. The materializer reads runs.events with a consumer of its own (agents.eventreader),
#: whose fetches wait as long when records come rarely (agents.fetchpolicy.LIGHT).
FETCH_MAX_WAIT_MS = 50


def self_url(settings: Settings) -> str:
    """This worker's API URL as the other workers reach it: ``--advertised-url``, else
    ``http://<web host>:<web port>`` (this machine's name when the API binds every address)."""
    if settings.advertised_url:
        return settings.advertised_url.rstrip("/")
    host = settings.web_host
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    return f"http://{host}:{settings.web_port}"


class Topics:
    """The runstream topics; values and keys are raw bytes, never faust Records."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        def raw(name: str) -> Any:
            return app.topic(
                name,
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
                partitions=settings.partitions,
                replicas=settings.replication,
            )

        self.events = raw(settings.topic_events)
        self.setup_errors = raw(settings.topic_setup_errors)
        self.phases = raw(settings.topic_phases)
        self.tasks = raw(settings.topic_tasks)
        self.dlq = raw(settings.topic_dlq)
        self.requests = raw(settings.topic_requests)
        self.replies = raw(settings.topic_replies)


def create_app(settings: Settings) -> faust.App:
    """A Faust app for ``settings``; the caller registers the agents. Faust's own web server is
    off: the HTTP API (``agents.api_server``) serves /api/v1, /healthz and /metrics on the same port."""
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka}",
        store="memory://",
        # Faust makes its data directory (for table stores, unused: store is memory) at start;
        # by default "<app id>-data" in the working directory, which left one empty folder per
        # app id in wherever a worker or a test ran.
        datadir=str(Path(tempfile.gettempdir()) / f"runstream-faust-{settings.app_id}"),
        web_enabled=False,
        # Every member announces this URL in the group metadata, and the assignor hands every
        # member the map URL → partitions: the API relays a request to its run's owner with it.
        canonical_url=self_url(settings),
        topic_replication_factor=settings.replication,
        topic_partitions=settings.partitions,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        # Records are acked only after the checkpoint that covers them (agents.materializer_service), so a
        # stopping worker must not wait for acks: the next owner resumes from the manifest.
        stream_wait_empty=False,
        broker_session_timeout=settings.session_timeout,
        # A worker that joined while the broker had no metadata for the topics (a broker restart)
        # gets an empty assignment until its next metadata refresh: keep that wait short.
        consumer_metadata_max_age_ms=30_000,
        broker_heartbeat_interval=max(0.5, settings.session_timeout / 5),
        # Dead letters carry the original record, which can be as large as the broker allows.
        producer_max_request_size=16 << 20,
        # A record's phase changes go out as one batch (agents.materializer_service); a batch that fills up
        # makes the next one wait for the broker's answer, so let one hold a large commit's
        # (the broker's default limit per batch is 1 MiB).
        producer_max_batch_size=512 << 10,
        consumer_max_fetch_size=16 << 20,
        # Internal changelog topics are not used: state lives in the datamanager, not in tables.
        topic_disable_leader=True,
    )
    app.runstream_settings = settings  # type: ignore[attr-defined]
    app.runstream_topics = Topics(app, settings)  # type: ignore[attr-defined]
    app.on_partitions_assigned.connect(_short_fetch_wait)  # type: ignore[arg-type]
    # A fetched record goes to its stream at once, not through four tasks (see the quirk).
    quirks.deliver_without_racing(app.consumer)
    # A produce request is written the moment its batch is there (see the quirk).
    quirks.faust_sends_promptly(app.producer, in_flight=settings.produce_in_flight)

    return app


async def _short_fetch_wait(app: faust.App, *_: Any, **__: Any) -> None:
    """``FETCH_MAX_WAIT_MS`` for the consumer's fetches, at every assignment (Faust has no
    setting for it: ``agents.quirks.override_fixed_fetch_wait``)."""
    if not quirks.override_fixed_fetch_wait(app, FETCH_MAX_WAIT_MS):
        log.warning("the Kafka consumer's fetcher was not found: fetches wait up to 1.5 s")
