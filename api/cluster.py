"""The hop between workers, authenticated by the cluster itself (docs/api.md, "The relay's
authentication").

A worker relaying a request to a run's owner marks it with ``X-Runstream-*`` headers (who
relays, the run id it allocated, the caller's scopes) and signs it: an HMAC-SHA256, with the
deployment's cluster secret, of the method, the path with its query, the time, every
``X-Runstream-*`` header it sets, the headers that change what the owner does (``Accept``,
``If-Match``, ``Idempotency-Key``) and the SHA-256 of the body. The owner honours those headers
only when the signature is right and the time within :data:`MAX_SKEW_MS` of its clock; a request
from outside carrying any ``X-Runstream-*`` header without a valid signature is refused (400),
so nobody but a worker chooses a run id, claims scopes, or asks for a run's full state.

The secret: ``RUNSTREAM_CLUSTER_SECRET``, else one the first worker generated and stored in
etcd under the deployment's prefix (``agents.api_server``). An application built without one
(``create_api`` in tests) gets :data:`PROCESS_SECRET`: only applications of the same process
trust each other.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping

from api.scopes import Scope, parse_scopes

__all__ = [
    "HEADER_PREFIX",
    "MAX_SKEW_MS",
    "PROCESS_SECRET",
    "RELAY_HEADER",
    "RUN_ID_HEADER",
    "SCOPES_HEADER",
    "SIGNATURE_HEADER",
    "TIME_HEADER",
    "ClusterKey",
    "HopRefused",
]

#: Every header the hop sets starts with this; from outside, unsigned, they are refused.
HEADER_PREFIX = "x-runstream-"
#: Marks a request one worker relays to another (the value is the relaying worker's URL).
RELAY_HEADER = "X-Runstream-Relayed-By"
#: On a relayed ``POST /runs``: the run id the relaying worker allocated for the new run.
RUN_ID_HEADER = "X-Runstream-Run-Id"
#: The scopes of the caller the relaying worker authenticated (the owner masks by them).
SCOPES_HEADER = "X-Runstream-Scopes"
#: Milliseconds since the epoch when the relaying worker signed the request.
TIME_HEADER = "X-Runstream-Relay-Time"
#: Hex HMAC-SHA256 of the request (:meth:`ClusterKey.signature`).
SIGNATURE_HEADER = "X-Runstream-Relay-Signature"
#: How far a signed request's time may be from the owner's clock (workers run NTP).
MAX_SKEW_MS = 120_000
#: Headers outside ``X-Runstream-*`` that the signature covers.
_COVERED = ("accept", "if-match", "idempotency-key")

#: The secret of applications given none: shared by the applications of this process only.
PROCESS_SECRET = secrets.token_bytes(32)


class HopRefused(Exception):
    """A request carrying ``X-Runstream-*`` headers without the cluster's valid signature."""


class ClusterKey:
    """Signs and checks the hop. ``secret`` may be set after the application is built (the
    worker reads it from etcd before it serves)."""

    def __init__(self, secret: bytes | str = b"") -> None:
        self.secret = secret

    @property
    def secret(self) -> bytes:
        return self._secret

    @secret.setter
    def secret(self, value: bytes | str) -> None:
        raw = value.encode() if isinstance(value, str) else value
        self._secret = raw or PROCESS_SECRET

    def signature(
        self, method: str, path_qs: str, headers: Mapping[str, str], body: bytes, at_ms: str
    ) -> str:
        """The hex HMAC of a request (``headers``: any case; only those covered count)."""
        lower = {k.lower(): v for k, v in headers.items()}
        signed = sorted(
            (k, v)
            for k, v in lower.items()
            if (k.startswith(HEADER_PREFIX) and k != SIGNATURE_HEADER.lower()) or k in _COVERED
        )
        parts = [method.upper(), path_qs, at_ms, hashlib.sha256(body).hexdigest()]
        parts += [f"{k}:{v}" for k, v in signed]
        message = "\n".join(parts).encode("utf-8", "surrogateescape")
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def sign(
        self,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        *,
        scopes: Iterable[Scope] = (),
        now_ms: int | None = None,
    ) -> dict[str, str]:
        """``headers`` with the caller's ``scopes``, the time and the signature added."""
        out = {k: v for k, v in headers.items() if not k.lower().startswith("x-runstream-relay-")}
        if not any(k.lower() == "accept" for k in out):  # an HTTP client would add its own
            out["Accept"] = "application/json"
        out[SCOPES_HEADER] = ",".join(sorted(s.value for s in scopes))
        at = str(int(time.time() * 1000) if now_ms is None else now_ms)
        out[TIME_HEADER] = at
        out[SIGNATURE_HEADER] = self.signature(method, path_qs, out, body, at)
        return out

    def verify(
        self,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        now_ms: int | None = None,
    ) -> frozenset[Scope]:
        """The caller's scopes a correctly signed request carries; ``HopRefused`` otherwise."""
        lower = {k.lower(): v for k, v in headers.items()}
        given = lower.get(SIGNATURE_HEADER.lower(), "")
        at = lower.get(TIME_HEADER.lower(), "")
        if not given or not at.isdigit() or len(at) > 16:
            raise HopRefused("X-Runstream-* headers are set by the workers only (not signed)")
        now = int(time.time() * 1000) if now_ms is None else now_ms
        if abs(now - int(at)) > MAX_SKEW_MS:
            raise HopRefused("X-Runstream-* headers: the relay's signature is too old or too new")
        expected = self.signature(method, path_qs, headers, body, at)
        if not hmac.compare_digest(given.encode("ascii", "replace"), expected.encode()):
            raise HopRefused(
                "X-Runstream-* headers are set by the workers only (bad signature; do the "
                "workers share RUNSTREAM_CLUSTER_SECRET?)"
            )
        scopes = lower.get(SCOPES_HEADER.lower(), "")
        return parse_scopes(scopes) if scopes else frozenset()
