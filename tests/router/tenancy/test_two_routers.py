"""Two `imesh router` processes sharing one Redis: a key created on one works on the other,
a tenant's RPM and TPM hold across both, and a revoke on one is refused by the other."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from imesh.api import CallContext
from imesh.client import Client
from imesh.errors import MeshError, Reason
from imesh.v1 import admin_service_pb2, admin_service_pb2_grpc, chat_pb2
from tests.support.redis_server import RedisServer

ADMIN = "admin-key-of-the-two-routers"
TENANTS = {
    "by-requests": {"limits": {"requests_per_minute": 12}},
    # Each request reserves its prompt estimate (~10) + 20 tokens and spends ~10 + 5.
    "by-tokens": {"limits": {"tokens_per_minute": 100}},
}


def write_config(path: Path) -> Path:
    config: dict[str, Any] = {
        "providers": {
            "sim": {
                "kind": "simulated",
                "ttft_ms": 1,
                "tokens_per_second": 5000,
                "completion_tokens": 5,
            }
        },
        "deployments": [{"name": "fast", "provider": "sim", "model": "fast-1"}],
        "tenancy": {
            "redis_url": "env:IMESH_TEST_REDIS_URL",
            "key_secret": "env:IMESH_TEST_KEY_SECRET",
            "admin_key": "env:IMESH_TEST_ADMIN_KEY",
            "key_cache_s": 0.5,
            "usage": {"spill_dir": str(path.parent / "spill")},
            "tenants": TENANTS,
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def start_router(config: Path, redis_url: str, name: str) -> tuple[subprocess.Popen[str], str]:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "IMESH_TEST_REDIS_URL": redis_url,
        "IMESH_TEST_KEY_SECRET": "a-secret-both-routers-share",
        "IMESH_TEST_ADMIN_KEY": ADMIN,
    }
    argv = [sys.executable, "-m", "router.cli.main", "router", "--config", str(config)]
    proc = subprocess.Popen(
        [*argv, "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("router gRPC on "):
            return proc, line.removeprefix("router gRPC on ").strip()
    proc.kill()
    proc.wait()
    proc.stdout.close()
    raise AssertionError(f"router {name} did not start")


@pytest.fixture
def routers(tmp_path: Path, fresh_redis: RedisServer) -> Iterator[list[str]]:
    config = write_config(tmp_path / "mesh.yaml")
    started = [start_router(config, fresh_redis.url, str(i)) for i in range(2)]
    try:
        yield [address for _, address in started]
    finally:
        for proc, _ in started:
            proc.terminate()
        for proc, _ in started:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


async def create_key(address: str, tenant: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        stub: Any = admin_service_pb2_grpc.AdminServiceStub(channel)
        made = await stub.CreateKey(
            admin_service_pb2.CreateKeyRequest(tenant=tenant),
            metadata=(("authorization", f"Bearer {ADMIN}"),),
        )
    return str(made.api_key)


def ask() -> chat_pb2.ChatInput:
    text = chat_pb2.ContentPart(text="hi")
    message = chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[text])
    return chat_pb2.ChatInput(model="fast", max_tokens=20, messages=[message])


async def served(addresses: list[str], key: str, attempts: int) -> tuple[int, list[Reason]]:
    """Requests sent alternately to each router: how many were served, why others were not."""
    clients = [Client(a, api_key=key) for a in addresses]
    ok, refused = 0, []
    try:
        for i in range(attempts):
            try:
                await clients[i % len(clients)].chat(ask(), CallContext(timeout=10))
                ok += 1
            except MeshError as exc:
                refused.append(exc.reason)
    finally:
        for client in clients:
            await client.aclose()
    return ok, refused


@pytest.mark.slow
async def test_rpm_tpm_and_revocation_hold_across_two_router_processes(
    routers: list[str],
) -> None:
    first, second = routers
    by_requests = await create_key(first, "by-requests")
    ok, refused = await served(routers, by_requests, 20)
    assert (ok, set(refused)) == (12, {Reason.RATE_LIMITED})

    by_tokens = await create_key(second, "by-tokens")
    ok, refused = await served(routers, by_tokens, 20)
    assert set(refused) == {Reason.RATE_LIMITED}
    assert 1 <= ok < 20  # each request spends a few tokens of the 100 a minute

    async with grpc.aio.insecure_channel(first) as channel:
        stub: Any = admin_service_pb2_grpc.AdminServiceStub(channel)
        listed = await stub.ListKeys(
            admin_service_pb2.ListKeysRequest(tenant="by-requests"),
            metadata=(("authorization", f"Bearer {ADMIN}"),),
        )
        await stub.RevokeKey(
            admin_service_pb2.RevokeKeyRequest(key_id=listed.keys[0].key_id),
            metadata=(("authorization", f"Bearer {ADMIN}"),),
        )
    deadline = time.monotonic() + 5
    reason = None
    while time.monotonic() < deadline and reason is not Reason.INVALID_API_KEY:
        _, reasons = await served([second], by_requests, 1)
        reason = reasons[0] if reasons else None
        await asyncio.sleep(0.1)
    assert reason is Reason.INVALID_API_KEY


def imesh(*args: str) -> str:
    argv = [sys.executable, "-m", "router.cli.main", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
async def test_the_keys_and_usage_commands_administer_and_report(routers: list[str]) -> None:
    first, second = routers
    made = await asyncio.to_thread(
        imesh, "keys", "--router", first, "--admin-key", ADMIN, "create", "--tenant", "by-requests"
    )
    key = made.splitlines()[-1]
    assert key.startswith("imk_")
    listed = await asyncio.to_thread(
        imesh, "keys", "--router", second, "--admin-key", ADMIN, "list", "--tenant", "by-requests"
    )
    assert key[: len("imk_") + 12] in listed  # the prefix (imk_ + key id), shown as active
    assert key not in listed
    assert "active" in listed
    ok, _ = await served([second], key, 2)
    assert ok == 2
    # The usage events reach the rollup through the stream and the aggregator.
    deadline = time.monotonic() + 10
    while True:
        table = await asyncio.to_thread(imesh, "usage", "--router", first, "--api-key", key)
        total = table.splitlines()[-1].split()
        if total[:2] == ["total", "2"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert table.splitlines()[0] == "tenant by-requests"
    assert total[:2] == ["total", "2"]
