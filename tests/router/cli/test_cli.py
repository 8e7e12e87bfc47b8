"""The `imesh` command: up/router/adapter/gateway as processes; chat and models against them."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from adapters.config import RemoteConfig
from adapters.deadline import Deadline
from adapters.remote import RemoteBackend
from imesh.v1 import adapter_service_pb2, chat_pb2
from router.cli.main import main
from tests.support.hop import TOKEN_ENV, service_token

IMESH = [sys.executable, "-m", "router.cli.main"]
CONFIG = {
    "providers": {
        "fast": {"kind": "simulated", "ttft_ms": 5, "tokens_per_second": 2000, "seed": 1},
        "cut": {"kind": "simulated", "ttft_ms": 0, "cut_after_tokens": 3},
    },
    "deployments": [
        {
            "name": "fast-1",
            "provider": "fast",
            "model": "fast-model",
            "capabilities": ["streaming", "tools"],
            "price": {"input": 1.5, "output": 6},
        },
        {"name": "cut-1", "provider": "cut", "model": "cut-model"},
    ],
    "aliases": {"quick": {"candidates": ["fast-1"]}},
    "router": {"drain_s": 2},
    "adapter_service": {"tokens": [f"env:{TOKEN_ENV}"]},
}
SUBCOMMANDS = ["up", "router", "adapter", "gateway", "chat", "models"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Proc:
    """A started `imesh` process whose stdout lines a thread reads into a queue."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen(
            [*IMESH, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stderr: str | None = None

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect_line(self, prefix: str, timeout: float = 20.0) -> str:
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            if line.startswith(prefix):
                return line
        self.stop()
        raise AssertionError(f"no line starting {prefix!r}; stderr: {self.stderr()}")

    def stderr(self) -> str:
        """What the process wrote to stderr (once it has ended)."""
        return self._stderr if self._stderr is not None else "(running)"

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, then the exit code (the process is killed if it does not exit)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        finally:
            self.stop()
        return self.popen.returncode

    def stop(self) -> None:
        """Kill the process if it still runs, and release its pipes."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(5)
        if self._stderr is None and self.popen.stderr is not None:
            self._stderr = self.popen.stderr.read()
            self.popen.stderr.close()
        self._reader.join(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


def imesh(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*IMESH, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "mesh.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


class Up:
    def __init__(self, grpc_address: str, http_url: str) -> None:
        self.grpc = grpc_address
        self.http = http_url


@pytest.fixture(scope="module")
def up(config_file: Path) -> Iterator[Up]:
    grpc_listen = f"127.0.0.1:{free_port()}"
    http_listen = f"127.0.0.1:{free_port()}"
    proc = Proc("up", "--config", str(config_file), "--listen", grpc_listen, "--http", http_listen)
    try:
        assert proc.expect_line("router gRPC on ") == f"router gRPC on {grpc_listen}"
        assert proc.expect_line("edge HTTP on ") == f"edge HTTP on http://{http_listen}"
        yield Up(grpc_listen, f"http://{http_listen}")
    finally:
        proc.stop()


def test_chat_streams_the_answer_and_reports_deployment_tokens_cost_and_ttft(up: Up) -> None:
    result = imesh("chat", "--router", up.grpc, "--model", "quick", "Hello, mesh!")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 64  # the simulated default completion length
    err = result.stderr
    assert "deployment: fast-1 (fast-model)" in err
    assert "tokens: prompt 4, completion 64, cached 0" in err
    # 4 x $1.5/Mtok + 64 x $6/Mtok = $0.000390
    assert "cost: $0.000390" in err
    assert "ttft: " in err
    assert " ms, total: " in err
    assert "Traceback" not in err


def test_chat_without_streaming_prints_the_same_answer(up: Up) -> None:
    streamed = imesh("chat", "--router", up.grpc, "--model", "quick", "--max-tokens", "6", "hi")
    unary = imesh(
        "chat", "--router", up.grpc, "--model", "quick", "--max-tokens", "6", "--no-stream", "hi"
    )
    assert unary.returncode == 0, unary.stderr
    assert unary.stdout == streamed.stdout
    assert "finish: length" in unary.stderr


def test_chat_error_prints_code_and_reason_and_exits_1(up: Up) -> None:
    result = imesh("chat", "--router", up.grpc, "--model", "cut-1", "hi")
    assert result.returncode == 1
    assert "error: UNAVAILABLE UPSTREAM_INTERRUPTED: " in result.stderr
    assert "Traceback" not in result.stderr


def test_chat_reads_the_router_address_from_the_environment(up: Up) -> None:
    env = {**os.environ, "IMESH_ROUTER": up.grpc}
    result = subprocess.run(
        [*IMESH, "chat", "--model", "quick", "hi"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "deployment: fast-1" in result.stderr


def test_models_lists_aliases_and_deployments(up: Up) -> None:
    result = imesh("models", "--router", up.grpc)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.split()[:3] == ["quick", "priority", "fast-1"] for line in lines if line)
    fast = next(line for line in lines if line.startswith("fast-1"))
    assert "tools" in fast
    assert "1.5/6/1.5" in fast
    assert fast.split()[-1] == "closed"


def test_models_json_is_the_list_models_response(up: Up) -> None:
    result = imesh("models", "--router", up.grpc, "--json")
    data = json.loads(result.stdout)
    assert [a["name"] for a in data["aliases"]] == ["quick"]
    assert {d["name"] for d in data["deployments"]} == {"fast-1", "cut-1"}


def test_up_serves_the_rest_edge_over_the_same_router(up: Up) -> None:
    reply = httpx.get(f"{up.http}/v1/models", timeout=10)
    assert reply.status_code == 200
    assert "quick" in {m["id"] for m in reply.json()["data"]}


def test_unreachable_router_is_an_error_without_traceback() -> None:
    result = imesh("models", "--router", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stderr.startswith("error: UNAVAILABLE")
    assert "Traceback" not in result.stderr


def test_router_drains_on_sigterm_and_exits_0(config_file: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    proc = Proc("router", "--config", str(config_file), "--listen", listen)
    try:
        proc.expect_line("router gRPC on ")
        code = proc.terminate()
    finally:
        proc.stop()
    assert code == 0
    assert "SIGTERM: draining" in proc.stderr()


def test_adapter_serves_a_provider_that_a_remote_backend_reaches(config_file: Path) -> None:
    service_token()  # sets the variable the config's adapter_service names, for the child
    proc = Proc("adapter", "fast", "--config", str(config_file), "--listen", "127.0.0.1:0")
    try:
        line = proc.expect_line("adapter fast gRPC on ")
        address = line.rsplit(" ", 1)[1]
        text = _remote_text(address)
        code = proc.terminate()
    finally:
        proc.stop()
    assert len(text.split()) == 64
    assert code == 0


def _remote_text(address: str) -> str:
    import asyncio

    async def call() -> str:
        config = RemoteConfig(kind="remote", address=address, token=service_token())
        backend = RemoteBackend(config)
        request = adapter_service_pb2.GenerateRequest(
            input=chat_pb2.ChatInput(
                model="m",
                messages=[
                    chat_pb2.Message(
                        role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text="hi")]
                    )
                ],
            )
        )
        try:
            batches = backend.chat(request, Deadline.after(10))
            return "".join([e.content.text async for batch in batches for e in batch])
        finally:
            await backend.aclose()

    return asyncio.run(call())


def test_gateway_serves_the_edge_against_a_separate_router(up: Up) -> None:
    http = f"127.0.0.1:{free_port()}"
    proc = Proc("gateway", "--router", up.grpc, "--listen", http)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                reply = httpx.get(f"http://{http}/v1/models", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.popen.poll() is not None:
                    raise
                time.sleep(0.1)
        proc.terminate()
    finally:
        proc.stop()
    assert reply.status_code == 200
    assert "quick" in {m["id"] for m in reply.json()["data"]}


def test_bad_config_exits_2_naming_the_key_without_traceback(tmp_path: Path) -> None:
    bad = {**CONFIG, "router": {"listn": "127.0.0.1:1"}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = imesh("up", "--config", str(path), "--no-http")
    assert result.returncode == 2
    assert "router.listn" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["router", "--config", str(tmp_path / "nope.yaml")])
    assert exited.value.code == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_adapter_for_an_unknown_provider_exits_2(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["adapter", "nope", "--config", str(config_file), "--listen", "127.0.0.1:0"])
    assert exited.value.code == 2
    assert "providers.nope" in capsys.readouterr().err


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_describes_each_subcommand_with_examples(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: imesh {command}")
    assert "examples:" in out


def test_top_level_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in SUBCOMMANDS:
        assert command in out


def test_router_logs_a_breaker_opening_for_its_operator(tmp_path: Path) -> None:
    config = {
        "providers": {"down": {"kind": "simulated", "error_rate": 1.0}},
        "deployments": [{"name": "down-1", "provider": "down", "model": "m"}],
        "aliases": {"only": {"candidates": ["down-1"], "retry": {"max_attempts": 1}}},
        "router": {"breaker": {"consecutive_failures": 1}},
    }
    path = tmp_path / "down.yaml"
    path.write_text(yaml.safe_dump(config))
    listen = f"127.0.0.1:{free_port()}"
    proc = Proc("router", "--config", str(path), "--listen", listen)
    try:
        proc.expect_line("router gRPC on ")
        chat = imesh("chat", "--router", listen, "--model", "only", "hello")
        assert chat.returncode == 1
        assert "UNAVAILABLE" in chat.stderr
        assert proc.terminate() == 0
    finally:
        proc.stop()
    # Off a terminal, service logs are JSON lines.
    lines = [json.loads(line) for line in proc.stderr().splitlines() if line.startswith("{")]
    assert any(
        line["level"] == "WARNING"
        and line["logger"] == "router.recorder"
        and line["message"].startswith("deployment down-1: breaker closed -> open")
        for line in lines
    ), proc.stderr()


def test_services_never_log_each_upstream_request(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from router.cli.main import configure_logging

    monkeypatch.setenv("IMESH_LOG_LEVEL", "INFO")
    chatty = [logging.getLogger(name) for name in ("httpx", "httpcore")]
    before = [logger.level for logger in chatty]
    try:
        configure_logging("up")
        assert all(logger.getEffectiveLevel() >= logging.WARNING for logger in chatty)
    finally:
        for logger, level in zip(chatty, before, strict=True):
            logger.setLevel(level)
