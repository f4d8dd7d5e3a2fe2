"""The route handlers: parse (``api.bodies``), find the run's owner (``Owners.route``), then either
call the use case here (``api.service``) or relay the request to the owner (``api.relay``), and
render (``api.views``). No business rules here.

Where a request about one run goes:

* this worker owns and serves the run's partition → answered here;
* another worker owns it → relayed there, its answer passed back unchanged;
* no settled owner (rebalance, owner loading), or a *relayed* request reaching a worker that does
  not own the partition (a stale map) → 503 with ``Retry-After``; clients retry.

A creation allocates the run id here (the id decides the partition), then goes to the owner of
that id with the id in ``RUN_ID_HEADER``; a 409 ``run_id_taken`` (the id was used by a producer
writing to the log directly) makes this worker take the next id, a few times at most. With an
``Idempotency-Key`` the id is the one recorded for the key (``ApiDeps.creation_keys``), made
once, whichever worker a try reaches.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

import msgspec
import orjson
from aiohttp import web
from msgspec import to_builtins
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from api.bodies import (
    CreateRequest,
    RecreateRequest,
    parse_claim,
    parse_create,
    parse_expected_seq,
    parse_heartbeat,
    parse_idempotency_key,
    parse_list_query,
    parse_report,
    parse_run_action,
    parse_stuck_query,
    parse_task_action,
    require_executor_id,
    require_run_id,
)
from api.errors import ApiError, Conflict, NotFound, Unavailable
from api.history import History
from api.ports import ApiDeps, Executors, KeyRecord, Local, Remote, StoreUnavailable
from api.relay import RUN_ID_HEADER, STATE_TYPE, Relay, is_relayed
from api.service import (
    KEY_REUSED_STATUS,
    RUN_ID_TAKEN,
    RunService,
    check_creatable,
    creation_digest,
    key_reused_message,
)
from api.views import StuckRuns, etag, json_response, page_view, run_view
from events import (
    Heartbeat,
    RunState,
    decode_state,
    encode_state,
    format_run_id,
    run_created,
)

__all__ = ["RELAYED", "Handlers"]

RELAYED = Counter(
    "runstream_api_relayed", "API requests relayed to the worker owning the run", ["status"]
)

#: Seconds ``GET /stuck`` waits for another worker's answer (then the answer is partial).
PEER_SECONDS = 5.0

#: Relayed with a keyed creation: "1" when the key's record was there before the request (an
#: earlier try may have created the run: the owner reads it first), "0" when made for it.
KEY_SEEN_HEADER = "X-Runstream-Key-Seen"

#: How many run ids a creation tries when ids turn out to be taken already.
CREATE_ATTEMPTS = 5

Local_ = Callable[[], Awaitable[web.StreamResponse]]


class Handlers:
    def __init__(self, service: RunService, deps: ApiDeps, relay: Relay) -> None:
        self.service = service
        self.deps = deps
        self.relay = relay

    # ------------------------------------------------------------------------ routing
    async def _at_owner(
        self,
        request: web.Request,
        run_id: str,
        here: Local_,
        *,
        headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        """``here()`` when this worker decides run ``run_id``, else the owner's answer."""
        route = self.deps.owners.route(run_id)
        if isinstance(route, Local):
            return await here()
        if isinstance(route, Remote) and not is_relayed(request):
            response = await self.relay.forward(request, route.url, headers=headers)
            RELAYED.labels(str(response.status)).inc()
            return response
        reason = (
            route.reason
            if not isinstance(route, Remote)
            else f"this worker does not own the partition of run {run_id} (any more)"
        )
        raise Unavailable(f"{reason}; retry")

    async def read_any(self, run_id: str) -> RunState | None:
        """The newest state of any run, from its owner (here or through the relay)."""
        route = self.deps.owners.route(run_id)
        if isinstance(route, Local):
            return await self.deps.owners.read(run_id)
        if not isinstance(route, Remote):
            raise Unavailable(f"{route.reason}; retry")
        raise _NeedsRelay(route.url)

    # ------------------------------------------------------------------------ runs
    async def create_run(self, request: web.Request) -> web.StreamResponse:
        req = parse_create(await request.read())
        key = parse_idempotency_key(request.headers.get("Idempotency-Key"))
        given = request.headers.get(RUN_ID_HEADER)
        if given is not None and is_relayed(request):
            run_id = require_run_id(given)
            seen = request.headers.get(KEY_SEEN_HEADER) == "1"
            here = functools.partial(self._create_here, request, req, run_id, key, seen)
            return await self._at_owner(request, run_id, here)
        if isinstance(req, CreateRequest):
            check_creatable(req)  # 400 before any id is spent
        if key is not None:
            return await self._create_keyed(request, req, key)
        for _ in range(CREATE_ATTEMPTS):
            run_id = format_run_id(await self.deps.ids.next())
            try:
                response = await self._at_owner(
                    request,
                    run_id,
                    functools.partial(self._create_here, request, req, run_id),
                    headers={RUN_ID_HEADER: run_id},
                )
            except Conflict as exc:
                if exc.code != RUN_ID_TAKEN:
                    raise
                continue
            if not _is_taken(response):
                return response
        raise Unavailable("run ids were taken by other producers; retry")

    async def _create_keyed(
        self, request: web.Request, req: CreateRequest | RecreateRequest, key: str
    ) -> web.StreamResponse:
        """A creation with an ``Idempotency-Key`` (docs/api.md, "Idempotent creation"): the
        key's record gives the run id — made now with a new id by one create-only etcd
        transaction, or, when the key has one (the same key from ``runs.requests`` or an
        earlier try, on any worker), the one recorded: the owner then answers the run as it
        is, or creates it. 422 naming the key when it was recorded for another body."""
        records = self.deps.creation_keys
        if records is None:
            raise Unavailable("this worker does not keep creation keys (Idempotency-Key); retry")
        digest = creation_digest(run_created(req) if isinstance(req, CreateRequest) else req)
        record: KeyRecord | None = None
        number: int | None = None
        try:
            for _ in range(CREATE_ATTEMPTS):
                new_id = await self.deps.ids.next()
                # A plain creation this worker will answer takes its number beside the claim.
                local = isinstance(self.deps.owners.route(format_run_id(new_id)), Local)
                group = req.group if local and isinstance(req, CreateRequest) else None
                record, number = await self.service.key_record(records, key, new_id, digest, group)  # fmt: skip
                if record is not None:
                    break
        except StoreUnavailable as exc:
            raise Unavailable(f"creation keys cannot be read now ({exc}); retry") from exc
        if record is None:
            raise Unavailable(f"the record of Idempotency-Key {key!r} keeps vanishing; retry")
        if not record.matches(digest):
            raise ApiError(key_reused_message("Idempotency-Key", key), status=KEY_REUSED_STATUS)
        run_id, seen = format_run_id(record.run_id), not record.fresh
        used = False

        async def here() -> web.Response:
            nonlocal used
            used = True
            return await self._create_here(request, req, run_id, key, seen, number)

        try:
            return await self._at_owner(
                request,
                run_id,
                here,
                headers={RUN_ID_HEADER: run_id, KEY_SEEN_HEADER: "1" if seen else "0"},
            )
        finally:
            if number is not None and not used and isinstance(req, CreateRequest):
                # the partition moved away between the claim and the call: the owner numbers it
                await self.service.give_back_number(req.group, number, run_id, "owner moved")

    async def _create_here(
        self,
        request: web.Request,
        req: CreateRequest | RecreateRequest,
        run_id: str,
        key: str | None = None,
        seen: bool = False,
        number: int | None = None,
    ) -> web.Response:
        if isinstance(req, CreateRequest):
            state = await self.service.create(req, run_id, key, seen=seen, number=number)
        else:
            state = await self.service.recreate(
                req, run_id, lambda old: self._read_old(request, old), key, seen=seen
            )
        headers = {"Location": f"/api/v1/runs/{state.run.id}", "ETag": etag(state)}
        view = run_view(state, self.service.waiting(state))
        return json_response(view, status=201, headers=headers)

    async def _read_old(self, request: web.Request, run_id: str) -> RunState | None:
        """The run a recreation copies, from its owner."""
        try:
            return await self.read_any(run_id)
        except _NeedsRelay as far:
            status, _, body = await self.relay.fetch(
                request,
                far.url,
                method="GET",
                path=f"/api/v1/runs/{run_id}",
                body=b"",
                headers={"Accept": STATE_TYPE, "Content-Type": "application/json"},
            )
            if status == 404:
                return None
            if status == 200:
                return decode_state(body)
            raise _passed_on(status, body) from None

    async def get_run(self, request: web.Request) -> web.StreamResponse:
        run_id = require_run_id(request.match_info["run_id"])

        async def here() -> web.Response:
            state = await self.service.get(run_id)
            if is_relayed(request) and request.headers.get("Accept") == STATE_TYPE:
                return web.Response(body=encode_state(state), content_type=STATE_TYPE)
            view = run_view(state, self.service.waiting(state))
            return json_response(view, headers={"ETag": etag(state)})

        return await self._at_owner(request, run_id, here)

    async def list_runs(self, request: web.Request) -> web.Response:
        page = self.service.list_runs(parse_list_query(request.query))
        return json_response(page_view(page))

    async def run_action(self, request: web.Request) -> web.StreamResponse:
        run_id = require_run_id(request.match_info["run_id"])
        expected = parse_expected_seq(request.headers.get("If-Match"))
        action = parse_run_action(await request.read())
        key = parse_idempotency_key(request.headers.get("Idempotency-Key"))

        async def here() -> web.Response:
            await self.service.run_action(run_id, action, expected, key)
            return web.Response(status=204)

        return await self._at_owner(request, run_id, here)

    async def task_action(self, request: web.Request) -> web.StreamResponse:
        run_id = require_run_id(request.match_info["run_id"])
        task_id = request.match_info["task_id"]
        expected = parse_expected_seq(request.headers.get("If-Match"))
        req = parse_task_action(await request.read())
        key = parse_idempotency_key(request.headers.get("Idempotency-Key"))

        async def here() -> web.Response:
            await self.service.task_action(run_id, task_id, req, expected, key)
            return web.Response(status=204)

        return await self._at_owner(request, run_id, here)

    # ------------------------------------------------------------- claims and reports (issue 20)
    async def claim_task(self, request: web.Request) -> web.StreamResponse:
        """``POST /runs/{run_id}/tasks/{task_id}/claim``: 200 with the claim once the owner
        applied it; 409 ``task_held`` naming the holder."""
        run_id = require_run_id(request.match_info["run_id"])
        task_id = request.match_info["task_id"]
        req = parse_claim(await request.read())
        key = parse_idempotency_key(request.headers.get("Idempotency-Key"))

        async def here() -> web.Response:
            return json_response(await self.service.claim(run_id, task_id, req, key))

        return await self._at_owner(request, run_id, here)

    async def report_status(self, request: web.Request) -> web.StreamResponse:
        """``PUT /runs/{run_id}/tasks/{task_id}/status``: 204 once the owner applied it; 409
        ``task_held`` / ``lease_lapsed`` / ``task_transition`` with the reason."""
        run_id = require_run_id(request.match_info["run_id"])
        task_id = request.match_info["task_id"]
        req = parse_report(await request.read())
        key = parse_idempotency_key(request.headers.get("Idempotency-Key"))

        async def here() -> web.Response:
            await self.service.report(run_id, task_id, req, key)
            return web.Response(status=204)

        return await self._at_owner(request, run_id, here)

    async def stuck(self, request: web.Request) -> web.Response:
        """``GET /stuck``: the runs with no progress for ``older_than`` seconds, from every
        worker. This worker answers for its own partitions, and asks every other worker of the
        ownership map for theirs (a relayed request, answered for its own partitions only: never
        asked on); ``partial`` when a worker did not answer or a partition was answered by no
        one."""
        older_than_ms = parse_stuck_query(request.query)
        mine = self.deps.owners.stuck(older_than_ms)
        if is_relayed(request):
            answer = StuckRuns(runs=tuple(mine.runs), partial=False, partitions=mine.partitions)
            return json_response(answer)
        peers = self.deps.owners.peers()
        theirs = await asyncio.gather(*(self._peer_stuck(request, url, older_than_ms) for url in peers))  # fmt: skip
        runs = {r.run_id: r for r in mine.runs}
        covered = set(mine.partitions)
        partial = False
        for other in theirs:
            if other is None:
                partial = True
                continue
            covered.update(other.partitions or ())
            partial = partial or other.partial
            for r in other.runs:
                runs.setdefault(r.run_id, r)
        partial = partial or not covered.issuperset(range(mine.total))
        merged = tuple(sorted(runs.values(), key=lambda r: (r.since, r.run_id)))
        return json_response(StuckRuns(runs=merged, partial=partial))

    async def _peer_stuck(self, request: web.Request, url: str, older_than_ms: int) -> StuckRuns | None:  # fmt: skip
        """Worker ``url``'s stuck runs (its own partitions), or None when it did not answer
        with them within :data:`PEER_SECONDS`."""
        path = f"/api/v1/stuck?older_than={older_than_ms // 1000}"
        try:
            status, _, body = await asyncio.wait_for(
                self.relay.fetch(request, url, method="GET", path=path, body=b""), PEER_SECONDS
            )
            if status == 200:
                return msgspec.json.decode(body, type=StuckRuns)
        except (ApiError, TimeoutError, msgspec.DecodeError):
            pass
        return None

    async def history(self, request: web.Request) -> web.StreamResponse:
        run_id = require_run_id(request.match_info["run_id"])

        async def here() -> web.Response:
            entries = await self.deps.owners.history(run_id)
            if entries is None:
                raise NotFound(f"run {run_id} not found")
            return json_response(to_builtins(History(run_id=run_id, events=entries)))

        return await self._at_owner(request, run_id, here)

    # ------------------------------------------------------------------------ executors
    def _executors(self) -> Executors:
        if self.deps.executors is None:
            raise Unavailable("this worker does not serve executors; use another")
        return self.deps.executors

    async def heartbeat(self, request: web.Request) -> web.Response:
        """Any worker appends the heartbeat (no relay: every worker hears every one); 204 once
        Kafka acknowledged it."""
        executor_id = require_executor_id(request.match_info["executor_id"])
        lease_ms = parse_heartbeat(await request.read())
        hb = Heartbeat(executor_id=executor_id, lease_ms=lease_ms, at=self.deps.clock())
        await self._executors().heartbeat(hb)
        return web.Response(status=204)

    async def get_executor(self, request: web.Request) -> web.Response:
        executor_id = require_executor_id(request.match_info["executor_id"])
        seen = self._executors().seen(executor_id)
        if seen is None:
            raise NotFound(f"no heartbeat of executor {executor_id!r} heard in the last hour")
        return json_response(to_builtins(seen))

    # ------------------------------------------------------------------------ service
    async def healthz(self, request: web.Request) -> web.Response:
        """200 ``{"status": "ok", ...}`` when ready, else 503 with a message naming what is not
        ready; both carry the detail (partitions, lag, index, topic warnings)."""
        detail = dict(self.deps.ready())
        if detail.get("ready"):
            return json_response({"status": "ok", **detail})
        why = "; ".join(detail.get("not_ready") or ()) or "the agents are catching up with the log"
        body = {"message": f"not ready: {why}", "status": "not ready", **detail}
        return json_response(body, status=503, headers={"Retry-After": "1"})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


class _NeedsRelay(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def _is_taken(response: web.StreamResponse) -> bool:
    """True for an owner's 409 ``run_id_taken`` passed back by the relay."""
    if response.status != 409 or not isinstance(response, web.Response) or response.body is None:
        return False
    try:
        body = orjson.loads(bytes(response.body))  # type: ignore[arg-type]
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("code") == RUN_ID_TAKEN


def _passed_on(status: int, body: bytes) -> Exception:
    """The owner's error, to raise here with its status and message."""
    from api.errors import error_for_status

    try:
        message = orjson.loads(body).get("message", "")
    except (orjson.JSONDecodeError, AttributeError):
        message = ""
    return error_for_status(status, message or "the owner of the run failed")
