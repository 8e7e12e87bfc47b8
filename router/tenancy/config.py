"""Typed tenancy config: tenants with their models, limits and priority; Redis; usage."""

from __future__ import annotations

import functools
import re
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapters.config import SecretRef

MICROS_PER_USD = 1_000_000
# Tenant names appear in Redis keys and hash tags.
TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

OutageMode = Literal["fail_open", "fail_closed"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TenantLimits(Strict):
    """Every limit is optional; an absent one does not apply. Budgets are USD in the file,
    integer micro-dollars in memory."""

    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    tokens_per_day: int | None = Field(None, ge=1)
    tokens_per_month: int | None = Field(None, ge=1)
    budget_per_day: Decimal | None = Field(None, ge=0)
    budget_per_month: Decimal | None = Field(None, ge=0)

    @functools.cached_property
    def budget_per_day_micros(self) -> int | None:
        return None if self.budget_per_day is None else int(self.budget_per_day * MICROS_PER_USD)

    @functools.cached_property
    def budget_per_month_micros(self) -> int | None:
        if self.budget_per_month is None:
            return None
        return int(self.budget_per_month * MICROS_PER_USD)


class TenantConfig(Strict):
    """One team sharing the mesh."""

    # Models and aliases the tenant may call; "*" allows every one.
    models: frozenset[str] = frozenset({"*"})
    limits: TenantLimits = TenantLimits()
    # Under overload the lowest priority is shed first (0 lowest).
    priority: int = Field(1, ge=0, le=9)
    # While Redis is unreachable: serve on this router's own limits, or refuse.
    on_redis_outage: OutageMode = "fail_open"
    # Issue a fresh key for this tenant at start and print it (in-process store only).
    demo_key: bool = False

    def allows(self, model: str) -> bool:
        return "*" in self.models or model in self.models


class UsageSettings(Strict):
    @property
    def stream(self) -> str:
        return self.namespace + "events"

    # Prefix of every usage key: the stream (`<namespace>events`), the rollups, the
    # idempotency keys. Its hash tag keeps them in one slot (the rollup script needs it).
    namespace: str = Field("imesh:{usage}:", pattern=r"^[^{}]*\{[^{}]+\}[^{}]*$")
    # Events held in memory while Redis is unreachable; beyond it they spill to disk.
    buffer_events: int = Field(10_000, ge=1)
    # Directory for spilled events: give it a volume that outlives the pod (deploy/base
    # mounts one). None: a directory under the system's temp dir (lost with the machine).
    spill_dir: str | None = None
    flush_interval_s: float = Field(0.05, gt=0)
    # How long a processed event's idempotency key is remembered by the aggregator.
    dedupe_ttl_s: int = Field(8 * 86400, ge=60)
    # Run the aggregator (consumer group) in this router process.
    aggregate: bool = True


class OverloadSettings(Strict):
    """Priority shedding: above `shed_in_flight` requests in this router, tenants below
    `protected_priority` are refused (OVERLOADED) so the others keep their capacity."""

    shed_in_flight: int | None = Field(None, ge=1)
    protected_priority: int = Field(5, ge=0, le=9)


class TenancySettings(Strict):
    """Absent from the config: no tenancy (any caller is admitted, nothing is limited)."""

    tenants: dict[str, TenantConfig] = Field(min_length=1)
    # Keys, limits and usage are shared through Redis when set; in process otherwise.
    redis_url: SecretRef | None = None
    # HMAC secret for key digests. Required with Redis (every router must agree); without
    # it, the in-process store uses a random secret per process.
    key_secret: SecretRef | None = None
    # Guards the AdminService (key create/list/revoke/rotate); absent: no admin RPC.
    admin_key: SecretRef | None = None
    # How long a router trusts a key it looked up: a revoke is seen within this time.
    key_cache_s: float = Field(2.0, gt=0, le=60)
    # A reservation not settled within this time (a crashed router) is released.
    reservation_ttl_s: float = Field(900, gt=0)
    # How long a Redis command may take before the router falls back to local limits.
    redis_timeout_s: float = Field(0.25, gt=0)
    usage: UsageSettings = UsageSettings()
    overload: OverloadSettings = OverloadSettings()

    @model_validator(mode="after")
    def _consistent(self) -> TenancySettings:
        for name in self.tenants:
            if not TENANT_NAME.match(name):
                raise ValueError(f"tenants.{name}: names are letters, digits, '_', '.', '-'")
        if self.redis_url is not None and self.key_secret is None:
            raise ValueError("key_secret is required with redis_url (every router must agree)")
        if self.redis_url is not None and any(t.demo_key for t in self.tenants.values()):
            raise ValueError("demo_key is for the in-process store only (keys are shared in Redis)")
        return self
