"""KeyStore in Redis, shared by every router: one hash per key, one sorted index."""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as aioredis

from router.tenancy.keys import KeyRecord
from router.tenancy.redis_util import unreachable_as_store_error

_INDEX = b"imesh:keys"  # sorted set: key id by creation time


def _record_key(key_id: str) -> str:
    return f"imesh:key:{key_id}"


class RedisKeyStore:
    """Lifecycle: given a client it does not own; `aclose()` is a no-op (the owner closes
    the client). Holds digests only: the raw key never reaches Redis."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    async def get(self, key_id: str) -> KeyRecord | None:
        with unreachable_as_store_error():
            fields = cast(dict[bytes, bytes], await self._redis.hgetall(_record_key(key_id)))
        return _decode(key_id, fields) if fields else None

    async def put(self, record: KeyRecord) -> None:
        mapping: dict[Any, Any] = {
            "tenant": record.tenant,
            "digest": record.digest,
            "created_at": repr(record.created_at),
            "revoked_at": "" if record.revoked_at is None else repr(record.revoked_at),
            "label": record.label,
        }
        with unreachable_as_store_error():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(_record_key(record.key_id), mapping=mapping)
                pipe.zadd(_INDEX, {record.key_id: record.created_at})
                await pipe.execute()

    async def list(self, *, tenant: str | None = None, prefix: str = "") -> list[KeyRecord]:
        with unreachable_as_store_error():
            members = cast(list[bytes], await self._redis.zrange(_INDEX, 0, -1))
            ids = [i.decode() for i in members]
            ids = [i for i in ids if f"imk_{i}".startswith(prefix)]
            async with self._redis.pipeline(transaction=False) as pipe:
                for key_id in ids:
                    pipe.hgetall(_record_key(key_id))
                rows = await pipe.execute()
        records = [_decode(i, f) for i, f in zip(ids, rows, strict=True) if f]
        return [r for r in records if tenant is None or r.tenant == tenant]

    async def aclose(self) -> None:
        return None


def _decode(key_id: str, fields: dict[bytes, bytes]) -> KeyRecord:
    revoked = fields.get(b"revoked_at", b"")
    return KeyRecord(
        key_id=key_id,
        tenant=fields[b"tenant"].decode(),
        digest=fields[b"digest"].decode(),
        created_at=float(fields[b"created_at"]),
        revoked_at=float(revoked) if revoked else None,
        label=fields.get(b"label", b"").decode(),
    )
