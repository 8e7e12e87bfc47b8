"""Key administration: create, list by prefix, revoke and rotate, over the KeyStore."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from imesh.errors import MeshError, Reason
from router.tenancy.keys import IssuedKey, KeyHasher, KeyRecord
from router.tenancy.store import KeyStore


class KeyAdmin:
    """Lifecycle: build once per router over the shared store; the admin RPC and the demo
    key use it. A revoke or rotation on one router reaches the others through the store
    (each within its key cache time); `on_change` drops this router's own cached copy."""

    def __init__(
        self,
        hasher: KeyHasher,
        store: KeyStore,
        tenants: Collection[str],
        *,
        on_change: Callable[[str], None] = lambda key_id: None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._hasher = hasher
        self._store = store
        self._tenants = frozenset(tenants)
        self._on_change = on_change
        self._wall = wall_clock

    async def create(self, tenant: str, label: str = "") -> IssuedKey:
        if tenant not in self._tenants:
            known = ", ".join(sorted(self._tenants))
            raise MeshError.of(
                Reason.INVALID_REQUEST, f"unknown tenant {tenant!r} (configured: {known})"
            )
        issued = self._hasher.issue(tenant, self._wall(), label)
        await self._store.put(issued.record)
        return issued

    async def list(self, *, tenant: str | None = None, prefix: str = "") -> list[KeyRecord]:
        return await self._store.list(tenant=tenant, prefix=prefix)

    async def revoke(self, key_id: str, *, grace_s: float = 0.0) -> KeyRecord:
        record = await self._existing(key_id)
        revoked = record.revoked(at=self._wall() + grace_s)
        await self._store.put(revoked)
        self._on_change(key_id)
        return revoked

    async def rotate(self, key_id: str, *, grace_s: float = 0.0) -> tuple[IssuedKey, KeyRecord]:
        """A new key for the same tenant (same label); the old one stops after `grace_s`."""
        record = await self._existing(key_id)
        issued = await self.create(record.tenant, record.label)
        return issued, await self.revoke(key_id, grace_s=grace_s)

    async def _existing(self, key_id: str) -> KeyRecord:
        record = await self._store.get(key_id.removeprefix("imk_"))
        if record is None:
            raise MeshError.of(Reason.INVALID_REQUEST, f"no key with id {key_id!r}")
        return record
