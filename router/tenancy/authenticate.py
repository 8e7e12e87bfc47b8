"""Authentication: a caller's raw key to the tenant it belongs to, through a short-TTL cache
in front of the KeyStore (a revoke reaches every router within `cache_s`)."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from imesh.errors import MeshError, Reason
from router.tenancy.config import TenantConfig
from router.tenancy.keys import KeyHasher, KeyRecord, key_id_of
from router.tenancy.store import KeyStore, StoreUnavailable

log = logging.getLogger(__name__)

# Distinct key ids remembered (known or unknown); the oldest are forgotten first.
CACHE_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant and which of its keys."""

    tenant: str
    key_id: str
    config: TenantConfig


class KeyAuthenticator:
    """Lifecycle: build once per router over a store; share across requests.

    A lookup is cached for `cache_s` (unknown key ids too, so a flood of bad keys does not
    reach Redis). While the store is unreachable, a key seen before keeps its last known
    state; a key never seen is refused with TENANCY_UNAVAILABLE (503), never admitted.
    """

    def __init__(
        self,
        hasher: KeyHasher,
        store: KeyStore,
        tenants: Mapping[str, TenantConfig],
        *,
        cache_s: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._hasher = hasher
        self._store = store
        self._tenants = dict(tenants)
        self._cache_s = cache_s
        self._clock = clock
        self._wall = wall_clock
        self._cache: OrderedDict[str, tuple[KeyRecord | None, float]] = OrderedDict()

    async def authenticate(self, api_key: str | None) -> Principal:
        if not api_key:
            raise MeshError.of(
                Reason.MISSING_API_KEY,
                "an API key is required: 'authorization: Bearer KEY' or 'x-api-key'",
            )
        key_id = key_id_of(api_key)
        record = await self._record(key_id) if key_id is not None else None
        # Key ids are not secret; the key's secret part is only ever compared in constant time.
        if (
            record is None
            or not self._hasher.matches(api_key, record)
            or not record.valid_at(self._wall())
        ):
            raise MeshError.of(Reason.INVALID_API_KEY, "invalid or revoked API key")
        tenant = self._tenants.get(record.tenant)
        if tenant is None:  # the tenant was removed from the config: its keys go with it
            raise MeshError.of(Reason.INVALID_API_KEY, "invalid or revoked API key")
        return Principal(record.tenant, record.key_id, tenant)

    def invalidate(self, key_id: str) -> None:
        """Forget a cached lookup (this router revoked or rotated the key itself)."""
        self._cache.pop(key_id, None)

    async def _record(self, key_id: str) -> KeyRecord | None:
        now = self._clock()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[1] < self._cache_s:
            return cached[0]
        try:
            record = await self._store.get(key_id)
        except StoreUnavailable:
            if cached is not None:
                # Last known state: keys keep working through an outage, and the store is
                # asked again only after another `cache_s` (not on every request).
                self._cache[key_id] = (cached[0], now)
                return cached[0]
            raise MeshError.of(
                Reason.TENANCY_UNAVAILABLE, "keys cannot be checked right now", retry_after=1.0
            ) from None
        self._cache[key_id] = (record, now)
        self._cache.move_to_end(key_id)
        if len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return record


def require_model(name: str, tenant: TenantConfig, model: str) -> None:
    """PERMISSION_DENIED unless the tenant may call `model` (a model or alias name)."""
    if not tenant.allows(model):
        raise MeshError.of(Reason.PERMISSION_DENIED, f"tenant {name!r} may not use model {model!r}")
