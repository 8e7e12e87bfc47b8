"""`imesh` is what a calling service installs: the contract, errors, ChatAPI and clients. It
must import, and build a client, without any server-side package."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Server packages of this repo, and the server-side dependencies a caller never needs.
BLOCKED = (
    "router",
    "adapters",
    "gateway",
    "vllm_pool",
    "bench",
    "redis",
    "tiktoken",
    "httpx",
    "aiohttp",
    "starlette",
    "uvicorn",
    "pydantic",
    "prometheus_client",
    "opentelemetry",
    "yaml",
)

_PROBE = """
import importlib.abc, sys
blocked = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"imesh imported the server-side module {name!r}")
        return None
sys.meta_path.insert(0, Block())
import imesh
from imesh import CallContext, Client, MeshError, SyncClient, user
from imesh.api import ChatAPI
from imesh.errors import Reason, classify
from imesh.v1 import chat_pb2, chat_service_pb2_grpc, events_pb2
client = Client("127.0.0.1:1")
assert classify(MeshError.of(Reason.OVERLOADED, "x")).http_status == 503
print("ok")
"""


def test_imesh_imports_and_builds_a_client_without_server_packages() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(BLOCKED)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_packages_core_dependencies_are_only_what_imesh_needs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("[")[0].split("=")[0] for dep in project["dependencies"]}
    assert names == {"grpcio", "grpcio-status", "grpcio-health-checking", "protobuf"}
    assert "router.cli.main:main" in project["scripts"].values()
    assert "server" in project["optional-dependencies"]
