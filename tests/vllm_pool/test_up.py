"""`imesh up` with a `pool_service` section serves the GPU pool's registry in its own
process (membership in memory), beside the router that watches it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import grpc
import pytest
import yaml

from imesh.v1 import pool_service_pb2 as pb
from imesh.v1 import pool_service_pb2_grpc
from tests.support.redis_server import free_port
from tests.vllm_pool.conftest import AUTH, READER_ENV, READER_TOKEN, TOKEN, TOKEN_ENV

REPO = Path(__file__).resolve().parents[2]


def mesh_yaml(pool_port: int) -> dict[str, object]:
    return {
        "pool_service": {
            "listen": f"127.0.0.1:{pool_port}",
            "agent_tokens": [f"env:{TOKEN_ENV}"],
            "reader_tokens": [f"env:{READER_ENV}"],
        },
        "providers": {
            "gpu": {
                "kind": "vllm_pool",
                "pool": "gpu",
                "address": f"127.0.0.1:{pool_port}",
                "token": f"env:{READER_ENV}",
            }
        },
        "deployments": [{"name": "tiny-pool", "provider": "gpu", "model": "tiny"}],
        "aliases": {"tiny": {"candidates": ["tiny-pool"]}},
    }


@pytest.mark.timeout(240)  # a process start: slow on a loaded two-core machine
async def test_imesh_up_serves_the_pool_registry_in_process(tmp_path: Path) -> None:
    pool_port = free_port()
    config = tmp_path / "mesh.yaml"
    config.write_text(yaml.safe_dump(mesh_yaml(pool_port)))
    up = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "router.cli.main", "up", "--config", str(config)),
        *("--listen", "127.0.0.1:0", "--no-http"),
        cwd=REPO,
        env={**os.environ, TOKEN_ENV: TOKEN, READER_ENV: READER_TOKEN},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert up.stdout is not None
        async with asyncio.timeout(180):
            line = (await up.stdout.readline()).decode()
        assert line.startswith(f"pool service gRPC on 127.0.0.1:{pool_port}")

        async with grpc.aio.insecure_channel(f"127.0.0.1:{pool_port}") as channel:
            stub = pool_service_pb2_grpc.PoolServiceStub(channel)
            spec = pb.ReplicaSpec(
                pool="gpu",
                replica_id="r1",
                transport=pb.REPLICA_TRANSPORT_HTTP,
                address="http://127.0.0.1:9",
                models=["tiny"],
            )
            await stub.Register(pb.RegisterRequest(spec=spec), metadata=AUTH)
            listed = await stub.ListReplicas(pb.ListReplicasRequest(pool="gpu"), metadata=AUTH)

        assert [r.spec.replica_id for r in listed.replicas] == ["r1"]
    finally:
        if up.returncode is None:
            up.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await up.wait()
    assert up.returncode == 0


def test_a_pool_service_section_needs_both_tokens() -> None:
    from router.config import ConfigError, parse_config

    data = mesh_yaml(50061)
    data["pool_service"] = {"listen": "127.0.0.1:50061"}

    with pytest.raises(ConfigError, match=r"pool_service\.agent_tokens") as caught:
        parse_config(data)
    assert "pool_service.reader_tokens" in str(caught.value)


def test_a_pool_service_redis_url_is_a_reference_never_inline() -> None:
    from router.config import ConfigError, parse_config

    data = mesh_yaml(50061)
    data["pool_service"] = {
        "agent_tokens": [f"env:{TOKEN_ENV}"],
        "reader_tokens": [f"env:{READER_ENV}"],
        "redis_url": "redis://:secret@redis:6379/0",
    }

    with pytest.raises(ConfigError, match="never inline") as caught:
        parse_config(data)
    assert "secret@" not in str(caught.value)
