"""Which executors are alive: every worker hears every heartbeat of ``runs.heartbeats``.

An executor proves it is alive with heartbeats, one per executor, every third of its lease
(``events.executors``). The partition owners release the tasks of an executor whose lease lapsed;
since it may hold tasks in any partition, every worker reads every partition of the heartbeats
topic (a bare consumer, no group, from the end at start: an old heartbeat proves nothing now).

* :class:`Liveness`: the table the owners query, Faust-free and clock-free (every call takes
  ``now``, local monotonic seconds): :meth:`Liveness.seen` records a heartbeat's receipt,
  :meth:`Liveness.lapsed` says whether an executor's lease lapsed. Executors not heard of for
  :data:`FORGET_AFTER` (an hour, the longest lease) are forgotten, so memory stays bounded.
* :class:`HeartbeatFollower`: the consumer feeding it; a record it cannot read is counted
  (``runstream_heartbeats_malformed_total``) and skipped, never a crash.
* :class:`HeartbeatSender`: appends a heartbeat keyed by executor id, returning once Kafka
  acknowledged it (``POST /api/v1/executors/{id}/heartbeat`` on any worker).
* :class:`Executors`: the three together, as the worker runs them and the API's port
  (``api.ports.Executors``). The worker puts its :class:`Liveness` on the Faust app as
  ``app.runstream_liveness`` (``agents.worker``), where the materializer's wiring finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from agents import metrics
from agents.config import Settings
from agents.kafka import assign_at, bare_consumer, log_bounds, partitions_of
from api.errors import Unavailable
from api.views import ExecutorSeen
from events.errors import DecodeError
from events.executors import MAX_LEASE_MS, Heartbeat, decode_heartbeat, encode_heartbeat

__all__ = [
    "FORGET_AFTER",
    "Executors",
    "HeartbeatFollower",
    "HeartbeatSender",
    "Liveness",
    "Seen",
]

log = logging.getLogger("runstream.liveness")

#: Seconds after which an executor not heard of is forgotten: the longest lease, so a forgotten
#: executor's lease had lapsed anyway.
FORGET_AFTER = MAX_LEASE_MS / 1000
#: At most one warning line about malformed heartbeats per this many seconds.
WARN_EVERY = 10.0
#: The follower's fetches: the broker answers once this many bytes wait, or after this many ms.
#: Heartbeats are then heard up to 200 ms after they are appended, in a few large fetches
#: instead of one per heartbeat: a later receipt only lengthens a lease a little, never shortens
#: it (bench/bench_heartbeats.py: the worker's CPU at 100 heartbeats/s).
FETCH_MIN_BYTES = 64 << 10
FETCH_MAX_WAIT_MS = 200

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Seen:
    """The last heartbeat received from an executor."""

    received: float  # this worker's monotonic clock, seconds
    lease_ms: int
    at: int  # when the executor says it sent it, ms since the epoch (its clock; shown only)


class Liveness:
    """The last heartbeat of every executor heard of in the last ``forget_after`` seconds.

    Times are this worker's monotonic clock in seconds, passed in (``now``), never read here.
    :meth:`lapsed` answers only while the worker is *listening* (its follower reads the topic:
    :meth:`listening` was called and :meth:`deaf` was not since): a worker that hears nothing
    cannot tell a dead executor from its own deafness, so it answers "not lapsed" then, and
    every executor gets a whole lease from when the worker started listening (again).
    """

    def __init__(self, *, forget_after: float = FORGET_AFTER) -> None:
        self.forget_after = forget_after
        self._seen: OrderedDict[str, Seen] = OrderedDict()  # oldest receipt first
        self.listening_since: float | None = None

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, executor_id: object) -> bool:
        return executor_id in self._seen

    # ------------------------------------------------------------------------ recording
    def listening(self, now: float) -> None:
        """The follower reads the topic from ``now`` on (positioned at its end)."""
        self.listening_since = now

    def deaf(self) -> None:
        """The follower stopped reading (it failed; it starts again from the end)."""
        self.listening_since = None

    def seen(self, executor_id: str, lease_ms: int, now: float, *, at: int = 0) -> None:
        """A heartbeat of ``executor_id`` with ``lease_ms`` was received at ``now``. The newest
        receipt counts (a ``now`` before the last one recorded does not move it back); its lease
        replaces the one before."""
        prev = self._seen.pop(executor_id, None)
        received = now if prev is None else max(now, prev.received)
        self._seen[executor_id] = Seen(received=received, lease_ms=lease_ms, at=at)
        self.forget(now)

    def forget(self, now: float) -> int:
        """Forget the executors not heard of for ``forget_after`` seconds; how many."""
        horizon = now - self.forget_after
        gone = 0
        while self._seen:
            first = next(iter(self._seen))
            if self._seen[first].received >= horizon:
                break
            del self._seen[first]
            gone += 1
        return gone

    # ------------------------------------------------------------------------ queries
    def get(self, executor_id: str) -> Seen | None:
        return self._seen.get(executor_id)

    def last_seen(self, executor_id: str) -> float | None:
        """When this worker last received a heartbeat of ``executor_id`` (None: not heard of)."""
        seen = self._seen.get(executor_id)
        return None if seen is None else seen.received

    def lapsed(self, executor_id: str, lease_ms_of_claim: int, since: float, now: float) -> bool:
        """Has the lease of ``executor_id`` lapsed at ``now``?

        Last seen = the latest of its last heartbeat's receipt, ``since`` (when the caller
        started watching it: an owner that just took a partition heard no earlier heartbeat, so
        every holder gets a whole lease from then) and when this worker started listening. The
        lease is its last heartbeat's ``lease_ms`` when one was heard, else the claim's. Lapsed
        when more than the lease passed since (exactly the lease is not lapsed); never while the
        worker is not listening."""
        if self.listening_since is None:
            return False
        last = max(since, self.listening_since)
        lease_ms = lease_ms_of_claim
        seen = self._seen.get(executor_id)
        if seen is not None:
            last = max(last, seen.received)
            lease_ms = seen.lease_ms
        return (now - last) * 1000 > lease_ms


# ---------------------------------------------------------------------------- the follower
class HeartbeatFollower:
    """Reads every partition of the heartbeats topic from its end into a :class:`Liveness`.

    ``started`` is set once the consumer is positioned (heartbeats sent after that are heard).
    When the consumer fails it logs, the liveness goes deaf, and it starts again from the end
    after ``retry_seconds``."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        liveness: Liveness,
        *,
        clock: Clock = time.monotonic,
        poll_ms: int = 500,
        retry_seconds: float = 1.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.liveness = liveness
        self.clock = clock
        self.poll_ms = poll_ms
        self.retry_seconds = retry_seconds
        self.started = asyncio.Event()
        self.received = 0
        self.malformed = 0
        self._warned_at: float | None = None
        self._unwarned = 0

    def handle(self, key: bytes | None, value: bytes | None, now: float) -> bool:
        """Record one record's heartbeat as received at ``now``; False (counted) when the
        record is not a heartbeat, or its key is not its executor id."""
        if value is None:
            return self._skip("no_value", "a record without a value (a tombstone)", now)
        try:
            hb = decode_heartbeat(value)
        except DecodeError as exc:
            return self._skip(str(exc.reason), exc.message, now)
        if key is not None and key != hb.executor_id.encode():
            why = f"key {key[:40]!r} is not its executor_id {hb.executor_id!r}"
            return self._skip("key", why, now)
        self.liveness.seen(hb.executor_id, hb.lease_ms, now, at=hb.at)
        self.received += 1
        metrics.HEARTBEATS.inc()
        return True

    def _skip(self, reason: str, message: str, now: float) -> bool:
        """Count a malformed record; log it, at most one line per ``WARN_EVERY`` seconds."""
        self.malformed += 1
        metrics.HEARTBEATS_MALFORMED.inc()
        if self._warned_at is not None and now - self._warned_at < WARN_EVERY:
            self._unwarned += 1
            return False
        log.warning(
            "skipped a malformed heartbeat: %s",
            message,
            extra={"topic": self.topic, "reason": reason, "left_out": self._unwarned},
        )
        self._warned_at, self._unwarned = now, 0
        return False

    async def run(self) -> None:
        """Follow the topic until cancelled."""
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the heartbeats consumer failed; reading on from the end")
            self.liveness.deaf()
            await asyncio.sleep(self.retry_seconds)

    async def _follow(self) -> None:
        async with bare_consumer(
            self.bootstrap,
            auto_offset_reset="latest",
            fetch_min_bytes=FETCH_MIN_BYTES,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        ) as consumer:
            parts = await partitions_of(consumer, self.topic)
            if not parts:
                raise RuntimeError(f"topic {self.topic} has no partitions")
            _, ends = await log_bounds(consumer, self.topic, parts)
            assign_at(consumer, self.topic, ends)
            self.liveness.listening(self.clock())
            self.started.set()
            while True:
                batch = await consumer.getmany(timeout_ms=self.poll_ms, max_records=5000)
                now = self.clock()
                for msgs in batch.values():
                    for m in msgs:
                        self.handle(m.key, m.value, now)
                self.liveness.forget(now)
                metrics.EXECUTORS_KNOWN.set(len(self.liveness))


# ---------------------------------------------------------------------------- the sender
class HeartbeatSender:
    """Appends heartbeats to the heartbeats topic, keyed by executor id; one producer (idempotent,
    ``acks=all``) started on first use, as the API's appends to ``runs.events``."""

    def __init__(self, bootstrap: str, topic: str, *, timeout: float = 10.0) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.timeout = timeout
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def _started(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._closed:
                raise Unavailable("this worker is stopping; send the heartbeat to another")
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    client_id="runstream-heartbeats",
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=1,
                )
                try:
                    await producer.start()
                except BaseException:  # Kafka down, or the caller's timeout: nothing left open
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def send(self, heartbeat: Heartbeat) -> None:
        """Returns once Kafka acknowledged the record; ``Unavailable`` (503) when it did not
        within ``timeout`` seconds or refused it."""
        try:
            async with asyncio.timeout(self.timeout):
                producer = await self._started()
                await producer.send_and_wait(
                    self.topic, encode_heartbeat(heartbeat), key=heartbeat.executor_id.encode()
                )
        except TimeoutError:
            raise Unavailable(
                f"Kafka did not acknowledge the heartbeat within {self.timeout:g} s; retry"
            ) from None
        except KafkaError as exc:
            raise Unavailable(f"Kafka refused the heartbeat ({exc}); retry") from None

    async def stop(self) -> None:
        async with self._lock:
            self._closed = True
            producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()


# ---------------------------------------------------------------------------- in the worker
class Executors:
    """The worker's heartbeat path: its :class:`Liveness`, the follower feeding it and the
    sender; ``api.ports.Executors`` for the API. :meth:`run` is a worker task."""

    def __init__(self, settings: Settings, *, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.liveness = Liveness()
        self.follower = HeartbeatFollower(
            settings.kafka, settings.topic_heartbeats, self.liveness, clock=clock
        )
        self.sender = HeartbeatSender(
            settings.kafka, settings.topic_heartbeats, timeout=settings.apply_timeout
        )

    async def heartbeat(self, heartbeat: Heartbeat) -> None:
        await self.sender.send(heartbeat)

    def seen(self, executor_id: str) -> ExecutorSeen | None:
        seen = self.liveness.get(executor_id)
        if seen is None:
            return None
        now = self.clock()
        return ExecutorSeen(
            executor_id=executor_id,
            lease_ms=seen.lease_ms,
            at=seen.at,
            seen_ms_ago=max(0, int((now - seen.received) * 1000)),
            lapsed=self.liveness.lapsed(executor_id, seen.lease_ms, seen.received, now),
        )

    async def run(self) -> None:
        try:
            await self.follower.run()
        finally:
            await self.sender.stop()
