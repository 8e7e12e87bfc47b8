"""Real vLLM engines on CPU for the end-to-end tests: one OpenAI HTTP server and one
native gRPC engine server over the tiny generated model, each in its own process group
(vLLM forks an engine-core process) so a test can kill one outright."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from smg_grpc_proto import vllm_engine_pb2, vllm_engine_pb2_grpc

from tests.support.redis_server import free_port

MODEL_NAME = "tiny"
# Long enough for a completion that keeps an engine busy for seconds (tests of load).
MAX_MODEL_LEN = 4096
_MODULES = {
    "http": "vllm.entrypoints.openai.api_server",
    "grpc": "vllm.entrypoints.launchers.grpc_server",
}


class EngineFailed(RuntimeError):
    """The engine exited or never became ready; the message ends with its log's tail."""


@dataclass
class VllmEngine:
    kind: str  # "http" or "grpc"
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def address(self) -> str:
        """What the agent's --vllm (a URL) or --vllm-grpc (host:port) takes."""
        host = f"127.0.0.1:{self.port}"
        return f"http://{host}" if self.kind == "http" else host

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL to the whole process group: the replica dies mid-whatever."""
        if self.alive:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.alive:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start_engine(python: Path, model_dir: Path, kind: str, log_dir: Path) -> VllmEngine:
    port = free_port()
    log = log_dir / f"vllm-{kind}-{port}.log"
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        # The servicer's planned warm-up is for real models; this one is tiny.
        "SMG_VLLM_SERVICER_WARMUP": "off",
    }
    command = [
        str(python),
        "-m",
        _MODULES[kind],
        "--model",
        str(model_dir),
        "--served-model-name",
        MODEL_NAME,
        "--load-format",
        "dummy",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--dtype",
        "float32",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log_dir,
            start_new_session=True,
        )
    return VllmEngine(kind, port, process, log)


def wait_ready(engine: VllmEngine, timeout_s: float) -> None:
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        if not engine.alive:
            raise EngineFailed(f"vLLM ({engine.kind}) exited:\n{engine.tail()}")
        if _ready(engine):
            return
        time.sleep(1.0)
    raise EngineFailed(f"vLLM ({engine.kind}) not ready after {timeout_s:.0f}s:\n{engine.tail()}")


def _ready(engine: VllmEngine) -> bool:
    if engine.kind == "http":
        try:
            return httpx.get(f"{engine.address}/v1/models", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    with grpc.insecure_channel(engine.address) as channel:
        stub = vllm_engine_pb2_grpc.VllmEngineStub(channel)
        try:
            answer = stub.HealthCheck(vllm_engine_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
        return bool(answer.healthy)
