"""Idempotent creation (issue 21): ``Idempotency-Key`` on ``POST /runs``, over the fakes of
``tests/fakes_api.py`` and the real ``agents.creation.CreationKeys`` over an in-memory etcd.

The same key with the same body answers the same run (201, however often, whatever the order of
the body's fields); with another body 422 naming the key; no key, a new run each time; a key
recorded by ``runs.requests`` (its request id) answers that request's run; a creation answered
503 after its append, retried with its key, makes no second run and keeps its number."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import msgspec
import orjson
from aiohttp.test_utils import TestClient, TestServer

from agents import keys
from agents.counters import RunNumbers
from agents.creation import CreationKeys, read_request
from api import Unavailable, create_api
from events import Event, EventType
from tests.fakes_api import Fakes
from tests.fakes_kv import MemoryKv
from tests.unit.test_api_support import GROUP, new_run, task

RUNS = "/api/v1/runs"
RETENTION = 3600.0


class LeaseKv(MemoryKv):
    """``MemoryKv`` that remembers the leases it granted and which key took which."""

    def __init__(self) -> None:
        super().__init__()
        self.granted: list[int] = []
        self.leases: dict[str, int] = {}

    async def grant_lease(self, ttl: int) -> int:
        self.granted.append(ttl)
        return len(self.granted)

    async def compare_and_swap(
        self, key: str, value: bytes, *, mod_revision: int | None, lease: int = 0
    ) -> int | None:
        made = await super().compare_and_swap(key, value, mod_revision=mod_revision, lease=lease)
        if made is not None:
            self.leases[key] = lease
        return made


@dataclasses.dataclass
class Setup:
    client: TestClient  # type: ignore[type-arg]
    fakes: Fakes
    kv: LeaseKv
    records: CreationKeys

    def created(self) -> list[Event]:
        return [e for e in self.fakes.owners.events if e.type is EventType.RUN_CREATED]


@asynccontextmanager
async def served() -> AsyncIterator[Setup]:
    fakes, kv = Fakes(), LeaseKv()

    async def get_kv() -> LeaseKv:
        return kv

    numbers = RunNumbers(SimpleNamespace(kv=get_kv))  # type: ignore[arg-type]
    records = CreationKeys(get_kv, fakes.ids, numbers, retention=RETENTION)
    deps = dataclasses.replace(fakes.deps(), counters=numbers, creation_keys=records)
    async with TestClient(TestServer(create_api(deps, heartbeat=0.05))) as client:
        yield Setup(client, fakes, kv, records)


async def post(s: Setup, body: Any, key: str | None, status: int = 201) -> dict[str, Any]:
    headers = {"Idempotency-Key": key} if key is not None else {}
    resp = await s.client.post(RUNS, data=orjson.dumps(body), headers={**headers, "Content-Type": "application/json"})  # fmt: skip
    out: dict[str, Any] = await resp.json()
    assert resp.status == status, out
    return out


async def test_same_key_same_body_answers_the_same_run_however_often() -> None:
    async with served() as s:
        body = new_run(task("a"), task("b", "a"), environment={"X": "1", "Y": "2"})
        first = await post(s, body, "hook-1")
        again = [await post(s, body, "hook-1") for _ in range(2)]
        # The same body with its fields and maps in another order is the same request.
        reordered = {k: body[k] for k in reversed(list(body))}
        reordered["environment"] = {"Y": "2", "X": "1"}
        again.append(await post(s, reordered, "hook-1"))
        assert all(a == first for a in again), (first, again)
        assert first["run"]["counter"] == 1
        assert len(s.created()) == 1  # the retries read the run: nothing more in the log
        # The record: one etcd key, with a lease of at least the retention.
        rec = s.kv.data[keys.run_request_key("hook-1")]
        assert rec.value.decode().split(" ")[0] == str(int(first["run"]["id"]))
        assert s.kv.leases[keys.run_request_key("hook-1")] != 0
        assert s.kv.granted
        assert min(s.kv.granted) >= RETENTION


async def test_same_key_other_body_is_refused_naming_the_key() -> None:
    async with served() as s:
        first = await post(s, new_run(task("a")), "hook-2")
        out = await post(s, new_run(task("other")), "hook-2", status=422)
        assert "'hook-2'" in out["message"], out
        assert "Idempotency-Key" in out["message"], out
        assert len(s.created()) == 1
        # The key still answers its own body.
        assert (await post(s, new_run(task("a")), "hook-2"))["run"]["id"] == first["run"]["id"]


async def test_no_key_makes_a_new_run_each_time() -> None:
    async with served() as s:
        ids = {(await post(s, new_run(), None))["run"]["id"] for _ in range(3)}
        assert len(ids) == 3
        assert len(s.created()) == 3
        assert not [k for k in s.kv.data if k.startswith("agents/run-requests/")]


async def test_different_keys_make_different_runs() -> None:
    async with served() as s:
        a = await post(s, new_run(), "k-a")
        b = await post(s, new_run(), "k-b")
        assert a["run"]["id"] != b["run"]["id"]
        assert (a["run"]["counter"], b["run"]["counter"]) == (1, 2)


async def test_a_request_id_of_runs_requests_is_the_same_key() -> None:
    async with served() as s:
        body = new_run(task("a"), annotations={"from": "hook"})
        raw = orjson.dumps({"request_id": "req-9", **body})
        creation = read_request(raw)  # what the creation agent records for the request
        record = await s.records.record(creation.etcd_key, creation.digest)
        got = await post(s, body, "req-9")
        assert got["run"]["id"] == f"{record.run_id:016d}"
        assert got["run"]["group"] == GROUP
        out = await post(s, new_run(task("z")), "req-9", status=422)
        assert "'req-9'" in out["message"]


async def test_a_retry_gives_back_the_number_it_took_beside_its_claim() -> None:
    """The number is taken while the key is claimed (two etcd writes at once); a retry's claim
    fails, so the number it took is given back: the numbering stays dense."""
    async with served() as s:
        first = await post(s, new_run(), "hook-dense")
        for _ in range(3):
            assert (await post(s, new_run(), "hook-dense"))["run"]["counter"] == 1
        assert (await post(s, new_run(), "hook-dense-2"))["run"]["counter"] == 2
        assert first["run"]["counter"] == 1
        assert not [k for k in s.kv.data if "/void/" in k], sorted(s.kv.data)


async def test_a_503_after_the_append_retried_with_the_key_makes_one_run() -> None:
    async with served() as s:
        owners = s.fakes.owners
        real_write = owners.write
        fail = [True]

        async def write(event: Event) -> Any:
            outcome = await real_write(event)  # appended and applied ...
            if fail.pop() if fail else False:  # ... but the answer did not come in time
                raise Unavailable("the apply was not confirmed in time: outcome unknown")
            return outcome

        owners.write = write  # type: ignore[method-assign]
        await post(s, new_run(), "hook-503", status=503)
        got = await post(s, new_run(), "hook-503")
        assert len(s.created()) == 1
        assert got["run"]["counter"] == 1  # the number stays bound to the key
        other = await post(s, new_run(), "hook-next")
        assert other["run"]["counter"] == 2  # no number lost or voided


async def test_a_retry_before_the_first_try_appended_creates_the_run_once() -> None:
    """The record is there, the run is not (the first try died before its append): the retry
    appends ``<run id>.created`` with the number bound to the key."""
    async with served() as s:
        body = new_run()
        creation = read_request(orjson.dumps({"request_id": "hook-early", **body}))
        record = await s.records.record(creation.etcd_key, creation.digest)
        got = await post(s, body, "hook-early")
        assert got["run"]["id"] == f"{record.run_id:016d}"
        assert [e.id for e in s.created()] == [f"{record.run_id:016d}.created"]


async def test_tries_at_once_make_one_run_numbered_once() -> None:
    async with served() as s:
        body = new_run()
        answers = await asyncio.gather(*(post(s, body, "hook-race") for _ in range(4)))
        assert len({a["run"]["id"] for a in answers}) == 1
        assert len({e.run_id for e in s.created()}) == 1
        assert {a["run"]["counter"] for a in answers} == {1}
        # The losing tries' numbers (taken beside their record, at once) are given back or
        # voided, as any failed creation's: the next run gets a later number, never 1 again.
        assert (await post(s, body, "hook-after"))["run"]["counter"] > 1


async def test_runs_requests_refuses_a_request_id_used_for_another_run() -> None:
    """The creation agent's side of the same record: the same request id and body again is the
    same run (one number); another body is refused with a reply naming the request id."""
    from events.requests import RequestReply
    from tests.unit.test_creation_numbers import SETTINGS, service

    kv = MemoryKv()
    svc, out, _ = service(kv)
    replies: list[RequestReply] = []

    async def send_and_wait(topic: str, key: bytes, value: bytes, **_k: Any) -> None:
        if topic == SETTINGS.topic_replies:
            replies.append(msgspec.json.decode(value, type=RequestReply))

    svc.app.producer.send_and_wait = send_and_wait
    rq, doc = SETTINGS.topic_requests, {"request_id": "ci-1", **new_run()}
    await svc.handle(rq, orjson.dumps(doc), 0, 0)
    await svc.handle(rq, orjson.dumps(doc), 0, 1)  # a retry
    await svc.handle(rq, orjson.dumps({**doc, "name": "other"}), 0, 2)
    assert [(r.outcome, r.run_id) for r in replies[:2]] == [("created", replies[0].run_id)] * 2
    assert replies[2].outcome == "refused"
    assert "'ci-1'" in replies[2].reason
    assert {e.run_id for e in out.events} == {replies[0].run_id}
    assert {e.data.counter for e in out.events} == {1}  # type: ignore[union-attr]


class CountingKv(MemoryKv):
    """``MemoryKv`` counting its writes: single create-only puts and group commits."""

    def __init__(self) -> None:
        super().__init__()
        self.singles = 0
        self.groups: list[int] = []

    async def compare_and_swap(
        self, key: str, value: bytes, *, mod_revision: int | None, lease: int = 0
    ) -> int | None:
        self.singles += 1
        return await super().compare_and_swap(key, value, mod_revision=mod_revision, lease=lease)

    async def create_all(self, items: Any, *, lease: int = 0) -> bool:
        self.groups.append(len(items))
        return await super().create_all(items, lease=lease)


def _keys_over(kv: MemoryKv) -> CreationKeys:
    async def get_kv() -> MemoryKv:
        return kv

    return CreationKeys(get_kv, SimpleNamespace(), SimpleNamespace(), retention=0.0)  # type: ignore[arg-type]


async def test_concurrent_claims_are_group_committed_and_each_gets_its_own_answer() -> None:
    kv = CountingKv()
    records = _keys_over(kv)
    await kv.put(keys.run_request_key("taken"), b"7 d")
    names = ["k0", "k1", "taken", "k2", "k1"]  # one recorded already, one sent twice at once
    got = await asyncio.gather(*(records.claim_key(n, 100 + i, "d") for i, n in enumerate(names)))
    assert got == [True, True, False, True, False]
    assert sum(kv.groups) + kv.singles >= len(names)
    assert max(kv.groups, default=0) >= 2  # concurrent puts went together
    # Every record holds what its first claim wrote.
    for n, run_id in (("k0", 100), ("k1", 101), ("k2", 103)):
        assert (await records.lookup_key(n)).run_id == run_id  # type: ignore[union-attr]
    assert (await records.lookup_key("taken")).run_id == 7  # type: ignore[union-attr]


async def test_a_lone_claim_is_one_put() -> None:
    kv = CountingKv()
    assert await _keys_over(kv).claim_key("alone", 5, "d")
    assert (kv.singles, kv.groups) == (1, [])
