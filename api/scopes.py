"""Who may do what: the API's scopes, the tokens that hold them, the route → scope table, and
the masking of secret values (docs/api.md, "Tokens and scopes").

Four scopes, each a kind of caller:

* ``read``: every ``GET`` (runs, listings, histories, the phase stream, stuck runs, executors,
  the API documents) — the console, dashboards;
* ``write``: what a person or the scheduler does to runs — create, recreate, start, stop,
  cancel, approve, set annotations;
* ``execute``: what an executor does — claim a task, report its status, heartbeat. It is the
  only scope that is shown ``environment`` values (an executor needs them to run a task);
  every other answer carries the keys with each value replaced by :data:`MASK`;
* ``admin``: operations — dead letters over HTTP (``/api/v1/dlq...``) and any route not in the
  table (fail closed).

Scopes do not include each other: an executor's token holds ``read,execute`` (it reads runs to
find ready tasks), a scheduler's ``read,write``. ``RUNSTREAM_API_TOKEN`` is a token holding
every scope. With no token configured every caller holds every scope — the worker then serves
loopback only (``agents.api_server``), where whoever connects can read Kafka's log in clear anyway.
"""

from __future__ import annotations

import contextvars
import hashlib
from collections.abc import Iterable, Mapping
from enum import StrEnum

from msgspec.structs import replace

from events.model import RunConfig

__all__ = [
    "ALL_SCOPES",
    "MASK",
    "PREFIX_SCOPES",
    "ROUTE_SCOPES",
    "Scope",
    "Tokens",
    "mask_config",
    "parse_scopes",
    "parse_tokens_env",
    "parse_tokens_file",
    "required_scope",
    "reveal_secrets",
    "revealing",
]


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"
    EXECUTE = "execute"
    ADMIN = "admin"


ALL_SCOPES: frozenset[Scope] = frozenset(Scope)

#: What an ``environment`` value is replaced with for a caller without ``execute``.
MASK = "***"

_API = "/api/v1"
R, W, X, A = Scope.READ, Scope.WRITE, Scope.EXECUTE, Scope.ADMIN

#: The one table: (method, route as aiohttp spells it) → the scope a caller needs.
ROUTE_SCOPES: Mapping[tuple[str, str], Scope] = {
    ("GET", f"{_API}/runs"): R,
    ("GET", f"{_API}/runs/events"): R,
    ("GET", f"{_API}/runs/tasks/events"): R,
    ("GET", f"{_API}/runs/{{run_id}}"): R,
    ("GET", f"{_API}/runs/{{run_id}}/history"): R,
    ("GET", f"{_API}/stuck"): R,
    ("GET", f"{_API}/executors/{{executor_id}}"): R,
    ("GET", f"{_API}/openapi.json"): R,
    ("GET", f"{_API}/asyncapi.json"): R,
    ("POST", f"{_API}/runs"): W,  # a creation, or a recreation (body with run_id)
    ("PUT", f"{_API}/runs/{{run_id}}/actions"): W,  # start, cancel, stop
    ("PUT", f"{_API}/runs/{{run_id}}/tasks/{{task_id}}/actions"): W,  # approve, annotations
    ("POST", f"{_API}/runs/{{run_id}}/tasks/{{task_id}}/claim"): X,
    ("PUT", f"{_API}/runs/{{run_id}}/tasks/{{task_id}}/status"): X,
    ("POST", f"{_API}/executors/{{executor_id}}/heartbeat"): X,
}
#: Path prefixes whose every route needs a scope, whatever the method (routes added later).
PREFIX_SCOPES: tuple[tuple[str, Scope], ...] = ((f"{_API}/dlq", A),)


def required_scope(method: str, route: str) -> Scope:
    """The scope ``method route`` needs; a routed path in neither table needs ``admin``."""
    found = ROUTE_SCOPES.get((method, route))
    if found is not None:
        return found
    for prefix, scope in PREFIX_SCOPES:
        if route == prefix or route.startswith(prefix + "/"):
            return scope
    return Scope.ADMIN


def parse_scopes(text: str, *, sep: str = ",") -> frozenset[Scope]:
    """``read,write`` → the scopes; ``ValueError`` naming an unknown one (or none given)."""
    names = [n.strip() for n in text.split(sep) if n.strip()]
    if not names:
        raise ValueError("no scope given")
    out = set()
    for n in names:
        try:
            out.add(Scope(n))
        except ValueError:
            known = ", ".join(s.value for s in Scope)
            raise ValueError(f"unknown scope {n!r} (known: {known})") from None
    return frozenset(out)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class Tokens:
    """The configured tokens and their scopes. A token is looked up by its SHA-256, so the
    lookup's time does not depend on how much of a guess matches a real token."""

    def __init__(self, tokens: Mapping[str, Iterable[Scope]] | None = None) -> None:
        self._by_digest: dict[bytes, frozenset[Scope]] = {}
        for token, scopes in (tokens or {}).items():
            if not token or any(c.isspace() for c in token):
                raise ValueError("a token must be non-empty, without spaces")
            held = self._by_digest.get(_digest(token), frozenset())
            self._by_digest[_digest(token)] = held | frozenset(scopes)

    def __bool__(self) -> bool:
        return bool(self._by_digest)

    def __len__(self) -> int:
        return len(self._by_digest)

    def scopes_of(self, token: str) -> frozenset[Scope] | None:
        """The scopes of ``token``, None for a token not configured."""
        return self._by_digest.get(_digest(token))


def parse_tokens_env(text: str) -> dict[str, frozenset[Scope]]:
    """``RUNSTREAM_API_TOKENS``: ``token:scope+scope;token2:scope`` (spaces around parts
    ignored)."""
    out: dict[str, frozenset[Scope]] = {}
    for n, part in enumerate(p.strip() for p in text.split(";")):
        if not part:
            continue
        token, colon, scopes = part.rpartition(":")
        if not colon or not token.strip():
            raise ValueError(f"RUNSTREAM_API_TOKENS entry {n + 1}: expected token:scope+scope")
        try:
            out[token.strip()] = out.get(token.strip(), frozenset()) | parse_scopes(scopes, sep="+")  # fmt: skip
        except ValueError as exc:
            raise ValueError(f"RUNSTREAM_API_TOKENS entry {n + 1}: {exc}") from None
    return out


def parse_tokens_file(text: str, name: str = "tokens file") -> dict[str, frozenset[Scope]]:
    """One token per line: ``<token> <scope>[,<scope>...]``; blank lines and lines starting
    with ``#`` are ignored."""
    out: dict[str, frozenset[Scope]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise ValueError(f"{name} line {n}: expected '<token> <scope>[,<scope>...]'")
        try:
            out[parts[0]] = out.get(parts[0], frozenset()) | parse_scopes(parts[1].replace(" ", ""))  # fmt: skip
        except ValueError as exc:
            raise ValueError(f"{name} line {n}: {exc}") from None
    return out


# -- masking -------------------------------------------------------------------------------------

#: Whether the request being answered may see ``environment`` values (its caller holds
#: ``execute``). Set by the auth middleware for the request's task; unset: masked.
revealing: contextvars.ContextVar[bool] = contextvars.ContextVar("runstream_reveal", default=False)


def reveal_secrets() -> bool:
    return revealing.get()


def _masked(env: Mapping[str, str]) -> Mapping[str, str]:
    return dict.fromkeys(env, MASK)


def mask_config(config: RunConfig) -> RunConfig:
    """``config`` with the values of its ``environment`` and of every task's ``environment``
    masked (the keys stay)."""
    tasks = {tid: replace(t, environment=_masked(t.environment)) for tid, t in config.tasks.items()}
    return replace(config, environment=_masked(config.environment), tasks=tasks)
