"""Keys: format, HMAC digests, constant-time match, and stores that never see a raw key."""

from __future__ import annotations

import logging

import pytest
import redis.asyncio as aioredis

from imesh.errors import MeshError, Reason
from router.tenancy.authenticate import KeyAuthenticator, require_model
from router.tenancy.config import TenantConfig
from router.tenancy.keys import KeyHasher, KeyRecord, key_id_of
from router.tenancy.store import StoreUnavailable
from router.tenancy.store_memory import MemoryKeyStore
from router.tenancy.store_redis import RedisKeyStore
from tests.router.tenancy.support import Clock

SECRET = b"test-secret-0123456789abcdef"
TENANTS = {"team-a": TenantConfig(models=frozenset({"fast"})), "team-b": TenantConfig()}


def test_issued_key_carries_its_id_and_matches_only_itself() -> None:
    hasher = KeyHasher(SECRET)
    issued = hasher.issue("team-a", now=1.0)
    assert key_id_of(issued.raw) == issued.record.key_id
    assert issued.record.prefix == f"imk_{issued.record.key_id}"
    assert hasher.matches(issued.raw, issued.record)
    assert not hasher.matches(
        issued.raw[:-1] + ("A" if issued.raw[-1] != "A" else "B"), issued.record
    )
    assert not KeyHasher(b"another-secret-0123456789").matches(issued.raw, issued.record)
    assert issued.raw not in repr(issued)


def test_malformed_keys_have_no_id() -> None:
    for raw in ("", "sk-abc", "imk_zz_" + "a" * 43, "imk_0123456789ab_short"):
        assert key_id_of(raw) is None


async def test_redis_store_holds_digests_never_the_raw_key(
    redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hasher = KeyHasher(SECRET)
    store = RedisKeyStore(redis_client)
    issued = hasher.issue("team-a", now=1.0)
    await store.put(issued.record)
    auth = KeyAuthenticator(hasher, store, TENANTS, cache_s=1)
    assert (await auth.authenticate(issued.raw)).tenant == "team-a"
    secret_part = issued.raw[len("imk_") + 13 :]  # after "imk_<key id>_"
    for key in await redis_client.keys("*"):
        assert secret_part.encode() not in key
        dump = await redis_client.dump(key)
        assert dump is not None
        assert secret_part.encode() not in dump
    assert secret_part not in caplog.text


async def test_unknown_missing_and_revoked_keys_are_unauthenticated() -> None:
    clock, wall = Clock(0.0), Clock(100.0)
    hasher, store = KeyHasher(SECRET), MemoryKeyStore()
    issued = hasher.issue("team-a", now=wall())
    await store.put(issued.record)
    auth = KeyAuthenticator(hasher, store, TENANTS, cache_s=2, clock=clock, wall_clock=wall)
    for raw, reason in (
        (None, Reason.MISSING_API_KEY),
        ("sk-not-ours", Reason.INVALID_API_KEY),
        (hasher.issue("team-a", now=1).raw, Reason.INVALID_API_KEY),  # never stored
    ):
        with pytest.raises(MeshError) as caught:
            await auth.authenticate(raw)
        assert caught.value.reason is reason
    assert (await auth.authenticate(issued.raw)).key_id == issued.record.key_id
    await store.put(issued.record.revoked(at=wall()))
    assert (await auth.authenticate(issued.raw)).tenant == "team-a"  # cached for cache_s
    clock.now += 2
    with pytest.raises(MeshError) as caught:
        await auth.authenticate(issued.raw)
    assert caught.value.reason is Reason.INVALID_API_KEY


async def test_a_rotated_key_keeps_working_until_its_grace_ends() -> None:
    wall = Clock(100.0)
    hasher, store = KeyHasher(SECRET), MemoryKeyStore()
    issued = hasher.issue("team-b", now=wall())
    await store.put(issued.record.revoked(at=wall() + 30))
    auth = KeyAuthenticator(hasher, store, TENANTS, cache_s=0.001, wall_clock=wall)
    assert (await auth.authenticate(issued.raw)).tenant == "team-b"
    wall.now += 30
    with pytest.raises(MeshError):
        await auth.authenticate(issued.raw)


async def test_model_outside_the_tenants_list_is_permission_denied() -> None:
    hasher, store = KeyHasher(SECRET), MemoryKeyStore()
    issued = hasher.issue("team-a", now=1.0)
    await store.put(issued.record)
    principal = await KeyAuthenticator(hasher, store, TENANTS, cache_s=1).authenticate(issued.raw)
    require_model(principal.tenant, principal.config, "fast")
    with pytest.raises(MeshError) as caught:
        require_model(principal.tenant, principal.config, "smart")
    assert caught.value.reason is Reason.PERMISSION_DENIED


async def test_store_listing_filters_by_prefix_and_tenant(redis_client: aioredis.Redis) -> None:
    hasher = KeyHasher(SECRET)
    for store in (MemoryKeyStore(), RedisKeyStore(redis_client)):
        a1 = hasher.issue("team-a", now=1.0)
        a2 = hasher.issue("team-a", now=2.0)
        b1 = hasher.issue("team-b", now=3.0)
        for issued in (a1, a2, b1):
            await store.put(issued.record)
        listed = await store.list(tenant="team-a")
        assert [r.key_id for r in listed] == [a1.record.key_id, a2.record.key_id]
        assert [r.key_id for r in await store.list(prefix=b1.record.prefix[:10])] == [
            r.record.key_id
            for r in (a1, a2, b1)
            if r.record.prefix.startswith(b1.record.prefix[:10])
        ]
        assert await store.get(b1.record.key_id) == b1.record


class FlakyStore(MemoryKeyStore):
    """A store that can be made unreachable, counting the lookups it was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.gets = 0

    async def get(self, key_id: str) -> KeyRecord | None:
        self.gets += 1
        if self.down:
            raise StoreUnavailable("down")
        return await super().get(key_id)


async def test_through_a_store_outage_known_keys_keep_working_and_new_ones_wait() -> None:
    clock = Clock(0.0)
    hasher, store = KeyHasher(SECRET), FlakyStore()
    known, unseen = hasher.issue("team-b", now=1.0), hasher.issue("team-b", now=1.0)
    await store.put(known.record)
    await store.put(unseen.record)
    auth = KeyAuthenticator(hasher, store, TENANTS, cache_s=2, clock=clock)
    await auth.authenticate(known.raw)
    store.down = True
    clock.now += 5  # the cached entry is stale: the store is asked, and is down
    assert (await auth.authenticate(known.raw)).tenant == "team-b"
    asked = store.gets
    for _ in range(10):
        await auth.authenticate(known.raw)
    assert store.gets == asked  # not asked again before cache_s
    with pytest.raises(MeshError) as caught:
        await auth.authenticate(unseen.raw)
    assert caught.value.reason is Reason.TENANCY_UNAVAILABLE
