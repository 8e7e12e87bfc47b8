"""Helpers for the tenancy tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

from router.config import MeshConfig, parse_config
from router.tenancy.config import TenancySettings, TenantConfig, TenantLimits


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


def mesh() -> MeshConfig:
    """A one-deployment mesh (simulated provider, $1/$2 per million tokens)."""
    return parse_config(
        {
            "providers": {"sim": {"kind": "simulated"}},
            "deployments": [
                {
                    "name": "fast",
                    "provider": "sim",
                    "model": "fast-1",
                    "max_output_tokens": 100,
                    "price": {"input": 1, "output": 2},
                }
            ],
            "aliases": {"auto": {"candidates": ["fast"]}},
        }
    )


def settings(redis_url_env: str | None = None, **fields: Any) -> TenancySettings:
    """Two tenants (team-a may use only "fast"), the secrets from IMESH_TEST_* variables."""
    data: dict[str, Any] = {
        "tenants": {"team-a": {"models": ["fast"]}, "team-b": {}},
        "key_secret": "env:IMESH_TEST_KEY_SECRET",
        "admin_key": "env:IMESH_TEST_ADMIN_KEY",
        "key_cache_s": 0.2,
        **fields,
    }
    if redis_url_env is not None:
        data["redis_url"] = f"env:{redis_url_env}"
    return TenancySettings.model_validate(data)
