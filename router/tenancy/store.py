"""The KeyStore seam: where key records live (in process, or Redis shared by routers)."""

from __future__ import annotations

from typing import Protocol

from router.tenancy.keys import KeyRecord


class StoreUnavailable(Exception):
    """The shared store (Redis) cannot be reached; callers fall back or refuse."""


class KeyStore(Protocol):
    """Key records by key id.

    Lifecycle: build once, share across requests, `aclose()` at shutdown. Every method
    raises StoreUnavailable when the backing store cannot be reached; none of them ever
    sees a raw key.
    """

    async def get(self, key_id: str) -> KeyRecord | None: ...

    async def put(self, record: KeyRecord) -> None:
        """Create or replace the record of `record.key_id`."""
        ...

    async def list(self, *, tenant: str | None = None, prefix: str = "") -> list[KeyRecord]:
        """Records whose prefix (`imk_<key id>`) starts with `prefix`, oldest first."""
        ...

    async def aclose(self) -> None: ...
