"""A second process for the cross-process limit tests: reserves against a shared Redis
and prints how many reservations it was granted.

usage: python -m tests.router.tenancy.limiter_worker REDIS_URL TENANT ATTEMPTS RPM TPM TOKENS
"""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as aioredis

from imesh.errors import MeshError
from router.tenancy.config import TenantLimits
from router.tenancy.limits import RedisLimiter, Reservation


async def main(url: str, tenant: str, attempts: int, rpm: int, tpm: int, tokens: int) -> int:
    client = aioredis.Redis.from_url(url)
    limiter = RedisLimiter(client, reservation_ttl_s=60)
    limits = TenantLimits(requests_per_minute=rpm, tokens_per_minute=tpm)
    granted = 0
    try:
        for _ in range(attempts):
            try:
                await limiter.reserve(limits, Reservation(tenant, tokens, 0))
            except MeshError:
                continue
            granted += 1
    finally:
        await client.aclose()
    return granted


if __name__ == "__main__":
    url, tenant, *numbers = sys.argv[1:]
    attempts, rpm, tpm, tokens = (int(n) for n in numbers)
    print(asyncio.run(main(url, tenant, attempts, rpm, tpm, tokens)))
