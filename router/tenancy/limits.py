"""Limits that hold across routers: the Limiter seam and its Redis implementation
(sliding-window RPM/TPM, token reservations, day/month quotas and budgets in integer
micro-dollars), one Lua round trip per admission."""

from __future__ import annotations

import datetime as dt
import functools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as aioredis

from imesh.errors import MeshError, Reason
from imesh.v1 import events_pb2
from router.tenancy.config import TenantLimits
from router.tenancy.redis_util import lua, unreachable_as_store_error


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one request may spend at most: its prompt estimate plus max_tokens, priced at
    the dearest deployment it could land on."""

    tenant: str
    tokens: int
    cost_micros: int


@dataclass(frozen=True, slots=True)
class RateFigures:
    """Where the tenant stands after (or instead of) this admission: OpenAI's
    `x-ratelimit-*` figures. None: no such limit."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float = 0.0
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float = 0.0

    def as_headers(self) -> dict[str, str]:
        """The `x-ratelimit-*` headers as OpenAI names them (only the limits that apply)."""
        out: dict[str, str] = {}
        if self.limit_requests is not None:
            out["x-ratelimit-limit-requests"] = str(self.limit_requests)
            out["x-ratelimit-remaining-requests"] = str(self.remaining_requests or 0)
            out["x-ratelimit-reset-requests"] = f"{self.reset_requests_s:.3f}s"
        if self.limit_tokens is not None:
            out["x-ratelimit-limit-tokens"] = str(self.limit_tokens)
            out["x-ratelimit-remaining-tokens"] = str(self.remaining_tokens or 0)
            out["x-ratelimit-reset-tokens"] = f"{self.reset_tokens_s:.3f}s"
        return out

    def to_proto(self) -> events_pb2.RateLimitStatus:
        """The same figures as they travel in StreamStart (a limit of 0: none)."""
        return events_pb2.RateLimitStatus(
            limit_requests=self.limit_requests or 0,
            remaining_requests=self.remaining_requests or 0,
            reset_requests_seconds=self.reset_requests_s,
            limit_tokens=self.limit_tokens or 0,
            remaining_tokens=self.remaining_tokens or 0,
            reset_tokens_seconds=self.reset_tokens_s,
        )


@dataclass(frozen=True, slots=True)
class Grant:
    """An admitted reservation, to be settled exactly once."""

    id: str
    reservation: Reservation
    figures: RateFigures
    # Where it was made (settled there): the shared Redis limiter or this router's own.
    local: bool = False
    keys: tuple[str, ...] = field(default=(), repr=False)


class Limiter(Protocol):
    """Admission against a tenant's limits.

    Lifecycle: build once, share; `reserve` before the call, then `settle` exactly once
    with the real spend (zero when the call never reached a provider). A grant never
    settled (a crashed router) is released after the reservation TTL.
    `reserve` raises MeshError RATE_LIMITED / QUOTA_EXCEEDED / BUDGET_EXCEEDED with a
    retry time and the figures as metadata; both raise StoreUnavailable when the shared
    store cannot be reached.
    """

    async def reserve(self, limits: TenantLimits, reservation: Reservation) -> Grant: ...

    async def settle(self, grant: Grant, tokens: int, cost_micros: int) -> None: ...


_REFUSALS: dict[int, tuple[Reason, str]] = {
    1: (Reason.RATE_LIMITED, "requests per minute"),
    2: (Reason.RATE_LIMITED, "tokens per minute"),
    3: (Reason.QUOTA_EXCEEDED, "tokens per day"),
    4: (Reason.QUOTA_EXCEEDED, "tokens per month"),
    5: (Reason.BUDGET_EXCEEDED, "budget per day"),
    6: (Reason.BUDGET_EXCEEDED, "budget per month"),
}


def refusal(verdict: int, tenant: str, retry_s: float, figures: RateFigures) -> MeshError:
    reason, what = _REFUSALS[verdict]
    return MeshError.of(
        reason,
        f"tenant {tenant!r} is over its {what} limit; retry in {retry_s:.3f}s",
        retry_after=retry_s,
        metadata={"limit": what, **figures.as_headers()},
    )


def period_ends(now: float) -> tuple[str, str, int, int]:
    """UTC day and month of `now` (wall seconds) and when each ends (ms)."""
    return _periods(int(now // 86400))  # Unix time has 86400 s in every UTC day


@functools.lru_cache(maxsize=4)
def _periods(day_number: int) -> tuple[str, str, int, int]:
    day = dt.date(1970, 1, 1) + dt.timedelta(days=day_number)
    day_end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)
    next_month = (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    month_end = dt.datetime.combine(next_month, dt.time(), dt.UTC)
    return (
        day.strftime("%Y%m%d"),
        day.strftime("%Y%m"),
        int(day_end.timestamp() * 1000),
        int(month_end.timestamp() * 1000),
    )


def _limit(value: int | None) -> int:
    return -1 if value is None else value


def _figures(limits: TenantLimits, row: list[int]) -> RateFigures:
    return RateFigures(
        limits.requests_per_minute,
        None if limits.requests_per_minute is None else int(row[2]),
        int(row[3]) / 1000,
        limits.tokens_per_minute,
        None if limits.tokens_per_minute is None else int(row[4]),
        int(row[5]) / 1000,
    )


class RedisLimiter:
    """Limits shared by every router through one Redis.

    Lifecycle: given a client it does not own. Every key of a tenant carries the tenant's
    hash tag (`imesh:{tenant}:...`), so a tenant's admission touches one slot.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        reservation_ttl_s: float,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._ttl_ms = int(reservation_ttl_s * 1000)
        self._wall = wall_clock
        self._reserve = client.register_script(lua("reserve.lua"))
        self._settle = client.register_script(lua("settle.lua"))

    async def reserve(self, limits: TenantLimits, reservation: Reservation) -> Grant:
        now = self._wall()
        day, month, day_end, month_end = period_ends(now)
        keys = _tenant_keys(reservation.tenant, day, month)
        grant_id = uuid.uuid4().hex
        args: list[str | int] = [
            int(now * 1000),
            grant_id,
            reservation.tokens,
            reservation.cost_micros,
            _limit(limits.requests_per_minute),
            _limit(limits.tokens_per_minute),
            _limit(limits.tokens_per_day),
            _limit(limits.tokens_per_month),
            _limit(limits.budget_per_day_micros),
            _limit(limits.budget_per_month_micros),
            self._ttl_ms,
            day_end,
            month_end,
        ]
        with unreachable_as_store_error():
            row = await self._reserve(keys=keys, args=args)
        verdict = int(row[0])
        figures = _figures(limits, row)
        if verdict:
            raise refusal(verdict, reservation.tenant, int(row[1]) / 1000, figures)
        return Grant(grant_id, reservation, figures, local=False, keys=tuple(keys))

    async def settle(self, grant: Grant, tokens: int, cost_micros: int) -> None:
        """Idempotent per grant (for the reservation TTL): safe to send again after a
        failure that may have reached Redis."""
        _, tpm, day, month, resv, expiries = grant.keys
        with unreachable_as_store_error():
            await self._settle(
                keys=[tpm, day, month, resv, expiries, f"{resv}:settled:{grant.id}"],
                args=[int(self._wall() * 1000), grant.id, tokens, cost_micros, self._ttl_ms],
            )

    def carried(self, grant: Grant) -> Grant:
        """A grant nothing is reserved for in Redis, standing for `grant` (made on a
        router's local limits during an outage): settling it adds the spend in full to
        the tenant's shared counters of today."""
        day, month, _, _ = period_ends(self._wall())
        keys = tuple(_tenant_keys(grant.reservation.tenant, day, month))
        return Grant(uuid.uuid4().hex, grant.reservation, grant.figures, local=False, keys=keys)


def _tenant_keys(tenant: str, day: str, month: str) -> list[str]:
    t = f"imesh:{{{tenant}}}"
    return [
        f"{t}:rpm",
        f"{t}:tpm",
        f"{t}:day:{day}",
        f"{t}:month:{month}",
        f"{t}:resv",
        f"{t}:resv-exp",
    ]
