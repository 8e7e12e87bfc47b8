"""The shared limiter with a local fallback: Redis while it answers, this router's own
limits while it does not (fail-open), or a refusal for tenants configured fail-closed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from imesh.errors import MeshError, Reason
from router.tenancy.config import TenantConfig
from router.tenancy.limits import Grant, Limiter, Reservation
from router.tenancy.store import StoreUnavailable

log = logging.getLogger(__name__)


# Settlements kept for Redis's return; beyond it the oldest is dropped (logged; the usage
# stream still holds the spend).
MAX_UNSETTLED = 100_000


class FallbackLimiter:
    """Lifecycle: build once over a shared and a local Limiter; share across requests;
    `aclose()` at shutdown (one last try at what is still unsettled).

    After a failed Redis call the shared limiter is skipped for `retry_s` (so a dead Redis
    costs one timeout per `retry_s`, not one per request), then tried again. Outages are
    logged once at their start and end, and counted (`outages`, `fallback_admissions`).

    No spend is lost to an outage: a settle Redis did not take is queued and sent again
    (in order, from one task) once Redis answers; the shared settle is idempotent, so one
    that did reach Redis counts once. Spend on local grants reaches Redis too, through
    `carry` (the shared limiter's `carried`), which makes a grant that adds it in full.
    """

    def __init__(
        self,
        shared: Limiter,
        local: Limiter,
        *,
        carry: Callable[[Grant], Grant] | None = None,
        retry_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._shared = shared
        self._local = local
        self._carry = carry
        self._retry_s = retry_s
        self._clock = clock
        self._down_until: float | None = None
        self._unsettled: deque[tuple[Grant, int, int]] = deque()
        self._draining: asyncio.Task[None] | None = None
        self.outages = 0
        self.fallback_admissions = 0
        self.dropped_settlements = 0

    @property
    def unsettled(self) -> int:
        """Settlements waiting for Redis."""
        return len(self._unsettled)

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
            if self._carry is None:
                return
            grant = self._carry(grant)
        if self._unsettled or self.shared_down:
            self._queue(grant, tokens, cost_micros)  # in order, after the ones waiting
            return
        try:
            await self._shared.settle(grant, tokens, cost_micros)
        except StoreUnavailable as exc:
            self._mark_down(exc)
            self._queue(grant, tokens, cost_micros)

    async def drained(self) -> None:
        """Returns once a drain begun so far has ended (some may still wait for Redis)."""
        while self._draining is not None:
            await asyncio.wait([self._draining])

    async def aclose(self) -> None:
        """One last try at the unsettled (Redis may be back); what is left is logged."""
        await self.drained()
        if self._unsettled:
            self._down_until = None
            await self._drain()
        if self._unsettled:
            log.error("tenancy: %d settlements never reached Redis", len(self._unsettled))

    def _queue(self, grant: Grant, tokens: int, cost_micros: int) -> None:
        if len(self._unsettled) >= MAX_UNSETTLED:
            self._unsettled.popleft()
            self.dropped_settlements += 1
            if self.dropped_settlements == 1:
                log.error("tenancy: more than %d unsettled; dropping the oldest", MAX_UNSETTLED)
        self._unsettled.append((grant, tokens, cost_micros))

    def _start_drain(self) -> None:
        if self._unsettled and self._draining is None:
            self._draining = asyncio.get_running_loop().create_task(
                self._drain(), name="tenancy-unsettled"
            )
            self._draining.add_done_callback(self._drain_ended)

    def _drain_ended(self, task: asyncio.Task[None]) -> None:
        self._draining = None
        if not task.cancelled() and task.exception() is not None:
            log.error("tenancy: sending unsettled settlements failed", exc_info=task.exception())

    async def _drain(self) -> None:
        while self._unsettled and not self.shared_down:
            grant, tokens, cost_micros = self._unsettled[0]
            try:
                await self._shared.settle(grant, tokens, cost_micros)
            except StoreUnavailable as exc:
                self._mark_down(exc)
                return
            self._unsettled.popleft()

    def _mark_down(self, exc: StoreUnavailable) -> None:
        if self._down_until is None:
            self.outages += 1
            log.warning("tenancy: Redis unreachable (%s); serving on local limits", exc)
        self._down_until = self._clock() + self._retry_s

    def _mark_up(self) -> None:
        if self._down_until is not None:
            log.warning("tenancy: Redis reachable again; shared limits resume")
            self._down_until = None
        self._start_drain()
