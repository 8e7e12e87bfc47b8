"""LiteLLM's proxy as a second, optional baseline: only when `litellm` is importable.

It is started in front of the same upstream, with one worker, and polled until it answers.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
import time
from typing import Any

import httpx

from bench.processes import BenchError, ServerProcess

MODEL_ALIAS = "bench"
READY_PATH = "/health/liveliness"
# LiteLLM otherwise fetches its model price map from the network at start.
OFFLINE_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}


def unavailable() -> str | None:
    """Why LiteLLM cannot be measured here, or None when it can."""
    return None if importlib.util.find_spec("litellm") is not None else "not installed"


def config(upstream_url: str, upstream_model: str) -> dict[str, Any]:
    """A proxy config with one model on the upstream (the upstream checks no key)."""
    return {
        "model_list": [
            {
                "model_name": MODEL_ALIAS,
                "litellm_params": {
                    "model": f"openai/{upstream_model}",
                    "api_base": upstream_url,
                    "api_key": "no-key-needed",
                },
            }
        ]
    }


def free_port() -> int:
    # LiteLLM has no way to report a port it picked itself; the race window is tiny.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def argv(config_path: str, port: int) -> list[str]:
    run = "from litellm.proxy.proxy_cli import run_server; run_server()"
    return [
        sys.executable,
        "-c",
        run,
        "--config",
        config_path,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]


async def wait_ready(proc: ServerProcess, base_url: str, within_s: float) -> None:
    """Until GET /health/liveliness answers 200; BenchError when it exits or times out."""
    end = time.monotonic() + within_s
    async with httpx.AsyncClient(base_url=base_url, timeout=2.0) as http:
        while time.monotonic() < end:
            if not proc.running():
                raise BenchError(f"litellm exited before it was ready:\n{proc.stderr_tail()}")
            try:
                if (await http.get(READY_PATH)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.25)
    raise BenchError(f"litellm not ready after {within_s:g}s:\n{proc.stderr_tail()}")
