"""The shared limiter with a local fallback: Redis while it answers, this router's own
limits while it does not (fail-open), or a refusal for tenants configured fail-closed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from imesh.errors import MeshError, Reason
from router.tenancy.config import TenantConfig
from router.tenancy.limits import Grant, Limiter, Reservation
from router.tenancy.store import StoreUnavailable

log = logging.getLogger(__name__)


class FallbackLimiter:
    """Lifecycle: build once over a shared and a local Limiter; share across requests.

    After a failed Redis call the shared limiter is skipped for `retry_s` (so a dead Redis
    costs one timeout per `retry_s`, not one per request), then tried again. Outages are
    logged once at their start and end, and counted (`outages`, `fallback_admissions`).
    """

    def __init__(
        self,
        shared: Limiter,
        local: Limiter,
        *,
        retry_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._shared = shared
        self._local = local
        self._retry_s = retry_s
        self._clock = clock
        self._down_until: float | None = None
        self.outages = 0
        self.fallback_admissions = 0

    @property
    def shared_down(self) -> bool:
        return self._down_until is not None

    async def reserve(self, tenant: TenantConfig, reservation: Reservation) -> Grant:
        if self._down_until is None or self._clock() >= self._down_until:
            try:
                grant = await self._shared.reserve(tenant.limits, reservation)
            except StoreUnavailable as exc:
                self._mark_down(exc)
            else:
                self._mark_up()
                return grant
        if tenant.on_redis_outage == "fail_closed":
            raise MeshError.of(
                Reason.TENANCY_UNAVAILABLE,
                "limits cannot be checked right now (shared store unreachable)",
                retry_after=self._retry_s,
            )
        self.fallback_admissions += 1
        return await self._local.reserve(tenant.limits, reservation)

    async def settle(self, grant: Grant, tokens: int, cost_micros: int) -> None:
        if grant.local:
            await self._local.settle(grant, tokens, cost_micros)
            return
        try:
            await self._shared.settle(grant, tokens, cost_micros)
        except StoreUnavailable as exc:
            # The reservation expires on its own (reservation TTL); the usage event, which
            # is buffered through the outage, keeps the record exact.
            self._mark_down(exc)

    def _mark_down(self, exc: StoreUnavailable) -> None:
        if self._down_until is None:
            self.outages += 1
            log.warning("tenancy: Redis unreachable (%s); serving on local limits", exc)
        self._down_until = self._clock() + self._retry_s

    def _mark_up(self) -> None:
        if self._down_until is not None:
            log.warning("tenancy: Redis reachable again; shared limits resume")
            self._down_until = None
