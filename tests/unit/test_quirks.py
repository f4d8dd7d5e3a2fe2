"""Faust's, aiokafka's and aiohttp's quirks (``agents/quirks.py``, ``api/server.py``): each test
fails when the library changes under a workaround: the installed version leaves the range it was
verified against, the private name it uses is gone, the default it overrides moved, the
behaviour it works around stopped happening (then the workaround can go), or the workaround
stopped working. tests/integration/test_quirks.py checks the same on the real broker."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
import socket
from importlib.metadata import version
from types import SimpleNamespace
from typing import Any, cast

import faust
import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.consumer.fetcher import Fetcher, PartitionRecords
from aiokafka.consumer.group_coordinator import NoGroupCoordinator
from aiokafka.consumer.subscription_state import SubscriptionState
from faust.exceptions import NotReady
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Producer as FaustProducer
from faust.types import TP
from faust.types.transports import ProducerT

from agents import quirks
from agents.app import FETCH_MAX_WAIT_MS, create_app
from agents.config import Settings
from api.server import AIOHTTP_VERIFIED, JsonRunner, _JsonErrorHandler


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text)[:3])


# --------------------------------------------------------------------------------- versions
@pytest.mark.parametrize(
    ("dist", "verified"), [*quirks.VERIFIED.items(), ("aiohttp", AIOHTTP_VERIFIED)]
)
def test_the_installed_version_is_one_the_quirks_were_verified_against(
    dist: str, verified: tuple[str, str]
) -> None:
    low, high = verified
    assert _version(low) <= _version(version(dist)) < _version(high), (
        f"{dist} {version(dist)} is outside [{low}, {high}): read again the upstream code the "
        "quirks link to (agents/quirks.py, api/server.py), then widen the range"
    )


# ------------------------------------------------------------ Faust's fixed fetch wait
def test_faust_still_fixes_the_fetch_wait_and_has_no_setting_for_it() -> None:
    source = inspect.getsource(AIOKafkaConsumerThread._create_worker_consumer)
    assert f"fetch_max_wait_ms={quirks.FAUST_FETCH_MAX_WAIT_MS}," in source
    # A setting would be the public way: use it then, and drop the quirk.
    assert not [name for name in dir(faust.Settings) if "fetch_max_wait" in name]
    assert "consumer_max_fetch_size" in dir(faust.Settings)  # (the look-up itself works)
    assert FETCH_MAX_WAIT_MS < quirks.FAUST_FETCH_MAX_WAIT_MS


def test_aiokafkas_fetcher_reads_the_wait_for_every_request() -> None:
    assert "self._fetch_max_wait_ms = fetch_max_wait_ms" in inspect.getsource(Fetcher.__init__)
    assert "self._fetch_max_wait_ms," in inspect.getsource(Fetcher._get_actions_per_node)
    assert "self._fetch_min_bytes = fetch_min_bytes" in inspect.getsource(Fetcher.__init__)
    assert "self._fetch_min_bytes," in inspect.getsource(Fetcher._get_actions_per_node)


def test_the_fetch_wait_override_says_when_the_fetcher_is_not_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = create_app(Settings(app_id="quirks-unit"))
    assert not quirks.override_fixed_fetch_wait(app, 50)  # not started: no fetcher yet
    fetcher = SimpleNamespace(_fetch_max_wait_ms=quirks.FAUST_FETCH_MAX_WAIT_MS, _fetch_min_bytes=1)
    thread = SimpleNamespace(_consumer=SimpleNamespace(_fetcher=fetcher))
    monkeypatch.setattr(app.consumer, "_thread", thread)
    assert quirks.override_fixed_fetch_wait(app, 50)
    assert (fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes) == (50, 1)
    assert quirks.override_fixed_fetch_wait(app, 2, min_bytes=65536)
    assert (fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes) == (2, 65536)


# ------------------------------------------------------ Faust's producer has no batches
def test_fausts_producer_has_no_batch_call_and_aiokafkas_has() -> None:
    for cls in (ProducerT, FaustProducer):
        assert not hasattr(cls, "send_batch")
        assert not hasattr(cls, "create_batch")
    assert callable(FaustProducer._ensure_producer)
    assert callable(AIOKafkaProducer.create_batch)
    assert callable(AIOKafkaProducer.send_batch)


def test_the_batch_producer_is_not_there_before_the_producer_started() -> None:
    app = create_app(Settings(app_id="quirks-unit"))
    with pytest.raises(NotReady):
        quirks.producer_for_batches(app.producer)


# ------------------------------------------------------------- aiokafka's metadata cache
def test_aiokafka_still_reads_a_topics_partitions_from_its_cache_only() -> None:
    cached = inspect.getsource(AIOKafkaConsumer.partitions_for_topic)
    assert "self._client.cluster.partitions_for_topic(topic)" in cached
    # topics() fetches metadata but keeps only the names (and does not fill the cache).
    assert "return cluster.topics()" in inspect.getsource(AIOKafkaConsumer.topics)
    assert inspect.iscoroutinefunction(AIOKafkaClient.fetch_all_metadata)


async def test_the_consumed_position_is_read_where_aiokafka_keeps_it() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
    tp = TopicPartition("t", 0)
    try:
        assert quirks.consumed_position(consumer, tp) is None  # not assigned
        consumer.assign([tp])
        assert quirks.consumed_position(consumer, tp) is None  # no position yet
        cast(Any, consumer)._subscription.seek(tp, 5)  # what the fetcher's seek_to does first
        assert quirks.consumed_position(consumer, tp) == 5
    finally:
        await consumer.stop()
    # position() reads the same state, and a control batch (a transaction's marker) moves it
    # with no record returned.
    position = inspect.getsource(AIOKafkaConsumer.position)
    assert "assignment.state_value(partition)" in position
    assert "tp_state.has_valid_position" in position
    unpack = inspect.getsource(PartitionRecords._unpack_records)
    assert "if next_batch.is_control_batch:\n                self.next_fetch_offset" in unpack


def test_aiokafkas_getmany_still_waits_for_its_fetch_waiter_through_asyncio_wait() -> None:
    # What getmany_promptly works around (a second future between the waiter and the caller),
    # and the private names it uses in its place.
    source = inspect.getsource(Fetcher.fetched_records)
    assert "waiter = self._create_fetch_waiter()" in source
    assert "await asyncio.wait([waiter], timeout=timeout)" in source
    assert "if drained or not timeout:\n                return drained" in source
    create = inspect.getsource(Fetcher._create_fetch_waiter)
    assert "self._fetch_waiters.add(fut)" in create
    assert "self._closed" in inspect.getsource(AIOKafkaConsumer.getmany)
    # The routine calls the fetch coroutine through the instance (so that the wrapper set on it
    # runs), wakes the waiters only after an asyncio.wait on the fetch tasks, and only when one
    # returned True: the wrapper wakes them when it returns True, one step earlier.
    routine = inspect.getsource(Fetcher._fetch_requests_routine)
    assert "self._proc_fetch_request(assignment, node_id, request)" in routine
    assert "has_new_data = any(fut.result() for fut in done_pending)" in routine
    assert "return needs_wakeup" in inspect.getsource(Fetcher._proc_fetch_request)


# -------------------------------------------------------- aiokafka's stray CancelledError
async def test_aiokafka_still_raises_a_stray_cancel_when_stopped_right_after_start() -> None:
    """What ``stop_despite_stray_cancel`` works around, without a broker: a consumer without a
    group stopped before its coordinator's task ran (integration: on a real consumer)."""
    client = AIOKafkaClient(bootstrap_servers="127.0.0.1:1")
    coordinator = NoGroupCoordinator(client, SubscriptionState())
    try:
        with pytest.raises(asyncio.CancelledError):
            await coordinator.close()
    finally:
        await client.close()
    task = asyncio.current_task()
    assert task is not None
    assert not task.cancelling()


class _StrayCancel:
    def __init__(self) -> None:
        self.stopped = 0

    async def stop(self) -> None:
        self.stopped += 1
        raise asyncio.CancelledError


async def test_the_stray_cancel_is_swallowed_and_a_real_one_is_not() -> None:
    consumer = _StrayCancel()
    await quirks.stop_despite_stray_cancel(consumer)  # type: ignore[arg-type]
    assert consumer.stopped == 1

    async def cancelled_then_stop() -> None:
        current = asyncio.current_task()
        assert current is not None
        current.cancel()  # the caller is being cancelled: its CancelledError must go through
        await quirks.stop_despite_stray_cancel(consumer)  # type: ignore[arg-type]

    task = asyncio.ensure_future(cancelled_then_stop())
    with pytest.raises(asyncio.CancelledError):
        await task


# ------------------------------------------------------------ aiohttp's unparsed requests
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _answer_to_a_long_request_line(runner: web.AppRunner) -> tuple[int, bytes, bytes]:
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /" + b"x" * 300 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    finally:
        await runner.cleanup()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


def _app() -> web.Application:
    # A short line limit (a handler argument): the handler aiohttp makes must keep it.
    return web.Application(handler_args={"max_line_size": 100})


async def test_aiohttp_still_answers_an_unparsed_request_in_plain_text() -> None:
    """The behaviour ``json_errors_for_unparsed_requests`` works around, and the private hook it
    is reached through."""
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)
    status, head, body = await _answer_to_a_long_request_line(web.AppRunner(_app()))
    assert status == 400
    assert b"application/json" not in head.lower()
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)


async def test_json_runner_answers_an_unparsed_request_in_json_with_aiohttps_own_handler() -> None:
    runner = JsonRunner(_app())
    status, head, body = await _answer_to_a_long_request_line(runner)
    assert status == 400
    assert b"application/json" in head.lower()
    assert set(orjson.loads(body)) == {"message"}
    runner = JsonRunner(_app())
    await runner.setup()
    try:
        assert runner.server is not None
        assert isinstance(runner.server(), _JsonErrorHandler)
    finally:
        await runner.cleanup()


async def test_an_agents_topic_iterator_still_has_the_queue_that_says_no_event_waits() -> None:
    app = faust.App("quirks-take", broker="memory://", store="memory://", web_enabled=False)
    channel = app.topic("x", value_serializer="raw").clone(is_iterator=True)
    queue = channel.queue  # what quirks.take_what_is_there asks
    assert queue.empty()
    queue.put_nowait(b"event")
    assert not queue.empty()


class _Stream:
    """What take_what_is_there uses of a Faust stream: its channel's queue, ``enable_acks``,
    ``current_event``, and iteration that takes the next event off the queue."""

    def __init__(self, queue: asyncio.Queue[str]) -> None:
        self.channel = SimpleNamespace(queue=queue)
        self.enable_acks = True
        self.current_event: str | None = None

    async def __aiter__(self) -> Any:
        while True:
            self.current_event = await self.channel.queue.get()
            yield self.current_event


async def test_a_take_hands_over_what_waits_now_at_most_max_and_a_lone_event_at_once() -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    stream = _Stream(queue)
    for i in range(5):
        queue.put_nowait(f"e{i}")
    batches = quirks.take_what_is_there(stream, 3)
    assert await anext(batches) == ["e0", "e1", "e2"]  # full
    assert stream.enable_acks is False  # the caller acks
    assert await anext(batches) == ["e3", "e4"]  # what waited
    later = asyncio.ensure_future(anext(batches))
    await asyncio.sleep(0.01)
    assert not later.done()  # nothing waits: nothing handed over
    queue.put_nowait("e5")
    assert await asyncio.wait_for(later, 1) == ["e5"]  # a lone event, with no timer


def pin_of(source: str) -> str:
    """sha256 of a copied upstream function's source, whitespace collapsed: the pins below
    say which upstream code a quirk copies (when one changes, read the new code, copy it again)."""
    return hashlib.sha256(" ".join(source.split()).encode()).hexdigest()


# ------------------------------------------------ Faust's race of every record's delivery
#: Faust's ``Consumer._drain_messages`` as ``quirks.deliver_without_racing`` copies it
#: (whitespace collapsed): when this changes, read the new loop and copy it again.
DRAIN_LOOP_SHA256 = "30fba6e560f13bf79dd171ef4df3870592550143c652d6db5c2c305d38e08e6c"


def test_fausts_drain_loop_is_still_the_one_the_worker_copies() -> None:
    source = inspect.getsource(FaustConsumer._drain_messages)
    assert "callback(message), self.suspend_flow.wait()" in source  # the race per record
    assert pin_of(source) == DRAIN_LOOP_SHA256


def test_the_worker_app_delivers_without_racing() -> None:
    app = create_app(Settings(app_id="quirks-unit"))
    assert "deliver_without_racing" in app.consumer._drain_messages.__qualname__  # type: ignore[attr-defined]


def _draining(app: faust.App, batches: list[list[Any]], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The app's consumer, fed ``batches`` of records by ``getmany``, and a fetcher that stops
    once they are all handed out."""
    consumer = app.consumer
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    left = list(batches)

    async def getmany(timeout: float) -> Any:  # noqa: ASYNC109  (Faust's signature)
        batch = left.pop(0) if left else []
        if not left:
            fetcher._stopped.set()
        for message in batch:
            yield TP(message.topic, 0), message

    monkeypatch.setattr(consumer, "getmany", getmany)
    return consumer, fetcher


def _message(offset: int) -> Any:
    return SimpleNamespace(topic="quirks.events", offset=offset)


async def test_a_delivery_that_finishes_at_once_races_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = create_app(Settings(app_id="quirks-unit"))
    consumer, fetcher = _draining(app, [[_message(0), _message(1)], [_message(2)]], monkeypatch)
    delivered: list[int] = []

    async def callback(message: Any) -> None:
        delivered.append(message.offset)

    async def no_race(*_: Any, **__: Any) -> Any:
        raise AssertionError("a delivery that finished at once was raced")

    monkeypatch.setattr(consumer, "callback", callback)
    monkeypatch.setattr(consumer, "wait_first", no_race)
    await consumer._drain_messages(fetcher)
    assert delivered == [0, 1, 2]
    assert consumer._read_offset[TP("quirks.events", 0)] == 2


async def test_a_delivery_that_waits_goes_on_where_it_stopped_and_yields_to_a_suspended_flow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delivery that suspends (a full stream queue) is raced against the flow's suspension
    from where it stopped: it finishes when what it waits for comes, and is cancelled when the
    flow is suspended first (a rebalance), the loop going on with the next record."""
    app = create_app(Settings(app_id="quirks-unit"))
    records = [_message(0), _message(1), _message(2)]
    consumer, fetcher = _draining(app, [records], monkeypatch)
    room = asyncio.get_running_loop().create_future()
    steps: list[str] = []

    async def callback(message: Any) -> None:
        steps.append(f"start {message.offset}")
        try:
            if message.offset == 0:
                steps.append(f"got {await room}")
            elif message.offset == 1:
                await asyncio.get_running_loop().create_future()  # never: the flow stops
        except asyncio.CancelledError:
            steps.append(f"cancelled {message.offset}")
            raise
        steps.append(f"done {message.offset}")

    monkeypatch.setattr(consumer, "callback", callback)
    drain = asyncio.ensure_future(consumer._drain_messages(fetcher))
    await asyncio.sleep(0.01)
    assert steps == ["start 0"]  # its first step ran, then it waits
    room.set_result("room")
    await asyncio.sleep(0.01)
    assert steps[1:] == ["got room", "done 0", "start 1"]
    consumer.suspend_flow.set()
    await asyncio.wait_for(drain, 5)
    await asyncio.sleep(0.01)  # wait_first cancels the loser without waiting for it
    assert sorted(steps[4:]) == ["cancelled 1", "done 2", "start 2"]
    assert steps.index("start 2") < steps.index("done 2")


# ------------------------------------------------------------------ aiokafka's sender routine
#: sha256 of aiokafka 0.14.0's ``Sender._sender_routine`` and ``Sender._send_produce_req``
#: (whitespace collapsed), which ``quirks.send_promptly`` copies with its changes: when these
#: change, read the new code and copy it again.
SENDER_SHA256 = {
    "_sender_routine": "44546675befb9878d987812886f90514147eded9883f0b01dec6b4dec176cb8e",
    "_send_produce_req": "f565254ecb3845d56c446d4b6a07e977222426cf41fe795f883adb6df6092bd0",
}


@pytest.mark.parametrize("name", sorted(SENDER_SHA256))
def test_aiokafkas_sender_is_still_the_one_send_promptly_copies(name: str) -> None:
    from aiokafka.producer.sender import Sender

    source = inspect.getsource(getattr(Sender, name))
    assert pin_of(source) == SENDER_SHA256[name]


def test_aiokafkas_sender_still_waits_through_asyncio_wait_and_a_task_per_request() -> None:
    # What send_promptly works around, and the private names its routine relies on.
    from aiokafka.producer.message_accumulator import MessageAccumulator
    from aiokafka.producer.sender import Sender

    routine = inspect.getsource(Sender._sender_routine)
    assert "create_task(self._send_produce_req(node_id, node_batches))" in routine
    assert "await asyncio.wait(" in routine
    assert "ignore_nodes=self._in_flight" in routine
    assert "self._sender_task = create_task(self._sender_routine())" in inspect.getsource(Sender.start)  # fmt: skip
    drain = inspect.getsource(MessageAccumulator.drain_by_nodes)
    assert "self._waiter_future = self._loop.create_future()" in drain
    assert "elif ignore_nodes and leader in ignore_nodes:" in drain
    # A new batch completes the waiter the routine awaits.
    assert "self._waiter_future.set_result(None)" in inspect.getsource(MessageAccumulator._append_batch)  # fmt: skip


async def test_send_promptly_takes_only_a_producer_not_started() -> None:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    with pytest.raises(ValueError, match="in_flight"):
        quirks.send_promptly(producer, in_flight=0)
    assert quirks.send_promptly(producer, in_flight=2) is producer
    sender: Any = cast(Any, producer)._sender
    assert sender._runstream_in_flight == 2
    sender._sender_task = asyncio.get_running_loop().create_future()  # as if started
    with pytest.raises(ValueError, match="not started"):
        quirks.send_promptly(producer)
    sender._sender_task = None


def test_the_worker_apps_producer_sends_promptly() -> None:
    app = create_app(Settings(app_id="quirks-unit-producer"))
    # The factory Faust's on_start calls makes a producer with the prompt routine.
    assert "faust_sends_promptly" in app.producer._new_producer.__qualname__  # type: ignore[attr-defined]


#: sha256 of aiokafka 0.14.0's ``Fetcher._fetch_requests_routine`` (whitespace collapsed), which
#: ``quirks.fetch_promptly`` copies with its changes: when it changes, copy it again.
FETCH_ROUTINE_SHA256 = "6c610471e286f6e72538302416d0fa8f853c3cbf0c02c697b790e63a290627d0"


def test_aiokafkas_fetch_routine_is_still_the_one_fetch_promptly_copies() -> None:
    source = inspect.getsource(Fetcher._fetch_requests_routine)
    assert pin_of(source) == FETCH_ROUTINE_SHA256
    # What fetch_promptly works around and relies on: the broker freed by a done callback,
    # a task per request, the routine started by the constructor, what a fetch asks for
    # decided by _get_actions_per_node (one fetch in flight per broker, none while records
    # of one of its partitions wait to be taken).
    assert "task.add_done_callback(on_done)" in source
    assert "task = create_task(coro)" in source
    assert "self._fetch_task = create_task(self._fetch_requests_routine())" in inspect.getsource(Fetcher.__init__)  # fmt: skip
    actions = inspect.getsource(Fetcher._get_actions_per_node)
    assert "elif node_id in self._in_flight:" in actions
    assert "if tp in self._records:" in actions
