"""etcd adapter of the ``Kv`` port (aetcd): the only module that imports aetcd.

grpc/aetcd errors are translated here: no answer (unavailable, deadline) becomes
``EtcdUnavailable`` (retriable); anything else ``DataManagerError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import aetcd
import aetcd.transactions as txn

from datamanager.errors import DataManagerError, EtcdUnavailable
from datamanager.kv import KvValue

__all__ = ["EtcdKv"]

P = ParamSpec("P")
T = TypeVar("T")


def _translated(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except (aetcd.ConnectionFailedError, aetcd.ConnectionTimeoutError) as exc:
            raise EtcdUnavailable(f"etcd unavailable: {exc}") from exc
        except (TimeoutError, ConnectionError) as exc:
            raise EtcdUnavailable(f"etcd unavailable: {exc!r}") from exc
        except aetcd.ClientError as exc:
            raise DataManagerError(f"etcd error: {exc}") from exc

    return wrapper


class EtcdKv:
    """``Kv`` on etcd 3.4. ``endpoint`` is ``"host:port"``; every key is stored under ``prefix``.

    ``timeout`` bounds each request, so a hung server surfaces as ``EtcdUnavailable``.
    """

    def __init__(self, endpoint: str, prefix: str = "", *, timeout: float = 10.0) -> None:
        host, _, port = endpoint.split("://", 1)[-1].rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"bad etcd endpoint {endpoint!r}: want host:port")
        self.endpoint = endpoint
        self.prefix = prefix
        self._client: Any = aetcd.Client(host=host, port=int(port), timeout=timeout)

    def __repr__(self) -> str:
        return f"EtcdKv({self.endpoint!r}, prefix={self.prefix!r})"

    def _key(self, key: str) -> bytes:
        return (self.prefix + key).encode()

    @_translated
    async def get(self, key: str) -> KvValue | None:
        got = await self._client.get(self._key(key))
        return None if got is None else _value(got)

    @_translated
    async def get_prefix(self, prefix: str) -> list[tuple[str, KvValue]]:
        got = await self._client.get_prefix(self._key(prefix), sort_order="ascend")
        cut = len(self.prefix.encode())
        return [(kv.key[cut:].decode(), _value(kv)) for kv in got.kvs]

    @_translated
    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        put = await self._client.put(self._key(key), value, lease=lease or None)
        return int(put.header.revision)

    @_translated
    async def delete(self, key: str) -> bool:
        deleted = await self._client.delete(self._key(key))
        return deleted is not None and int(getattr(deleted, "deleted", 1)) > 0

    @_translated
    async def compare_and_swap(
        self, key: str, value: bytes, *, mod_revision: int | None, lease: int = 0
    ) -> int | None:
        k = self._key(key)
        compare = txn.Create(k) == 0 if mod_revision is None else txn.Mod(k) == mod_revision
        ok, responses = await self._client.transaction(
            compare=[compare], success=[txn.Put(k, value, lease=lease or None)], failure=[]
        )
        if not ok:
            return None
        return int(responses[0].response_put.header.revision)

    @_translated
    async def create_all(self, items: Sequence[tuple[str, bytes]], *, lease: int = 0) -> bool:
        keys = [self._key(k) for k, _ in items]
        puts = [txn.Put(self._key(k), v, lease=lease or None) for k, v in items]
        ok, _ = await self._client.transaction(
            compare=[txn.Create(k) == 0 for k in keys], success=puts, failure=[]
        )
        return bool(ok)

    @_translated
    async def compare_and_delete(self, key: str, *, mod_revision: int) -> bool:
        k = self._key(key)
        ok, _ = await self._client.transaction(
            compare=[txn.Mod(k) == mod_revision], success=[txn.Delete(k)], failure=[]
        )
        return bool(ok)

    @_translated
    async def grant_lease(self, ttl: int) -> int:
        lease = await self._client.lease(ttl)
        return int(lease.id)

    @_translated
    async def refresh_lease(self, lease_id: int) -> int:
        reply = await self._client.refresh_lease(lease_id)
        return -1 if reply is None else int(reply.TTL)

    @_translated
    async def revoke_lease(self, lease_id: int) -> None:
        try:
            await self._client.revoke_lease(lease_id)
        except aetcd.ClientError as exc:
            if "not found" not in str(exc):
                raise

    async def close(self) -> None:
        # Closing must never raise: it runs in finally blocks and fixture teardowns.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._client.close(), 5)

    async def __aenter__(self) -> EtcdKv:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _value(kv: Any) -> KvValue:
    return KvValue(
        value=bytes(kv.value),
        mod_revision=int(kv.mod_revision),
        create_revision=int(kv.create_revision),
        lease=int(kv.lease),
    )
