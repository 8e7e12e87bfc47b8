"""One request through the mesh deployed apart, in real processes (edge -> router -> remote
adapter service -> an HTTP provider): the spans all three export form one parent/child
chain that the provider's `traceparent` continues, and no log line of any of them carries
the prompt or the key."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import grpc
import httpx
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

IMESH = [sys.executable, "-m", "router.cli.main"]
TOKEN_VAR = "OBS_TEST_ADAPTER_TOKEN"
# W3C traceparent the caller sends: the edge's span must continue this trace.
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector that keeps every span in memory, with its service."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, trace_pb2.Span]] = []
        self._lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((service, s) for s in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def services(self) -> set[str]:
        with self._lock:
            return {service for service, _ in self.spans}


_SSE = (
    b"".join(
        b"data: " + json.dumps(chunk).encode() + b"\n\n"
        for chunk in (
            {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]},
            {
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            },
        )
    )
    + b"data: [DONE]\n\n"
)


class _Provider(BaseHTTPRequestHandler):
    """An OpenAI-compatible provider answering every chat call with one short stream."""

    protocol_version = "HTTP/1.1"
    traceparents: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.traceparents.append(self.headers.get("traceparent", ""))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(_SSE)))
        self.end_headers()
        self.wfile.write(_SSE)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def provider() -> Iterator[tuple[type[_Provider], int]]:
    _Provider.traceparents = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Provider)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield _Provider, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    from concurrent import futures

    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Proc:
    """An `imesh` process; its output is kept for the log assertions."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.popen = subprocess.Popen(
            [*IMESH, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.output = ""

    def first_line(self, prefix: str, timeout: float = 30.0) -> str:
        assert self.popen.stdout is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            line = self.popen.stdout.readline()
            if not line:
                break
            self.output += line
            if line.startswith(prefix):
                return line.strip()
        self.stop()
        raise AssertionError(f"no line {prefix!r}: {self.output}")

    def stop(self) -> str:
        """SIGTERM (spans still buffered are exported on the way out), then all output."""
        if self.popen.poll() is None:
            self.popen.terminate()
        try:
            out, err = self.popen.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            out, err = self.popen.communicate()
        self.output += out + err
        return self.output


def write(path: Path, config: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


def wait_healthy(url: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def test_one_trace_spans_edge_router_and_adapter_and_logs_hold_no_secrets(
    tmp_path: Path,
    collector: tuple[Collector, int],
    provider: tuple[type[_Provider], int],
) -> None:
    spans, collector_port = collector
    upstream, upstream_port = provider
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        TOKEN_VAR: "hop-" + uuid.uuid4().hex,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "IMESH_LOG_FORMAT": "json",
    }
    http_provider = {
        "kind": "openai_compatible",
        "base_url": f"http://127.0.0.1:{upstream_port}/v1",
        "proxy": "direct",
    }
    deployment = {"name": "sim-1", "provider": "sim", "model": "sim-model"}
    adapter_config = write(
        tmp_path / "adapter.yaml",
        {
            "providers": {"sim": http_provider},
            "deployments": [deployment],
            "adapter_service": {"tokens": [f"env:{TOKEN_VAR}"]},
        },
    )
    prompt_marker = "PROMPT-MARKER-" + uuid.uuid4().hex
    key_marker = "KEYMARKER" + uuid.uuid4().hex
    procs: list[Proc] = []
    try:
        adapter = Proc(env, "adapter", "sim", "--config", adapter_config, "--listen", "127.0.0.1:0")
        procs.append(adapter)
        adapter_addr = adapter.first_line("adapter sim gRPC on ").rsplit(" ", 1)[1]
        router_config = write(
            tmp_path / "router.yaml",
            {
                "providers": {
                    "sim": {"kind": "remote", "address": adapter_addr, "token": f"env:{TOKEN_VAR}"}
                },
                "deployments": [deployment],
                "aliases": {"fast": {"candidates": ["sim-1"]}},
            },
        )
        router = Proc(env, "router", "--config", router_config, "--listen", "127.0.0.1:0")
        procs.append(router)
        router_addr = router.first_line("router gRPC on ").rsplit(" ", 1)[1]
        http_port = free_port()
        edge = Proc(env, "gateway", "--router", router_addr, "--listen", f"127.0.0.1:{http_port}")
        procs.append(edge)
        wait_healthy(f"http://127.0.0.1:{http_port}/healthz")

        reply = httpx.post(
            f"http://127.0.0.1:{http_port}/v1/chat/completions",
            json={
                "model": "fast",
                "stream": True,
                "messages": [{"role": "user", "content": f"say hi {prompt_marker}"}],
            },
            headers={
                "authorization": f"Bearer {key_marker}",
                "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
                "x-request-id": "obs-chain-1",
            },
            timeout=30.0,
        )
        assert reply.status_code == 200, reply.text
        end = time.monotonic() + 15
        wanted = {"imesh-gateway", "imesh-router", "imesh-adapter-sim"}
        while time.monotonic() < end and not wanted <= spans.services():
            time.sleep(0.1)
    finally:
        outputs = [p.stop() for p in reversed(procs)]

    chain = _chain(spans)
    assert [name for _, name in chain] == [
        ("imesh-gateway", "POST chat_completions"),
        ("imesh-gateway", "/imesh.v1.ChatService/ChatStream"),
        ("imesh-router", "/imesh.v1.ChatService/ChatStream"),
        ("imesh-router", "chat fast"),
        ("imesh-router", "attempt sim-1"),
        ("imesh-router", "/imesh.v1.AdapterService/Generate"),
        ("imesh-adapter-sim", "/imesh.v1.AdapterService/Generate"),
    ]
    for (service, span), _ in chain:
        assert span.trace_id.hex() == CALLER_TRACE, service
    # The provider's request continues the trace under the adapter's span.
    (_, adapter_span), _ = chain[-1]
    assert upstream.traceparents == [f"00-{CALLER_TRACE}-{adapter_span.span_id.hex()}-01"]

    logs = "\n".join(outputs)
    assert prompt_marker not in logs
    assert key_marker not in logs
    request_lines = [
        json.loads(line)
        for line in logs.splitlines()
        if line.startswith("{") and '"imesh.request"' in line
    ]
    (line,) = [r for r in request_lines if r["request_id"] == "obs-chain-1"]
    assert line["outcome"] == "success"
    assert line["trace_id"] == CALLER_TRACE
    assert line["completion_tokens"] > 0


def _chain(
    collector: Collector,
) -> list[tuple[tuple[str, trace_pb2.Span], tuple[str, str]]]:
    """From the edge's span down: each span's one child on the path to the adapter."""
    by_parent: dict[bytes, list[tuple[str, trace_pb2.Span]]] = {}
    for service, span in collector.spans:
        by_parent.setdefault(span.parent_span_id, []).append((service, span))
    chain = []
    parent = bytes.fromhex(CALLER_SPAN)
    while parent in by_parent:
        children = by_parent[parent]
        # Prefer the branch that goes on (an attempt's upstream call over a sibling leaf).
        children.sort(key=lambda c: c[1].span_id in by_parent, reverse=True)
        service, span = children[0]
        chain.append(((service, span), (service, span.name)))
        parent = span.span_id
    return chain
