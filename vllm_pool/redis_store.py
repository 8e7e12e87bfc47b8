"""The pool's membership in Redis, so several pool service instances agree and a restart
loses nothing.

One hash per replica (`imesh:pool:{pool}:replica:{id}`) whose Redis expiry is the lease:
Redis's own clock ends it, the same for every instance, and heartbeat and drain are
Lua scripts that touch a replica only while it lives. A set per pool indexes the hashes;
reads drop index entries whose hash has expired, and every heartbeat re-adds its own (so
a prune that raced with a re-registration costs at most one heartbeat of visibility).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import redis.asyncio as redis

from imesh.v1 import pool_service_pb2 as pb
from vllm_pool.store import ReplicaStore, wall_ms

_PREFIX = "imesh:pool:"
_POOLS = "imesh:pools"

# KEYS[1] replica hash, KEYS[2] the pool's index; ARGV: load bytes, now ms, replica id.
# Returns the state, or nil.
_HEARTBEAT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
redis.call('HSET', KEYS[1], 'load', ARGV[1], 'renewed_at', ARGV[2])
redis.call('PEXPIRE', KEYS[1], redis.call('HGET', KEYS[1], 'lease_ms'))
redis.call('SADD', KEYS[2], ARGV[3])
return redis.call('HGET', KEYS[1], 'state')
"""
# KEYS[1] the pool's index; ARGV: the key prefix of its replicas, then ids whose hash read
# empty. Removes only those still without a hash (one re-registered meanwhile stays).
_PRUNE = """
for i = 2, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0 then redis.call('SREM', KEYS[1], ARGV[i]) end
end
return 0
"""
# KEYS[1] replica hash; ARGV[1] the DRAINING state. Returns 1 when the replica lives.
_DRAIN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
return 1
"""


def _members(pool: str) -> str:
    return f"{_PREFIX}{pool}:members"


def _replica(pool: str, replica_id: str) -> str:
    return f"{_PREFIX}{pool}:replica:{replica_id}"


class RedisReplicaStore(ReplicaStore):
    def __init__(self, client: redis.Redis, clock_ms: Callable[[], int] = wall_ms) -> None:
        self._redis = client
        self._clock_ms = clock_ms
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._drain = client.register_script(_DRAIN)
        self._prune = client.register_script(_PRUNE)

    @classmethod
    def from_url(cls, url: str) -> RedisReplicaStore:
        return cls(redis.Redis.from_url(url, decode_responses=False))

    async def register(
        self, spec: pb.ReplicaSpec, load: pb.ReplicaLoad, lease_ms: int
    ) -> pb.Replica:
        now = self._clock_ms()
        key = _replica(spec.pool, spec.replica_id)
        async with self._redis.pipeline(transaction=True) as tx:
            tx.delete(key)
            tx.hset(
                key,
                mapping={
                    "spec": spec.SerializeToString(),
                    "state": pb.REPLICA_STATE_READY,
                    "load": load.SerializeToString(),
                    "registered_at": now,
                    "renewed_at": now,
                    "lease_ms": lease_ms,
                },
            )
            tx.pexpire(key, lease_ms)
            tx.sadd(_members(spec.pool), spec.replica_id)
            tx.sadd(_POOLS, spec.pool)
            await tx.execute()
        return pb.Replica(
            spec=spec,
            state=pb.REPLICA_STATE_READY,
            load=load,
            registered_at_ms=now,
            renewed_at_ms=now,
            lease_ms=lease_ms,
        )

    async def heartbeat(
        self, pool: str, replica_id: str, load: pb.ReplicaLoad
    ) -> pb.Replica | None:
        key = _replica(pool, replica_id)
        state = await self._heartbeat(
            keys=[key, _members(pool)],
            args=[load.SerializeToString(), self._clock_ms(), replica_id],
        )
        if state is None:
            return None
        fields = cast(dict[bytes, bytes], await self._redis.hgetall(key))
        return _decode(fields) if fields else None

    async def drain(self, pool: str, replica_id: str) -> bool:
        done = await self._drain(
            keys=[_replica(pool, replica_id)], args=[pb.REPLICA_STATE_DRAINING]
        )
        return bool(done)

    async def deregister(self, pool: str, replica_id: str) -> bool:
        async with self._redis.pipeline(transaction=True) as tx:
            tx.delete(_replica(pool, replica_id))
            tx.srem(_members(pool), replica_id)
            deleted, _ = await tx.execute()
        return bool(deleted)

    async def list(self, pool: str = "") -> list[pb.Replica]:
        pools = (
            [pool]
            if pool
            else sorted(p.decode() for p in cast(set[bytes], await self._redis.smembers(_POOLS)))
        )
        out: list[pb.Replica] = []
        for name in pools:
            members = cast(set[bytes], await self._redis.smembers(_members(name)))
            ids = sorted(i.decode() for i in members)
            if not ids:
                continue
            async with self._redis.pipeline(transaction=False) as pipe:
                for replica_id in ids:
                    pipe.hgetall(_replica(name, replica_id))
                rows = await pipe.execute()
            gone = [replica_id for replica_id, row in zip(ids, rows, strict=True) if not row]
            if gone:
                await self._prune(keys=[_members(name)], args=[_replica(name, ""), *gone])
            out.extend(_decode(row) for row in rows if row)
        return out

    async def aclose(self) -> None:
        await self._redis.aclose()


def _decode(fields: dict[bytes, bytes]) -> pb.Replica:
    replica = pb.Replica(
        state=int(fields[b"state"]),  # type: ignore[arg-type]
        registered_at_ms=int(fields[b"registered_at"]),
        renewed_at_ms=int(fields[b"renewed_at"]),
        lease_ms=int(fields[b"lease_ms"]),
    )
    replica.spec.ParseFromString(fields[b"spec"])
    replica.load.ParseFromString(fields[b"load"])
    return replica
