"""gRPC server spans: one SERVER span per call in every handler style (unary, a stream that
yields, a stream written with `context.write`), continuing the caller's `traceparent`,
with probes left out; through a real grpc.aio server on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from router.cli.grpc_tracing import TracingServerInterceptor

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = (("traceparent", f"00-{CALLER_TRACE}-b7ad6b7169203331-01"),)


async def ok(request: bytes, context: Any) -> bytes:
    return b"ok"


async def generated(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for part in (b"a", b"b"):
        yield part


async def written(request: bytes, context: Any) -> None:
    for part in (b"a", b"b"):
        await context.write(part)


async def test_every_handler_style_gets_a_server_span_under_the_callers_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = grpc.aio.server(interceptors=[TracingServerInterceptor(provider)])
    handlers = {
        "Ok": grpc.unary_unary_rpc_method_handler(ok),
        "Generated": grpc.unary_stream_rpc_method_handler(generated),
        "Written": grpc.unary_stream_rpc_method_handler(written),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", handlers),))
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            ok_call = channel.unary_unary("/t.S/Ok", None, None)
            assert await ok_call(b"", metadata=TRACEPARENT) == b"ok"
            for name in ("Generated", "Written"):
                call = channel.unary_stream(f"/t.S/{name}", None, None)(b"", metadata=TRACEPARENT)
                assert [m async for m in call] == [b"a", b"b"]
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    finally:
        await server.stop(None)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans.keys() == {"/t.S/Ok", "/t.S/Generated", "/t.S/Written"}
    for span in spans.values():
        assert span.kind is trace.SpanKind.SERVER
        assert format(span.context.trace_id, "032x") == CALLER_TRACE
        assert span.attributes is not None
        assert span.attributes["rpc.service"] == "t.S"


async def test_a_method_handler_is_wrapped_once_and_every_call_still_traced() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    interceptor = TracingServerInterceptor(provider)
    handler = grpc.unary_unary_rpc_method_handler(ok)
    details: Any = type("Details", (), {"method": "/t.S/Ok", "invocation_metadata": ()})()

    async def continuation(_: Any) -> Any:
        return handler

    first = await interceptor.intercept_service(continuation, details)
    again = await interceptor.intercept_service(continuation, details)
    assert again is first
    context: Any = type("Ctx", (), {"invocation_metadata": lambda self: TRACEPARENT})()
    for wrapped in (first, again):
        behaviour: Any = wrapped.unary_unary
        assert await behaviour(b"", context) == b"ok"
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["/t.S/Ok", "/t.S/Ok"]
    assert all(format(s.context.trace_id, "032x") == CALLER_TRACE for s in spans)
    assert spans[0].attributes == spans[1].attributes
    assert spans[0].attributes is not None
    assert spans[0].attributes["rpc.method"] == "Ok"
