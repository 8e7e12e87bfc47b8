"""Telemetry switches from the environment, and the metrics port on the event loop."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from router.cli.telemetry import Telemetry, TelemetrySwitches, start_telemetry


@pytest.mark.parametrize(
    ("env", "metrics", "exporters"),
    [
        ({}, True, ()),
        ({"IMESH_METRICS": "0"}, False, ()),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, True, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, True, ()),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, True, ("otlp", "console")),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, True, ()),
    ],
)
def test_switches_follow_the_standard_variables(
    env: dict[str, str], metrics: bool, exporters: tuple[str, ...]
) -> None:
    switches = TelemetrySwitches.from_env(env)
    assert (switches.metrics, switches.exporters) == (metrics, exporters)
    assert switches.tracing is bool(exporters)


@pytest.mark.parametrize(
    ("env", "named"),
    [({"IMESH_METRICS": "yes"}, "IMESH_METRICS"), ({"OTEL_TRACES_EXPORTER": "zipkin"}, "zipkin")],
)
def test_a_value_not_understood_is_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        TelemetrySwitches.from_env(env)


async def test_the_metrics_port_serves_the_registry_and_nothing_else() -> None:
    # Built directly: start_telemetry would instrument every gRPC server of the test run.
    telemetry = Telemetry(registry=CollectorRegistry(), tracing=False)
    Counter("imesh_probe", "A probe.", registry=telemetry.registry).inc()
    port = await telemetry.serve_metrics("127.0.0.1:0")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            reply = await http.get("/metrics")
            missing = await http.get("/other")
    finally:
        await telemetry.close()
    assert reply.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    assert families["imesh_probe"].samples[0].value == 1.0
    assert missing.status_code == 404


async def test_a_half_sent_request_leaves_the_port_serving() -> None:
    telemetry = Telemetry(registry=CollectorRegistry(), tracing=False)
    port = await telemetry.serve_metrics("127.0.0.1:0")
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\n")  # no end of head: the server waits
        writer.close()
        await writer.wait_closed()
        async with httpx.AsyncClient() as http:  # and still answers the next one
            assert (await http.get(f"http://127.0.0.1:{port}/metrics")).status_code == 200
    finally:
        await telemetry.close()


async def test_metrics_off_serves_nothing() -> None:
    telemetry = start_telemetry("test", {"IMESH_METRICS": "0"})
    assert telemetry.registry is None
    assert await telemetry.serve_metrics("127.0.0.1:0") == 0
    await telemetry.close()
