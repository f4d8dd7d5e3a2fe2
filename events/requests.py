"""Creation requests: runs a producer asks runstream to create, and the replies it gets back.

A producer that cannot reach etcd cannot allocate a run id. It sends a request instead, without a
run id, and runstream allocates one from the sequence, exactly once per request id, appends the
creation event to ``runs.events`` and replies on ``runs.replies`` (key = request id):

* :class:`RunRequest` on ``runs.requests``: the creation fields ``POST /runs`` takes too
  (``events.catalogue.CreationFields``), plus ``request_id``;
* :class:`SetupErrorReport` on ``runs.setup-errors``: the webhook receiver's report of a
  project whose config does not parse (a run in ``setuperror``); its ``id`` is the request id;
* :class:`RequestReply` on ``runs.replies``: the request id, the run id it was given (``created``)
  or why it was refused (``refused``: nothing was created, no id was spent).

Like every shape of ``events``, these Structs are the one declaration: the agent decodes with
them and the JSON Schemas of ``docs/schemas`` come from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated

from msgspec import Meta

from events.catalogue import SETUP_ERROR_RUN_NAME, CreationFields
from events.model import Count, Millis, Name, RunId, SetupError, Shape

__all__ = [
    "MAX_REQUEST_ID",
    "Refusal",
    "ReplyOutcome",
    "RequestId",
    "RequestReply",
    "RunRequest",
    "SetupErrorReport",
]

MAX_REQUEST_ID = 200
#: A producer's request id: unique per request, the same on every retry of it.
RequestId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_REQUEST_ID,
        pattern="^[!-~]+(?![\\s\\S])",  # the end of the string in every dialect (not "$")
        description="printable ASCII without spaces; the same on every retry of one request",
    ),
]


class RunRequest(CreationFields):
    """Create a run (the body of ``POST /runs``) and give it an id from the sequence.

    ``at`` (ms since the epoch) becomes the creation event's time; the time the request is
    handled when absent. A run with ``setup_errors`` is created in ``setuperror``.
    """

    request_id: RequestId
    at: Millis | None = None


class SetupErrorReport(Shape):
    """A project's config did not parse: create a run in ``setuperror`` named ``name``.

    ``id`` is the request id; without one, the record's topic, partition and offset are used
    (a report sent twice then makes two runs).
    """

    group: str
    errors: tuple[SetupError, ...]
    id: RequestId | None = None
    name: Name = SETUP_ERROR_RUN_NAME
    static_environment: Mapping[str, str] = {}
    annotations: Mapping[str, str] = {}
    counter: Count = 0
    at: Millis | None = None


class ReplyOutcome(StrEnum):
    CREATED = "created"  # the creation event is in runs.events: follow runs.phases for run_id
    REFUSED = "refused"  # nothing was created; ``reason`` says why

    def is_created(self) -> bool:
        return self is ReplyOutcome.CREATED


class RequestReply(Shape):
    """The answer to one request (at least once: a retried request gets the same answer)."""

    request_id: str
    outcome: ReplyOutcome
    run_id: RunId | None = None
    reason: str = ""
    at: Millis


class Refusal(Shape):
    """The answer to an event the owner of its run refused (on ``runs.refusals``, key = run id,
    the partition with the same number as the run's in ``runs.events``): which event (``event_id``,
    ``type``), why (``code``, one of the refusal codes of docs/events.md, and ``reason``, the
    text), where it was read (``partition``, ``offset``) and when it was judged (``at``, the
    event's own time). Every refusal is answered at least once (after a crash an answer may come
    again: the event id tells them apart)."""

    event_id: str
    run_id: str
    type: str
    code: str
    reason: str
    partition: Count
    offset: Count
    at: Millis
