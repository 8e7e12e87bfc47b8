"""Helpers for the tenancy tests."""

from __future__ import annotations

import datetime as dt

from router.tenancy.config import TenantConfig, TenantLimits


def noon_today() -> float:
    """Noon (UTC) of the real today: Redis expires keys on its own clock, so a test's wall
    clock must stay near the real one, and noon keeps day boundaries out of reach."""
    today = dt.datetime.now(dt.UTC).date()
    return dt.datetime.combine(today, dt.time(12), dt.UTC).timestamp()


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float | None = None) -> None:
        self.now = noon_today() if now is None else now

    def __call__(self) -> float:
        return self.now


def tenant(**limits: int) -> TenantConfig:
    return TenantConfig(limits=TenantLimits(**limits))
