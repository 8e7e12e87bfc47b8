"""gRPC server metrics: calls by method and status code, durations, both streaming handler
styles, and probes left out, through a real grpc.aio server on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from prometheus_client import CollectorRegistry

from router.cli.grpc_metrics import GrpcServerMetrics


async def ok(request: bytes, context: Any) -> bytes:
    return b"ok"


async def missing(request: bytes, context: Any) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    return b""


async def generated(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for part in (b"a", b"b"):
        yield part


async def written(request: bytes, context: Any) -> None:
    for part in (b"a", b"b"):
        await context.write(part)


async def test_calls_are_counted_by_method_and_code_in_every_handler_style() -> None:
    registry = CollectorRegistry()
    server = grpc.aio.server(interceptors=[GrpcServerMetrics(registry)])
    handlers = {
        "Ok": grpc.unary_unary_rpc_method_handler(ok),
        "Missing": grpc.unary_unary_rpc_method_handler(missing),
        "Generated": grpc.unary_stream_rpc_method_handler(generated),
        "Written": grpc.unary_stream_rpc_method_handler(written),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", handlers),))
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await channel.unary_unary("/t.S/Ok", None, None)(b"") == b"ok"
            with pytest.raises(grpc.aio.AioRpcError):
                await channel.unary_unary("/t.S/Missing", None, None)(b"")
            for name in ("Generated", "Written"):
                call = channel.unary_stream(f"/t.S/{name}", None, None)(b"")
                assert [m async for m in call] == [b"a", b"b"]
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    finally:
        await server.stop(None)

    def handled(method: str, code: str) -> float | None:
        labels = {"method": f"/t.S/{method}", "code": code}
        return registry.get_sample_value("imesh_grpc_server_handled_total", labels)

    assert handled("Ok", "OK") == 1
    assert handled("Missing", "NOT_FOUND") == 1
    assert handled("Generated", "OK") == 1
    assert handled("Written", "OK") == 1
    counted = registry.get_sample_value(
        "imesh_grpc_server_handling_seconds_count", {"method": "/t.S/Written"}
    )
    assert counted == 1
    methods = {
        s.labels["method"]
        for family in registry.collect()
        for s in family.samples
        if "method" in s.labels
    }
    assert not any("grpc.health" in m for m in methods)


async def test_a_method_handler_is_wrapped_once_and_every_call_still_counted() -> None:
    registry = CollectorRegistry()
    metrics = GrpcServerMetrics(registry)
    handler = grpc.unary_unary_rpc_method_handler(ok)
    details: Any = type("Details", (), {"method": "/t.S/Ok", "invocation_metadata": ()})()

    async def continuation(_: Any) -> Any:
        return handler

    first = await metrics.intercept_service(continuation, details)
    again = await metrics.intercept_service(continuation, details)
    assert again is first
    context: Any = type("Ctx", (), {"code": lambda self: None, "cancelled": lambda self: False})()
    for wrapped in (first, again):
        behaviour: Any = wrapped.unary_unary
        assert await behaviour(b"", context) == b"ok"
    labels = {"method": "/t.S/Ok", "code": "OK"}
    assert registry.get_sample_value("imesh_grpc_server_handled_total", labels) == 2
