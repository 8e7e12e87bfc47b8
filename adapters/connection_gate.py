"""ConnectionGate: the mesh's own queue in front of one provider's connection pool.

At most `limit` calls hold a connection at once. The rest wait, up to the pool timeout,
in this queue (never inside the HTTP client's pool, whose wait could not be told from an
upstream timeout); a call that waits too long fails OVERLOADED with a time to come back.
That says the mesh is full, never that the provider is down: no breaker verdict.
"""

from __future__ import annotations

import asyncio

from adapters.deadline import Deadline
from adapters.http_errors import overloaded

# When an overloaded caller may try again: a pooled call usually ends within this.
RETRY_AFTER_S = 1.0


class ConnectionGate:
    """Lifecycle: one per backend; `await acquire(deadline)` before a call opens its
    request, `release()` exactly once after its response is closed."""

    def __init__(self, *, provider: str, limit: int, wait_s: float) -> None:
        self._provider = provider
        self._slots = asyncio.Semaphore(limit)
        self._wait_s = wait_s
        self.in_flight = 0
        self.waiting = 0

    async def acquire(self, deadline: Deadline) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # a free slot: taken without suspending
            self.in_flight += 1
            return
        wait = min(self._wait_s, deadline.remaining())
        self.waiting += 1
        try:
            async with asyncio.timeout(wait):
                await self._slots.acquire()
        except TimeoutError:
            raise overloaded(self._provider, wait, RETRY_AFTER_S) from None
        finally:
            self.waiting -= 1
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._slots.release()
