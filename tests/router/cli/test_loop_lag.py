"""The loop-lag watch: a loop blocked for 150 ms shows as a wake-up that late; the watch
stops with its loop's owner; the metrics port serves the family."""

from __future__ import annotations

import asyncio
import time

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from router.cli.loop_lag import INTERVAL_S, LoopLag
from router.cli.telemetry import Telemetry

STALL_S = 0.15


def late_wakeups(registry: CollectorRegistry, over: str) -> float:
    """Wake-ups later than `over` seconds (a bucket bound)."""
    name = "imesh_event_loop_lag_seconds"
    total = registry.get_sample_value(f"{name}_count") or 0.0
    within = registry.get_sample_value(f"{name}_bucket", {"le": over}) or 0.0
    return total - within


async def test_a_blocked_loop_shows_as_a_late_wakeup() -> None:
    registry = CollectorRegistry()
    lag = LoopLag(registry)
    lag.start()
    try:
        await asyncio.sleep(3 * INTERVAL_S)
        time.sleep(STALL_S)  # noqa: ASYNC251 - the stall under test
        await asyncio.sleep(3 * INTERVAL_S)
    finally:
        await lag.aclose()
    assert late_wakeups(registry, "0.1") >= 1
    counted = registry.get_sample_value("imesh_event_loop_lag_seconds_count")
    assert counted is not None
    assert counted >= 2
    assert [t for t in asyncio.all_tasks() if t.get_name() == "loop-lag"] == []


async def test_the_metrics_port_serves_the_loop_lag() -> None:
    telemetry = Telemetry(registry=CollectorRegistry(), tracing=False)
    port = await telemetry.serve_metrics("127.0.0.1:0")
    try:
        await asyncio.sleep(3 * INTERVAL_S)
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        await telemetry.close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    [count] = [
        s for s in families["imesh_event_loop_lag_seconds"].samples if s.name.endswith("_count")
    ]
    assert count.value >= 1
