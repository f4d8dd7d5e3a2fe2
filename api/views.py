"""The API's response shapes as msgspec Structs (the OpenAPI components come from them), and
the functions that render runs, pages and JSON responses.

A run is shown in its stored form (``events.state``): ``Run`` and ``RunConfig`` as declared in
``events.model``, with their ``tasks`` maps as arrays in submission order (a task carries its
id), so the API and the data files agree on one shape: :class:`RunView` and
:class:`RunConfigView` are those two with that one difference, and a run's answer is encoded from
them (the OpenAPI components come from the same Structs, so the two cannot drift). ``seq`` is the
run's revision (the sequence number of its last phase or result change, also sent as the
``ETag``).
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import msgspec
from aiohttp import web
from msgspec import UNSET, Meta, UnsetType

from api.bodies import Cursor
from api.scopes import mask_config, reveal_secrets
from api.waiting import Waiting
from events import Phase, PlannedTask, Run, RunConfig, RunState, RunTask
from events.executors import ExecutorId
from events.model import Count, Lease, Millis, Name, OpenShape, RunId, Shape
from indexer import Page, RunEntry

__all__ = [
    "RESPONSE_TYPES",
    "Error",
    "ExecutorSeen",
    "RunConfigView",
    "RunEntry",
    "RunPage",
    "RunView",
    "RunWithConfig",
    "StuckRun",
    "StuckRuns",
    "TaskClaim",
    "etag",
    "json_response",
    "page_view",
    "run_view",
]


def _shown_doc(cls: type) -> str:
    return f"{inspect.cleandoc(cls.__doc__ or '')}\n\n``tasks``: an array, in submission order."


# Run and RunConfig as shown (and stored): every field as declared in events.model, but ``tasks``,
# an array in submission order instead of the map by task id (a task carries its id).
class RunView(Run):
    __doc__ = _shown_doc(Run)

    tasks: tuple[RunTask, ...] = ()  # type: ignore[assignment]  # the map's values, in order


class RunConfigView(RunConfig):
    __doc__ = _shown_doc(RunConfig)

    tasks: tuple[PlannedTask, ...] = ()  # type: ignore[assignment]  # the map's values, in order


_RUN_FIELDS = Run.__struct_fields__
_CONFIG_FIELDS = RunConfig.__struct_fields__


def _shown_run(run: Run) -> RunView:
    values = {f: getattr(run, f) for f in _RUN_FIELDS}
    values["tasks"] = tuple(run.tasks.values())
    return RunView(**values)


def _shown_config(config: RunConfig) -> RunConfigView:
    values = {f: getattr(config, f) for f in _CONFIG_FIELDS}
    values["tasks"] = tuple(config.tasks.values())
    return RunConfigView(**values)


class RunWithConfig(Shape):
    """A run, its config and its revision (``tasks`` of both as arrays, see the module)."""

    run: RunView
    run_config: RunConfigView
    seq: Annotated[
        Count,
        Meta(description="revision: sequence number of the last phase or result change (the ETag)"),
    ]
    waiting: (
        Annotated[
            Waiting,
            Meta(
                description="what the run and its tasks that have not ended wait for, derived "
                "from the state (api.waiting); null for a run in a final phase"
            ),
        ]
        | None
    ) = None


class RunPage(Shape):
    """One page of a listing; ``next_cursor`` is null on the last page."""

    runs: tuple[RunEntry, ...]
    next_cursor: Cursor | None


class Error(OpenShape):
    """Every error body. A 500 always says ``internal server error``. Other fields may come
    (``/healthz`` adds its detail): a client ignores what it does not know."""

    message: str
    code: Annotated[str, Meta(description="a machine-readable reason, when any")] | UnsetType = (
        UNSET
    )


class TaskClaim(Shape):
    """A claim the run's owner applied: ``executor_id`` holds the task's attempt ``attempt``
    with a lease of ``lease_ms``."""

    run_id: RunId
    task_id: Name
    executor_id: ExecutorId
    attempt: Annotated[int, Meta(ge=1, description="1, then 2, 3, ... after a lost executor")]
    lease_ms: Lease


class StuckRun(Shape):
    """An active run with no progress since ``since`` (its enqueue or start, or a task's claim,
    start or end, whichever is latest); ``tasks``: those running or claimed since before then."""

    run_id: RunId
    group: str
    phase: Phase
    since: Millis
    tasks: tuple[Name, ...] = ()


class StuckRuns(Shape):
    """The runs with no progress for longer than asked, oldest first, from every worker's
    partitions. ``partial``: some partition was not answered for (a worker did not answer, a
    partition without a settled owner): runs may be missing."""

    runs: tuple[StuckRun, ...]
    partial: bool
    partitions: (
        Annotated[
            tuple[Count, ...],
            Meta(description="only between workers: the partitions the worker answered for"),
        ]
        | UnsetType
    ) = UNSET


class ExecutorSeen(Shape):
    """The last heartbeat of an executor this worker heard (every worker hears every one, a few
    ms after it is appended)."""

    executor_id: ExecutorId
    lease_ms: Annotated[int, Meta(description="the lease that heartbeat carried")]
    at: Annotated[Millis, Meta(description="when the executor sent it, by its own clock")]
    seen_ms_ago: Annotated[
        Count, Meta(description="milliseconds since this worker received it, by its clock")
    ]
    lapsed: Annotated[
        bool,
        Meta(
            description="this worker judges the lease lapsed: more than lease_ms passed since "
            "it received the heartbeat (or since it started reading heartbeats, if later)"
        ),
    ]


#: The response types, for the OpenAPI components.
RESPONSE_TYPES = (RunWithConfig, RunPage, Error, ExecutorSeen, TaskClaim, StuckRuns)

_encode = msgspec.json.Encoder().encode


def run_view(state: RunState, waiting: Waiting | None = None) -> RunWithConfig:
    """:class:`RunWithConfig` of a run state (the stored form), with what it waits for
    (``api.waiting``). ``environment`` values (the run's and each task's) are masked unless the
    request being answered holds the ``execute`` scope (``api.scopes``)."""
    config = state.config if reveal_secrets() else mask_config(state.config)
    return RunWithConfig(
        run=_shown_run(state.run),
        run_config=_shown_config(config),
        seq=state.seq,
        waiting=waiting,
    )


def page_view(page: Page) -> RunPage:
    """The :class:`RunPage` of an index page (its entries as the index made them)."""
    return RunPage(runs=page.runs, next_cursor=page.next_cursor)


def etag(state: RunState) -> str:
    return f'"{state.seq}"'


def json_response(
    body: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A response with ``body`` (JSON values or Structs) encoded by msgspec
    (``Content-Type: application/json``)."""
    return web.Response(
        body=_encode(body), status=status, content_type="application/json", headers=headers
    )
