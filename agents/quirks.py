"""Faust's and aiokafka's quirks, and runstream's workaround for each, in one place.

Everything here reaches past the libraries' public API (a private attribute, a method of a
concrete class that its interface does not declare) or works around behaviour they document
nowhere. Each workaround is one small function named for what it works around, with the upstream
code or issue it answers and the versions it was verified against (:data:`VERIFIED`). The rest of
runstream calls these functions and never touches the libraries' insides itself.

``tests/unit/test_quirks.py`` and ``tests/integration/test_quirks.py`` fail when the libraries
change under a workaround: a private attribute gone from a real started consumer or producer, a
default we override that moved, the behaviour we work around no longer occurring (then drop the
workaround), or an installed version outside the range verified here (then read the upstream
code again and widen the range).

Upstream links point at the tags verified: faust-streaming v0.15.2 (the installed 0.15.3 ships
the same sources) and aiokafka v0.14.0.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol, cast

from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import (
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.producer.sender import SendProduceReqHandler
from aiokafka.protocol.metadata import MetadataRequest

if TYPE_CHECKING:  # the bare-consumer tools import this module without loading Faust
    import faust
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from faust.types.transports import ConsumerT, ProducerT

__all__ = [
    "FAUST_FETCH_MAX_WAIT_MS",
    "VERIFIED",
    "consumed_position",
    "consumer_fetcher",
    "deliver_without_racing",
    "faust_sends_promptly",
    "fetch_promptly",
    "getmany_promptly",
    "override_fixed_fetch_wait",
    "producer_for_batches",
    "send_promptly",
    "set_fetch_wait",
    "stop_despite_stray_cancel",
    "take_what_is_there",
    "uncached_partitions_for_topic",
]

#: distribution → (lowest version verified, first version not verified): the installed versions
#: must fall in these ranges (``tests/unit/test_quirks.py``). Before widening a range, read the
#: upstream code each quirk below links to, at the new version.
VERIFIED: dict[str, tuple[str, str]] = {
    "faust-streaming": ("0.15.2", "0.16"),
    "aiokafka": ("0.14.0", "0.15"),
}


# ------------------------------------------------------------------------------------- Faust
#: What Faust fixes aiokafka's ``fetch_max_wait_ms`` at for the worker's consumer.
FAUST_FETCH_MAX_WAIT_MS = 1500


class FetchWait(Protocol):
    """aiokafka's ``Fetcher``, as far as :func:`override_fixed_fetch_wait` uses it."""

    _fetch_max_wait_ms: int
    _fetch_min_bytes: int


def consumer_fetcher(app: faust.App) -> FetchWait | None:
    """aiokafka's fetcher inside the Faust app's consumer (``app.consumer._thread._consumer.
    _fetcher``), ``None`` when the consumer is not started or the path is not there any more.
    Read by :func:`override_fixed_fetch_wait`."""
    thread = getattr(app.consumer, "_thread", None)
    fetcher = getattr(getattr(thread, "_consumer", None), "_fetcher", None)
    return cast(FetchWait, fetcher) if hasattr(fetcher, "_fetch_max_wait_ms") else None


def override_fixed_fetch_wait(app: faust.App, wait_ms: int, *, min_bytes: int = 1) -> bool:
    """Works around Faust fixing ``fetch_max_wait_ms`` at 1,500 ms with no setting for it (nor
    for ``fetch_min_bytes``: aiokafka's default, 1): sets ``wait_ms`` and ``min_bytes`` on
    aiokafka's fetcher of the app's consumer. Returns ``False`` when the fetcher was not found
    (nothing changed).

    Why runstream needs a shorter wait is told where it is set (``agents.app.FETCH_MAX_WAIT_MS``),
    and when fetches wait for more bytes in ``agents.fetchpolicy``. The fetcher exists once the
    consumer has started, and it reads both values each time it builds a fetch request, so call
    it at every assignment (``app.on_partitions_assigned``: a public signal) and whenever the
    policy changes; setting an ``int`` attribute from the event loop's thread while aiokafka runs
    in Faust's consumer thread is safe.

    Upstream (faust-streaming 0.15.2 / aiokafka 0.14.0):

    * Faust's fixed value: https://github.com/faust-streaming/faust/blob/v0.15.2/faust/transport/drivers/aiokafka.py#L615
      (``faust.Settings`` has no setting for it);
    * aiokafka stores them at https://github.com/aio-libs/aiokafka/blob/v0.14.0/aiokafka/consumer/fetcher.py#L405-L407
      and reads them for every request at https://github.com/aio-libs/aiokafka/blob/v0.14.0/aiokafka/consumer/fetcher.py#L663-L664.
    """
    fetcher = consumer_fetcher(app)
    if fetcher is None:
        return False
    fetcher._fetch_max_wait_ms = wait_ms
    fetcher._fetch_min_bytes = min_bytes
    return True


def set_fetch_wait(consumer: AIOKafkaConsumer, wait_ms: int, *, min_bytes: int = 1) -> None:
    """Works around aiokafka fixing ``fetch_max_wait_ms`` and ``fetch_min_bytes`` when a consumer
    is made: sets both on a started bare consumer's fetcher (its private ``_fetcher``, made by
    ``start``), which reads them for every fetch request it builds, as
    :func:`override_fixed_fetch_wait` does inside Faust's consumer. What the worker's reader of
    ``runs.events`` (``agents.eventreader``) changes with the load (``agents.fetchpolicy``).

    Upstream (aiokafka 0.14.0): the same lines as :func:`override_fixed_fetch_wait`; the fetcher
    is made in ``AIOKafkaConsumer.start``:
    https://github.com/aio-libs/aiokafka/blob/v0.14.0/aiokafka/consumer/consumer.py#L384.
    """
    fetcher = cast(FetchWait, cast(Any, consumer)._fetcher)
    fetcher._fetch_max_wait_ms = wait_ms
    fetcher._fetch_min_bytes = min_bytes


def consumed_position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """Works around ``AIOKafkaConsumer.position`` being a coroutine that may wait for an offset
    reset: the offset ``tp`` was read up to, without waiting (``None``: no position yet, or not
    assigned). Past control records and aborted batches it is beyond the last record returned:
    aiokafka moves the position over them (``PartitionRecords.next_fetch_offset``) and returns no
    record; the reader of ``runs.events`` hands that position to the owner
    (``agents.eventreader``) so that a partition whose next offset is a transaction's marker
    reads on.

    Upstream (aiokafka 0.14.0): the subscription's assignment state, as ``position`` reads it:
    https://github.com/aio-libs/aiokafka/blob/v0.14.0/aiokafka/consumer/consumer.py#L652 and
    https://github.com/aio-libs/aiokafka/blob/v0.14.0/aiokafka/consumer/fetcher.py#L251.
    """
    subscription = cast(Any, consumer)._subscription
    if not subscription.is_assigned(tp):
        return None
    state = subscription.subscription.assignment.state_value(tp)
    return cast(int, state.position) if state.has_valid_position else None


async def getmany_promptly(
    consumer: AIOKafkaConsumer, *, wait: float, max_records: int, fetch_now: bool = True
) -> dict[TopicPartition, list[Any]]:
    """Works around ``AIOKafkaConsumer.getmany`` waking its caller three turns of the event loop
    after a fetch brought records: the fetch task's end wakes the fetcher's routine through
    ``asyncio.wait`` (the task's done callback, then the routine), the routine completes the
    fetch waiter, and ``getmany`` waits for that waiter through ``asyncio.wait`` again (its
    callback, then the caller). Each turn costs the event loop's lag, 2-6 ms on a busy worker.

    Here the fetcher's fetch coroutine (its private ``_proc_fetch_request``, on the instance, as
    the routine calls it) is wrapped to complete the waiters itself as it returns with new
    records (:func:`_wake_waiters_from_fetch`; the routine's own wake-up later finds them done),
    and the waiter (the fetcher's private ``_create_fetch_waiter``, the call ``getmany`` makes)
    is awaited itself, under ``asyncio.timeout``: the caller wakes one turn after the fetch.
    What ``getmany`` returns is unchanged: records already fetched are taken without waiting, an
    error the fetcher sets on the waiter is raised, ``{}`` once ``wait`` seconds passed or the
    consumer stopped meanwhile, ``ConsumerStoppedError`` when it was stopped before. On a
    consumer with :func:`fetch_promptly`, and with ``fetch_now``, the next fetch request is
    written as the records are taken.

    Code: https://github.com/aio-libs/aiokafka/blob/v0.14.0/aiokafka/consumer/fetcher.py#L1209-L1268
    (``fetched_records``), https://github.com/aio-libs/aiokafka/blob/v0.14.0/aiokafka/consumer/fetcher.py#L463-L470
    (``_create_fetch_waiter``), https://github.com/aio-libs/aiokafka/blob/v0.14.0/aiokafka/consumer/fetcher.py#L560-L577
    (the routine's wake-up of the waiters).
    """
    fetcher = cast(Any, consumer)._fetcher
    _wake_waiters_from_fetch(fetcher)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        # Raises ConsumerStoppedError when the consumer was stopped before the call, as getmany.
        got: dict[TopicPartition, list[Any]] = await consumer.getmany(
            timeout_ms=0, max_records=max_records
        )
        if got:
            if fetch_now:
                _fetch_now(fetcher)  # the next fetch goes now, if these were the last fetched
            return got
        if loop.time() >= deadline:
            return got
        waiter = fetcher._create_fetch_waiter()
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except TimeoutError:
            return {}
        if cast(Any, consumer)._closed:  # stopped while waiting: {} as getmany returns
            return {}
        # Woken: records came (or a wake-up for records taken already: wait on).


async def fetch_promptly(consumer: AIOKafkaConsumer) -> None:
    """Works around aiokafka's consumer writing its next fetch request three turns of the event
    loop after the last fetch returned: its fetcher's routine learns of the fetch's end through
    ``asyncio.wait`` (a done callback, then the routine) and sends the next request from a new
    task, while the records that reach the broker meanwhile wait for it. Call it on a started
    consumer before it is assigned anything.

    This replaces the fetcher's routine (its private ``_fetch_task``, started by the fetcher's
    constructor, waiting for an assignment until then) with a copy
    (:func:`_prompt_fetch_routine`) that writes each request from its own step (the fetch
    coroutine's first step runs there, a task drives the rest), and marks the broker free and
    wakes the routine from the fetch coroutine's own end (upstream: from the task's done
    callback, a turn later). :func:`getmany_promptly` then writes the next fetch request the
    moment it has taken the last records fetched (:func:`_fetch_now`), in the caller's turn, as
    the routine would two turns later: what a fetch asks for is upstream's
    (``_get_actions_per_node``); a broker still has at most one fetch in flight.

    Code: https://github.com/aio-libs/aiokafka/blob/v0.14.0/aiokafka/consumer/fetcher.py#L476-L582
    (``_fetch_requests_routine``), https://github.com/aio-libs/aiokafka/blob/v0.14.0/aiokafka/consumer/fetcher.py#L440
    (the routine started by the constructor).
    """
    fetcher = cast(Any, consumer)._fetcher
    if getattr(fetcher, "_runstream_fetches_promptly", False):
        return
    subscription = fetcher._subscriptions.subscription
    if subscription is not None and subscription.assignment is not None:
        raise ValueError("fetch_promptly needs a consumer not assigned anything yet")
    _wake_waiters_from_fetch(fetcher)
    upstream = fetcher._fetch_task
    upstream.cancel()
    try:
        await upstream
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    fetcher._fetch_task = asyncio.get_running_loop().create_task(_prompt_fetch_routine(fetcher))
    fetcher._runstream_fetches_promptly = True


def _start_fetch_task(fetcher: Any, coro: Any, node_id: int) -> None:
    """Upstream's ``start_pending_task`` (inside the routine), but started at once, and the
    broker marked free and the routine woken by the coroutine's end (:func:`fetch_promptly`)."""
    fetcher._in_flight.add(node_id)

    async def fetch() -> Any:
        try:
            return await coro
        finally:
            fetcher._in_flight.discard(node_id)
            fetcher._notify(fetcher._wait_consume_future)

    task = _started_at_once(fetch())
    if task is not None:
        fetcher._pending_tasks.add(task)


def _fetch_now(fetcher: Any) -> None:
    """The fetch requests the routine would send now, sent now (:func:`fetch_promptly`)."""
    if not getattr(fetcher, "_runstream_fetches_promptly", False) or fetcher._closed:
        return
    assignment = getattr(fetcher, "_runstream_waiting_with", None)
    if assignment is None or not assignment.active:
        return
    fetch_requests = fetcher._get_actions_per_node(assignment)[0]
    for node_id, request in fetch_requests:
        _start_fetch_task(fetcher, fetcher._proc_fetch_request(assignment, node_id, request), node_id)  # fmt: skip


async def _prompt_fetch_routine(fetcher: Any) -> None:
    """aiokafka's ``Fetcher._fetch_requests_routine`` (v0.14.0), changed as
    :func:`fetch_promptly` says. The lines not marked are upstream's."""
    try:
        assignment = None
        while True:
            if assignment is None or not assignment.active:
                for task in fetcher._pending_tasks:
                    if not task.done():
                        task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                fetcher._pending_tasks.clear()
                fetcher._records.clear()

                subscription = fetcher._subscriptions.subscription
                if subscription is None or subscription.assignment is None:
                    try:
                        waiter = fetcher._subscriptions.wait_for_assignment()
                        await waiter
                    except KafkaError:
                        continue
                assignment = fetcher._subscriptions.subscription.assignment
            assert assignment is not None
            assert assignment.active

            fetcher._wait_consume_future = asyncio.get_running_loop().create_future()
            (
                fetch_requests,
                reset_requests,
                timeout,
                invalid_metadata,
                resume_futures,
            ) = fetcher._get_actions_per_node(assignment)

            # runstream: each request written now; the broker freed by the coroutine's end.
            for node_id, request in fetch_requests:
                _start_fetch_task(
                    fetcher, fetcher._proc_fetch_request(assignment, node_id, request), node_id
                )
            for node_id, tps in reset_requests.items():
                _start_fetch_task(
                    fetcher, fetcher._update_fetch_positions(assignment, node_id, tps), node_id
                )
            other_futs = [fetcher._wait_consume_future, assignment.unassign_future]
            if invalid_metadata:
                other_futs.append(fetcher._client.force_metadata_update())

            # runstream: _fetch_now may send for this assignment while the routine waits here
            # (only here: elsewhere the routine iterates over its tasks or has none).
            fetcher._runstream_waiting_with = assignment
            try:
                done_set, _ = await asyncio.wait(
                    {*fetcher._pending_tasks, *other_futs, *resume_futures},
                    timeout=timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                fetcher._runstream_waiting_with = None

            done_pending = fetcher._pending_tasks.intersection(done_set)
            if done_pending:
                has_new_data = any(fut.result() for fut in done_pending)
                if has_new_data:
                    for waiter in fetcher._fetch_waiters:
                        fetcher._notify(waiter)
                fetcher._pending_tasks -= done_pending
            # runstream: tasks of _fetch_now's ended while the routine waited for others.
            fetcher._pending_tasks -= {task for task in fetcher._pending_tasks if task.done()}
    except asyncio.CancelledError:
        pass
    except Exception as exc:  # pragma: no cover  (upstream: a bug)
        raise KafkaError("Unexpected error during data retrieval") from exc


def _wake_waiters_from_fetch(fetcher: Any) -> None:
    """Wrap ``fetcher._proc_fetch_request`` (once) to complete the fetch waiters as soon as a
    fetch returns with new records (see :func:`getmany_promptly`)."""
    if getattr(fetcher, "_runstream_wakes_waiters", False):
        return
    fetch = fetcher._proc_fetch_request

    async def fetch_and_wake(*args: Any) -> Any:
        needs_wakeup = await fetch(*args)
        if needs_wakeup:
            for waiter in list(fetcher._fetch_waiters):
                fetcher._notify(waiter)
        return needs_wakeup

    fetcher._proc_fetch_request = fetch_and_wake
    fetcher._runstream_wakes_waiters = True


def producer_for_batches(producer: ProducerT) -> AIOKafkaProducer:
    """Works around Faust's producer having no batch call: the aiokafka producer inside it (its
    private ``_ensure_producer()``), whose public ``create_batch`` / ``send_batch`` send many
    records to one partition at once on the same connection and idempotent sequence as Faust's
    own sends. Raises Faust's ``NotReady`` before the producer started. Only while Faust's
    ``producer_threaded`` setting is off (its default; runstream never turns it on): a threaded
    producer runs aiokafka in another thread.

    Code: https://github.com/faust-streaming/faust/blob/v0.15.2/faust/transport/drivers/aiokafka.py#L1378-L1381
    (``_ensure_producer``), https://github.com/aio-libs/aiokafka/blob/v0.14.0/aiokafka/producer/producer.py#L525-L537
    (``create_batch``, ``send_batch``).
    """
    inner: AIOKafkaProducer = cast(Any, producer)._ensure_producer()
    return inner


def faust_sends_promptly(producer: ProducerT, *, in_flight: int = 1) -> None:
    """Works around Faust making its aiokafka producer as it starts, with no way to change it
    first: wraps the Faust producer's factory (its private ``_new_producer``, on the instance,
    as ``on_start`` calls it) so that the aiokafka producer it makes gets :func:`send_promptly`
    before it starts. Call it before the app starts.

    Code: https://github.com/faust-streaming/faust/blob/v0.15.2/faust/transport/drivers/aiokafka.py#L1328-L1338
    (``_new_producer``), https://github.com/faust-streaming/faust/blob/v0.15.2/faust/transport/drivers/aiokafka.py#L1383-L1388
    (``on_start``).
    """
    p = cast(Any, producer)
    make = p._new_producer

    def new_producer(*args: Any, **kwargs: Any) -> AIOKafkaProducer:
        return send_promptly(make(*args, **kwargs), in_flight=in_flight)

    p._new_producer = new_producer


async def take_what_is_there(stream: Any, max_: int) -> AsyncIterator[list[Any]]:
    """Works around Faust's ``Stream.noack_take`` having no "hand over what is there now" mode:
    the events of ``stream`` (never acked by the stream: the caller acks them) in lists of at
    most ``max_``, each handed over as soon as the stream's queue holds no more, so a lone event
    waits for nothing and a backlog goes in large lists.

    ``noack_take(max_, within)`` hands a list over only when it is full or ``within`` passed:
    a lone event waited for the timer, and every wait cost a ``wait_for_stopped`` with a timeout
    (tasks, a timer handle, 1,000 a second at a 1 ms window) plus an async processor call per
    event. Here the stream is iterated directly (the same per-event path as ``noack_take``'s
    passive drainer, ``Stream.__aiter__``), with acks off as ``noack_take`` turns them off, and
    the stream channel's queue (the private ``Channel.queue`` of the agent's topic iterator)
    says whether another event is there already.

    Code: https://github.com/faust-streaming/faust/blob/v0.15.2/faust/streams.py#L683-L780
    (``noack_take``), https://github.com/faust-streaming/faust/blob/v0.15.2/faust/channels.py#L133-L146
    (``Channel.queue``).
    """
    queue = getattr(stream.channel, "queue", None)
    stream.enable_acks = False
    buffer: list[Any] = []
    async for _ in stream:
        buffer.append(stream.current_event)
        if len(buffer) >= max_ or queue is None or queue.empty():
            taken, buffer = buffer, []
            yield taken


class _Rest:
    """The rest of a coroutine that suspended at its first step, yielding ``pending`` to
    whatever drives it: awaiting this drives the coroutine on from there, passing through what
    it yields (futures for the task to wait on) and what the task sends or throws back."""

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Any, pending: Any) -> None:
        self._coro, self._pending = coro, pending

    def __await__(self) -> Any:
        coro, pending = self._coro, self._pending
        while True:
            try:
                value = yield pending
            except BaseException as exc:  # a cancellation, say: the coroutine gets it
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = coro.send(value)
                except StopIteration as stop:
                    return stop.value


def deliver_without_racing(consumer: ConsumerT) -> None:
    """Works around Faust's consumer racing every record's delivery against its flow being
    suspended: its drain loop (``Consumer._drain_messages``) hands each fetched record to the
    conductor with ``await self.wait_first(callback(message), self.suspend_flow.wait())``, and
    mode's ``wait_first`` makes four tasks (the delivery, the suspension, the service's stopped
    and crashed events), waits for the first and cancels the other three: about 30 µs of CPU and
    several turns of the event loop for each record, when the delivery almost always finishes
    at once (a record put on a stream queue with room). Under load every turn of the loop is
    long, so a record waited for several of them before the agent saw it.

    This installs, on ``consumer`` alone, the same drain loop with one change: the delivery's
    first step runs at once, and only a delivery that suspends there (a full stream queue, the
    flow stopped for a rebalance, the producer's buffer full) is raced against the suspension
    as before, from where it stopped. What a finished delivery did is the same either way; the
    race's result was never used.

    Code: https://github.com/faust-streaming/faust/blob/v0.15.2/faust/transport/consumer.py#L1170-L1250
    (``_drain_messages``), https://github.com/faust-streaming/faust/blob/v0.15.2/faust/transport/consumer.py#L172-L177
    (the ``Fetcher`` calling it on the consumer), https://github.com/faust-streaming/mode/blob/v0.7.1/mode/services.py#L758-L800
    (``wait_first``).
    """
    from faust.transport.consumer import CONSUMER_FETCHING

    c = cast(Any, consumer)

    async def drain_messages(fetcher: Any) -> None:
        # Faust's Consumer._drain_messages, but for the delivery (see above).
        callback = c.callback
        getmany = c.getmany
        consumer_should_stop = c._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = c._read_offset.__getitem__
        set_read_offset = c._read_offset.__setitem__
        set_flag = c.diag.set_flag
        unset_flag = c.diag.unset_flag
        commit_every = c._commit_every
        acks_enabled_for = c.app.topics.acks_enabled_for
        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await c.sleep(0)
                if not c.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await c._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and c._n_acked >= commit_every:
                                c._n_acked = 0
                                await c.commit()
                            delivery = callback(message)
                            try:
                                pending = delivery.send(None)
                            except StopIteration:
                                pass
                            else:
                                await c.wait_first(_Rest(delivery, pending), c.suspend_flow.wait())
                            set_read_offset(tp, offset)
                    unset_flag(CONSUMER_FETCHING)
        except c.consumer_stopped_errors:
            if c.transport.app.should_stop:
                c.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if c.transport.app.should_stop:
                c.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            c.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    c._drain_messages = drain_messages


# ----------------------------------------------------------------------------------- aiokafka
def send_promptly(producer: AIOKafkaProducer, *, in_flight: int = 1) -> AIOKafkaProducer:
    """Works around aiokafka's producer writing a produce request three turns of the event loop
    after the record was added, and the next request to a broker three turns after the last one
    was answered: its sender routine waits for new data and for its requests' tasks through
    ``asyncio.wait`` (a done callback, then the routine: two turns), and sends each request
    from a new task (a third turn before the request is written). Each turn costs the event
    loop's lag, 2-6 ms on a busy worker, and every produced record pays it.

    This gives the not yet started ``producer`` (``ValueError`` otherwise) the same routine with
    three changes (:func:`_prompt_sender_routine`): the request is written at once, from the
    routine's own step (the send coroutine's first step runs there, up to its wait for the
    answer; a task drives the rest, as :func:`deliver_without_racing` does for a delivery);
    the routine awaits the accumulator's waiter itself, which each request completes as it ends
    (so a batch added meanwhile goes out one turn after the answer); and up to ``in_flight``
    requests may be in flight to one broker at once (aiokafka: one), each for other partitions:
    a partition still has at most one batch in flight, as upstream, so the order of its records
    and the idempotent producer's sequence numbers are the same. While a transaction's request,
    an unknown leader or a metadata update is waited for, the routine waits as upstream
    (``asyncio.wait``), for whichever comes first.

    What is sent, the requests' handling of answers, errors and retries (aiokafka's
    ``SendProduceReqHandler``), and what the producer's callers see are unchanged.

    Code: https://github.com/aio-libs/aiokafka/blob/v0.14.0/aiokafka/producer/sender.py#L97-L189
    (``_sender_routine``), https://github.com/aio-libs/aiokafka/blob/v0.14.0/aiokafka/producer/sender.py#L272-L289
    (``_send_produce_req``), https://github.com/aio-libs/aiokafka/blob/v0.14.0/aiokafka/producer/message_accumulator.py#L470-L535
    (``drain_by_nodes``, which completes the waiter and makes a new one).
    """
    if in_flight < 1:
        raise ValueError(f"in_flight must be at least 1, not {in_flight}")
    sender = cast(Any, producer)._sender
    if sender.sender_task is not None:
        raise ValueError("send_promptly needs a producer that has not started")

    def routine() -> Any:
        return _prompt_sender_routine(sender, in_flight)

    sender._sender_routine = routine
    sender._runstream_in_flight = in_flight
    return producer


def _started_at_once(coro: Any) -> asyncio.Task[Any] | None:
    """Runs ``coro``'s first step now and a task for the rest (``None``: it ended there)."""
    try:
        pending = coro.send(None)
    except StopIteration:
        return None
    rest = _Rest(coro, pending)

    async def go_on() -> Any:
        return await rest

    return asyncio.get_running_loop().create_task(go_on())


async def _send_produce_req(sender: Any, node_id: int, batches: dict[Any, Any]) -> None:
    """aiokafka's ``Sender._send_produce_req`` with a count of requests in flight per broker,
    and a wake-up of the routine as it ends (:func:`send_promptly`)."""
    try:
        handler = SendProduceReqHandler(sender, batches)
        await handler.do(node_id)
    finally:
        sending = sender._runstream_sending
        sending[node_id] -= 1
        if sending[node_id] < sender._runstream_in_flight:
            sender._in_flight.discard(node_id)
        for tp in batches:
            sender._muted_partitions.discard(tp)
        waiter = sender._message_accumulator.waiter()
        if not waiter.done():
            waiter.set_result(None)


#: what upstream's sender routine lets through as it is (it wraps any other error).
_FATAL_TO_THE_PRODUCER = (ProducerFenced, OutOfOrderSequenceNumber, TransactionalIdAuthorizationFailed)  # fmt: skip


async def _prompt_sender_routine(sender: Any, in_flight: int) -> None:
    """aiokafka's ``Sender._sender_routine`` (v0.14.0), changed as :func:`send_promptly` says.
    The lines not marked are upstream's."""
    accumulator = sender._message_accumulator
    sending: dict[int, int] = {}  # node → requests in flight to it
    sender._runstream_sending = sending
    tasks: set[asyncio.Task[Any]] = set()
    txn_task = None
    try:
        while True:
            await sender._maybe_wait_for_pid()

            waiters: set[Any] = set()
            txn_manager = sender._txn_manager
            muted_partitions = sender._muted_partitions
            if txn_manager is not None and txn_manager.transactional_id is not None:
                if txn_task is None or txn_task.done():
                    txn_task = sender._maybe_do_transactional_request()
                    if txn_task is not None:
                        tasks.add(txn_task)
                    else:
                        waiters.add(txn_manager.make_task_waiter())
                muted_partitions = muted_partitions | txn_manager.partitions_to_add()
            # runstream: a broker is skipped once it has in_flight requests (upstream: one).
            batches, unknown_leaders_exist = accumulator.drain_by_nodes(
                ignore_nodes=sender._in_flight, muted_partitions=muted_partitions
            )
            for node_id, node_batches in batches.items():
                sending[node_id] = sending.get(node_id, 0) + 1
                if sending[node_id] >= in_flight:
                    sender._in_flight.add(node_id)
                for tp in node_batches:
                    sender._muted_partitions.add(tp)
                # runstream: written now, not from a task's first step.
                task = _started_at_once(_send_produce_req(sender, node_id, node_batches))
                if task is not None:
                    tasks.add(task)

            if unknown_leaders_exist:
                waiters.add(sender.client.force_metadata_update())
            if waiters or (txn_task is not None and not txn_task.done()):
                # Upstream's wait, for a transaction or a metadata update.
                if not unknown_leaders_exist:
                    waiters.add(accumulator.waiter())
                done, _ = await asyncio.wait(waiters | tasks, return_when=asyncio.FIRST_COMPLETED)
            else:
                # runstream: new data and every request's end complete the accumulator's
                # waiter; awaited itself, the routine wakes one turn after either.
                await accumulator.waiter()
                done = {task for task in tasks if task.done()}
            for task in done:
                task.result()
            tasks -= done
    except asyncio.CancelledError:
        for task in tasks:
            await task
    except _FATAL_TO_THE_PRODUCER:
        raise
    except Exception as exc:  # pragma: no cover  (upstream: a bug; fails every pending batch)
        raise KafkaError("Unexpected error during batch delivery") from exc


async def uncached_partitions_for_topic(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partitions of ``topic`` (empty if it does not exist), asked of the cluster for that
    topic alone. Works around aiokafka's ``partitions_for_topic`` reading only the consumer's
    metadata cache, which a consumer without subscriptions never fills (it bootstraps with a
    metadata request for no topic), and ``topics()`` returning the names only of the metadata it
    fetches. The client's ``fetch_all_metadata`` (what ``topics()`` calls) returns partitions,
    but of every topic of the cluster: with the 2,500 topics (9,000 partitions) a test broker
    had gathered, each call took 65-250 ms of the worker's event loop, and a worker makes
    several while it loads its partitions. So the request names the topic, and does not let
    the broker create it (``allow_auto_topic_creation``: a broker with
    ``auto.create.topics.enable`` would create a topic only asked about).

    Code: https://github.com/aio-libs/aiokafka/blob/v0.14.0/aiokafka/consumer/consumer.py#L629-L650
    (``topics``, ``partitions_for_topic``), https://github.com/aio-libs/aiokafka/blob/v0.14.0/aiokafka/client.py#L284-L349
    (``_metadata_update``, ``fetch_all_metadata``), https://github.com/aio-libs/aiokafka/blob/v0.14.0/aiokafka/client.py#L220
    (the bootstrap's request for no topic).
    """
    client = consumer._client
    request = MetadataRequest([topic], allow_auto_topic_creation=False)
    for broker in client.cluster.brokers():
        conn = await client._get_conn(broker.nodeId)
        if conn is None:
            continue
        try:
            response = await conn.send(request)
        except (TimeoutError, KafkaError):
            continue
        cluster = ClusterMetadata()
        cluster.need_all_topic_metadata = True  # an unknown topic is an answer, not an error
        cluster.update_metadata(response)
        return set(cluster.partitions_for_topic(topic) or ())
    # No broker answered (or none known yet): the client's own way, over every known broker.
    everything = await client.fetch_all_metadata()
    return set(everything.partitions_for_topic(topic) or ())


async def stop_despite_stray_cancel(consumer: AIOKafkaConsumer) -> None:
    """Stop ``consumer`` even right after it started. Works around aiokafka raising a stray
    ``CancelledError`` then: a consumer without a group starts a task in its coordinator that
    has not run yet when ``stop`` cancels and awaits it, and awaiting a task cancelled before
    its first step raises; ``stop`` then ends there, leaving its fetcher's task running and its
    client open. So first let that task start (one turn of the event loop), and should the
    error come anyway swallow it: only that one, a cancellation of the calling task itself
    still propagates.

    Issue: https://github.com/aio-libs/aiokafka/issues/647 (open). Code:
    https://github.com/aio-libs/aiokafka/blob/v0.14.0/aiokafka/consumer/group_coordinator.py#L178-L181
    (``close``), https://github.com/aio-libs/aiokafka/blob/v0.14.0/aiokafka/consumer/consumer.py#L506-L521
    (``stop``).
    """
    try:
        await asyncio.sleep(0)
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
