"""KeyStore in process: for one router without Redis (lost at exit, not shared)."""

from __future__ import annotations

from router.tenancy.keys import KeyRecord


class MemoryKeyStore:
    """Lifecycle: build once; nothing to close."""

    def __init__(self) -> None:
        self._records: dict[str, KeyRecord] = {}

    async def get(self, key_id: str) -> KeyRecord | None:
        return self._records.get(key_id)

    async def put(self, record: KeyRecord) -> None:
        self._records[record.key_id] = record

    async def list(self, *, tenant: str | None = None, prefix: str = "") -> list[KeyRecord]:
        found = [
            r
            for r in self._records.values()
            if (tenant is None or r.tenant == tenant) and r.prefix.startswith(prefix)
        ]
        return sorted(found, key=lambda r: (r.created_at, r.key_id))

    async def aclose(self) -> None:
        return None
