"""Who may use a worker's API: its tokens (from the settings), the loopback rule, and the cluster
secret the workers sign their hops with (docs/api.md, "Tokens and scopes").

* Tokens: ``RUNSTREAM_API_TOKEN`` (every scope), ``RUNSTREAM_API_TOKENS``
  (``token:scope+scope;...``) and ``--api-tokens-file`` (``<token> <scope>[,<scope>...]`` per
  line), merged (a token named twice holds the scopes of both).
* No token at all: the API has no authentication, so the worker serves it on a loopback address
  only — a non-loopback ``--web-host`` is refused at start (one line naming what to set).
* The cluster secret: ``RUNSTREAM_CLUSTER_SECRET``, else the one the first worker of the
  deployment generated and stored in etcd under the deployment's prefix (put only if absent, so
  every worker reads the same one). Whoever reads that etcd prefix can sign hops; they can also
  rewrite every run's checkpoint pointer, so etcd is inside the trust boundary already.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
from pathlib import Path

from agents.config import Settings
from agents.keys import cluster_secret_key
from api.scopes import Scope, parse_tokens_env, parse_tokens_file
from datamanager.kv import Kv

__all__ = ["api_tokens", "check_exposure", "cluster_secret", "is_loopback"]

log = logging.getLogger("runstream.web")


def api_tokens(settings: Settings) -> dict[str, frozenset[Scope]]:
    """The tokens of ``RUNSTREAM_API_TOKENS`` and ``--api-tokens-file`` (``RUNSTREAM_API_TOKEN``
    is ``create_api``'s ``api_token``). ``ValueError`` naming what is wrong."""
    out = dict(parse_tokens_env(settings.api_tokens)) if settings.api_tokens else {}
    if settings.api_tokens_file:
        path = Path(settings.api_tokens_file)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"--api-tokens-file {path}: {exc.strerror or exc}") from None
        for token, scopes in parse_tokens_file(text, f"--api-tokens-file {path}").items():
            out[token] = out.get(token, frozenset()) | scopes
    for token in out:
        if not token or any(c.isspace() for c in token):
            raise ValueError("an API token must be non-empty, without spaces")
    return out


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, tokens: dict[str, frozenset[Scope]]) -> None:
    """Refuse (``ValueError``, one line) to serve the API without a token anywhere but on a
    loopback address; log that it serves without authentication when it does."""
    if settings.api_token or tokens:
        return
    if not is_loopback(settings.web_host):
        raise ValueError(
            f"RUNSTREAM_WEB_HOST={settings.web_host!r} is not a loopback address and no API "
            "token is configured: set RUNSTREAM_API_TOKEN, RUNSTREAM_API_TOKENS or "
            "--api-tokens-file (or bind 127.0.0.1)"
        )
    log.warning(
        "the API serves without authentication, on loopback only (no API token configured)",
        extra={"host": settings.web_host, "port": settings.web_port},
    )


async def cluster_secret(settings: Settings, kv: Kv, *, retry: float = 1.0) -> bytes:
    """``RUNSTREAM_CLUSTER_SECRET``, else the deployment's secret in etcd (generated and put
    only if absent by the first worker to ask). Retries while etcd does not answer."""
    if settings.cluster_secret:
        return settings.cluster_secret.encode()
    key = cluster_secret_key()
    while True:
        try:
            got = await kv.get(key)
            if got is not None and got.value:
                return bytes(got.value)
            fresh = secrets.token_hex(32).encode()
            if await kv.compare_and_swap(key, fresh, mod_revision=None) is not None:
                log.info("generated the cluster secret and stored it in etcd", extra={"key": key})
                return fresh
        except Exception as exc:  # etcd down or slow: the API waits, the worker stays up
            log.warning("cannot read the cluster secret from etcd; retrying", extra={"error": repr(exc)})  # fmt: skip
            await asyncio.sleep(retry)
