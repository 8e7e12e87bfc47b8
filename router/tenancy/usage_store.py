"""Reading a tenant's rolled-up usage (Redis, written by the aggregator), and the in-process
ledger that both records and answers when there is no Redis."""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis

from router.tenancy.redis_util import unreachable_as_store_error
from router.tenancy.usage_event import UsageEvent

MAX_DAYS = 366
_COUNTERS = (
    "attempts",
    "failed_attempts",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_micros",
    "latency_ms",
)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One tenant's use of one model on one UTC day. `latency_ms` is the sum over attempts."""

    day: str
    model: str
    attempts: int = 0
    failed_attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_micros: int = 0
    latency_ms: int = 0


class UsageReader(Protocol):
    """A tenant's usage between two UTC days (inclusive), by day then model.

    Lifecycle: build once, share. Raises StoreUnavailable when the store is unreachable."""

    async def usage(self, tenant: str, first: dt.date, last: dt.date) -> list[UsageRow]: ...


def days(first: dt.date, last: dt.date) -> list[str]:
    if last < first:
        return []
    count = min((last - first).days + 1, MAX_DAYS)
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(count)]


def _rows(day: str, counters: dict[str, dict[str, int]]) -> list[UsageRow]:
    return [UsageRow(day, model, **values) for model, values in sorted(counters.items())]


class RedisUsageReader:
    """Lifecycle: given a client it does not own."""

    def __init__(self, client: aioredis.Redis, *, namespace: str) -> None:
        self._redis = client
        self._namespace = namespace

    async def usage(self, tenant: str, first: dt.date, last: dt.date) -> list[UsageRow]:
        wanted = days(first, last)
        with unreachable_as_store_error():
            async with self._redis.pipeline(transaction=False) as pipe:
                for day in wanted:
                    pipe.hgetall(f"{self._namespace}day:{tenant}:{day}")
                replies = await pipe.execute()
        rows: list[UsageRow] = []
        for day, flat in zip(wanted, replies, strict=True):
            counters: defaultdict[str, dict[str, int]] = defaultdict(dict)
            for field_name, value in flat.items():
                model, _, counter = field_name.decode().rpartition("|")
                if counter in _COUNTERS:
                    counters[model][counter] = int(value)
            rows += _rows(day, counters)
        return rows


class MemoryUsage:
    """UsageSink and UsageReader in one, for a router without Redis: rolls events up as
    they are emitted (duplicates by idempotency key dropped). Lost at exit."""

    SEEN = 100_000  # idempotency keys remembered

    def __init__(self) -> None:
        self._days: defaultdict[tuple[str, str], defaultdict[str, dict[str, int]]] = defaultdict(
            lambda: defaultdict(lambda: dict.fromkeys(_COUNTERS, 0))
        )
        self._seen: OrderedDict[str, None] = OrderedDict()

    def emit(self, event: UsageEvent) -> None:
        if event.idempotency_key in self._seen:
            return
        self._seen[event.idempotency_key] = None
        if len(self._seen) > self.SEEN:
            self._seen.popitem(last=False)
        c = self._days[event.tenant, event.day][event.model]
        c["attempts"] += 1
        c["failed_attempts"] += int(event.failed)
        c["prompt_tokens"] += event.prompt_tokens
        c["completion_tokens"] += event.completion_tokens
        c["cached_tokens"] += event.cached_tokens
        c["cost_micros"] += event.cost_micros
        c["latency_ms"] += event.latency_ms

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def usage(self, tenant: str, first: dt.date, last: dt.date) -> list[UsageRow]:
        rows: list[UsageRow] = []
        for day in days(first, last):
            found = self._days.get((tenant, day))
            if found:
                rows += _rows(day, found)
        return rows
