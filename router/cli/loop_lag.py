"""How late the event loop runs what is due: a task asks to wake every INTERVAL_S and
records how late it woke, rendered as a histogram when Prometheus scrapes.

A late wake-up is time the loop spent on one thing without yielding (a parse, an encode)
or time the process did not get a CPU; either way every call on that loop waited as long.
A stall of S seconds shows as a wake-up at least S - INTERVAL_S late. One wake-up per
10 ms costs the loop a few microseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from gateway.loop_histogram import LoopHistogram

INTERVAL_S = 0.01
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class LoopLag(Collector):
    """Lifecycle: built once per process on its registry; `start()` inside the running
    loop it watches, `aclose()` before that loop ends."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._lag = LoopHistogram(BUCKETS)
        self._task: asyncio.Task[None] | None = None
        registry.register(self)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="loop-lag")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + INTERVAL_S
            await asyncio.sleep(INTERVAL_S)
            # A timer may fire up to the clock's resolution early: that is no lag.
            self._lag.observe(max(0.0, loop.time() - due))

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "imesh_event_loop_lag_seconds",
            f"How late the event loop woke a task due every {INTERVAL_S * 1000:g} ms: "
            "time every call on the loop waited.",
        )
        family.add_metric((), self._lag.cumulative(), self._lag.total)
        yield family
