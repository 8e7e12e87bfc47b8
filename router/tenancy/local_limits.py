"""Limits kept in this process: the whole story without Redis, and the fail-open fallback
while Redis is unreachable (each router then enforces the limits on its own traffic)."""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from router.tenancy.config import TenantLimits
from router.tenancy.limits import Grant, RateFigures, Reservation, period_ends, refusal

WINDOW_S = 60


@dataclass
class _Window:
    """One-second buckets over the last minute (the same shape as the Redis script's)."""

    buckets: dict[int, int] = field(default_factory=dict)

    def total(self, second: int) -> int:
        for s in [s for s in self.buckets if s <= second - WINDOW_S]:
            del self.buckets[s]
        return sum(self.buckets.values())

    def wait_s(self, now: float, need: int, limit: int) -> float:
        total = sum(self.buckets.values())
        freed = 0
        for s in sorted(self.buckets):
            freed += self.buckets[s]
            if total - freed + need <= limit:
                return max(s + WINDOW_S - now, 0.001)
        return float(WINDOW_S)

    def reset_s(self, now: float) -> float:
        return max(min(self.buckets) + WINDOW_S - now, 0.0) if self.buckets else WINDOW_S

    def add(self, second: int, amount: int) -> None:
        left = self.buckets.get(second, 0) + amount
        if left > 0:
            self.buckets[second] = left
        else:
            self.buckets.pop(second, None)


@dataclass
class _TenantState:
    requests: _Window = field(default_factory=_Window)
    tokens: _Window = field(default_factory=_Window)
    # (period, "tokens" | "cost") -> amount, e.g. ("day:20261127", "tokens")
    periods: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    day: str = ""


class LocalLimiter:
    """Lifecycle: build once per router; nothing to close. Single-threaded (the event loop),
    so no locking. Grants here are settled here (`Grant.local`)."""

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self._wall = wall_clock
        self._tenants: defaultdict[str, _TenantState] = defaultdict(_TenantState)
        # grant id -> (tenant, second, day, month)
        self._held: dict[str, tuple[str, int, str, str]] = {}
        self._ids = itertools.count()

    async def reserve(self, limits: TenantLimits, reservation: Reservation) -> Grant:
        now = self._wall()
        second = int(now)
        day, month, day_end, month_end = period_ends(now)
        state = self._tenants[reservation.tenant]
        requests = state.requests.total(second)
        spent = state.tokens.total(second)
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        figures = RateFigures(
            rpm,
            None if rpm is None else max(rpm - requests, 0),
            state.requests.reset_s(now),
            tpm,
            None if tpm is None else max(tpm - spent, 0),
            state.tokens.reset_s(now),
        )
        tokens, cost = reservation.tokens, reservation.cost_micros
        p = state.periods
        if state.day != day:  # a new UTC day (or month): forget the periods that ended
            state.day = day
            for stale in [k for k in p if k[0] not in (f"day:{day}", f"month:{month}")]:
                del p[stale]
        verdict = 0
        if _over(requests + 1, rpm):
            verdict, retry_s = 1, state.requests.wait_s(now, 1, rpm or 0)
        elif _over(spent + tokens, tpm):
            verdict, retry_s = 2, state.tokens.wait_s(now, tokens, tpm or 0)
        elif _over(p[f"day:{day}", "tokens"] + tokens, limits.tokens_per_day):
            verdict, retry_s = 3, day_end / 1000 - now
        elif _over(p[f"month:{month}", "tokens"] + tokens, limits.tokens_per_month):
            verdict, retry_s = 4, month_end / 1000 - now
        elif _over(p[f"day:{day}", "cost"] + cost, limits.budget_per_day_micros):
            verdict, retry_s = 5, day_end / 1000 - now
        elif _over(p[f"month:{month}", "cost"] + cost, limits.budget_per_month_micros):
            verdict, retry_s = 6, month_end / 1000 - now
        if verdict:
            raise refusal(verdict, reservation.tenant, retry_s, figures)
        state.requests.add(second, 1)
        state.tokens.add(second, tokens)
        for period in (f"day:{day}", f"month:{month}"):
            p[period, "tokens"] += tokens
            p[period, "cost"] += cost
        grant_id = f"local-{next(self._ids)}"
        self._held[grant_id] = (reservation.tenant, second, day, month)
        return Grant(
            grant_id,
            reservation,
            RateFigures(
                rpm,
                None if rpm is None else max(rpm - requests - 1, 0),
                figures.reset_requests_s,
                tpm,
                None if tpm is None else max(tpm - spent - tokens, 0),
                figures.reset_tokens_s,
            ),
            local=True,
        )

    async def settle(self, grant: Grant, tokens: int, cost_micros: int) -> None:
        held = self._held.pop(grant.id, None)
        if held is None:
            return
        tenant, second, day, month = held
        state = self._tenants[tenant]
        dt = tokens - grant.reservation.tokens
        dc = cost_micros - grant.reservation.cost_micros
        for period in (f"day:{day}", f"month:{month}"):
            state.periods[period, "tokens"] += dt
            state.periods[period, "cost"] += dc
        if second > int(self._wall()) - WINDOW_S:
            state.tokens.add(second, dt)


def _over(amount: int, limit: int | None) -> bool:
    return limit is not None and amount > limit
