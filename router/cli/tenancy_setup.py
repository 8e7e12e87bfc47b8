"""Tenancy for `imesh up` / `imesh router`: built from the config's `tenancy` section,
started, and each demo tenant's fresh key printed once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.cli._common import fail

if TYPE_CHECKING:
    from router.config import MeshConfig
    from router.tenancy.tenancy import Tenancy


async def start_tenancy(config: MeshConfig) -> Tenancy | None:
    """None without a `tenancy` section (any caller admitted, nothing limited)."""
    if config.tenancy is None:
        return None
    from router.tenancy.tenancy import Tenancy

    try:
        tenancy = Tenancy.build(config.tenancy, config)
    except ValueError as exc:  # an unset secret (named, never its value), an unknown model
        fail(f"error: {exc}", 2)
    where = "Redis (shared by routers)" if tenancy.shared else "this process (no Redis)"
    print(f"tenancy: {len(config.tenancy.tenants)} tenants, keys and usage in {where}")
    for issued in await tenancy.start():
        print(f"demo key for tenant {issued.record.tenant}: {issued.raw}", flush=True)
    return tenancy
