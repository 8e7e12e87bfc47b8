"""What a first-time user meets: `imesh chat` picks a model that exists, says which models
exist when asked for one that does not, and says how to give a missing key."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

IMESH = [sys.executable, "-m", "router.cli.main"]
KEY = "sk-newcomer"
SIM = {"kind": "simulated", "ttft_ms": 0, "tokens_per_second": 5000, "completion_tokens": 3}


def config(aliases: dict[str, Any], **router: Any) -> dict[str, Any]:
    return {
        "providers": {"sim": SIM},
        "deployments": [
            {"name": "sim-a", "provider": "sim", "model": "a"},
            {"name": "sim-b", "provider": "sim", "model": "b"},
        ],
        "aliases": aliases,
        "router": router,
    }


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """serve(config) -> the address of `imesh up --no-http` on a free port."""
    started: list[subprocess.Popen[str]] = []

    def start(data: dict[str, Any]) -> str:
        path = tmp_path / f"mesh{len(started)}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        proc = subprocess.Popen(
            [*IMESH, "up", "--config", str(path), "--listen", "127.0.0.1:0", "--no-http"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("router gRPC on "), line
        return line.removeprefix("router gRPC on ").strip()

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def chat(router: str, *args: str, key: str | None = KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("IMESH_API_KEY", "IMESH_ROUTER")}
    argv = [*IMESH, "chat", "--router", router, *args]
    if key is not None:
        argv += ["--api-key", key]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, check=False)


def test_chat_without_a_model_asks_for_the_configs_first_alias(serve: Any) -> None:
    router = serve(
        config({"second": {"candidates": ["sim-b"]}, "first": {"candidates": ["sim-a"]}})
    )
    # Aliases keep the config's order: "second" is the first one written.
    result = chat(router, "hello")
    assert result.returncode == 0, result.stderr
    assert "deployment: sim-b (b)" in result.stderr


def test_chat_without_a_model_or_any_alias_lists_the_models(serve: Any) -> None:
    result = chat(serve(config({})), "hello")
    assert result.returncode == 1
    assert "no --model given and the router has no alias; models: sim-a, sim-b" in result.stderr


def test_an_unknown_model_is_answered_with_the_models_that_exist(serve: Any) -> None:
    router = serve(config({"fast": {"candidates": ["sim-a"]}}))
    result = chat(router, "--model", "auto", "hello")
    assert result.returncode == 1
    assert result.stderr.strip().endswith("; models: fast, sim-a, sim-b")


def test_a_missing_key_says_how_to_give_one(serve: Any) -> None:
    digest = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()
    router = serve(config({"fast": {"candidates": ["sim-a"]}}, api_key_hashes=[digest]))
    result = chat(router, "--model", "fast", "hello", key=None)
    assert result.returncode == 1
    assert "MISSING_API_KEY" in result.stderr
    assert "--api-key KEY" in result.stderr
    assert "IMESH_API_KEY" in result.stderr
    assert chat(router, "--model", "fast", "hello").returncode == 0
