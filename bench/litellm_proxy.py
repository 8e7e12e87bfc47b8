"""LiteLLM's proxy as a peer measured beside the mesh: its config, command line and readiness.

It runs from the bench's cached virtual environment (bench/litellm_env.py) in front of the
same upstream: one worker, no database, no retries, every remote fetch turned off.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import httpx

from bench.processes import BenchError, ServerProcess

MODEL_ALIAS = "bench"
READY_PATH = "/health/liveliness"
# LiteLLM otherwise fetches its price map, blog posts, beta headers, policy templates and
# router presets from the network (at start and on some routes); the bundled copies do.
OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_LOG": "ERROR",
}


def config(upstream_url: str, upstream_model: str) -> dict[str, Any]:
    """One model on the upstream (which checks no key); no retries anywhere."""
    return {
        "model_list": [
            {
                "model_name": MODEL_ALIAS,
                "litellm_params": {
                    "model": f"openai/{upstream_model}",
                    "api_base": upstream_url,
                    "api_key": "no-key-needed",
                    "max_retries": 0,
                },
            }
        ],
        "litellm_settings": {"num_retries": 0, "telemetry": False},
        "router_settings": {"num_retries": 0},
    }


def free_port() -> int:
    # LiteLLM has no way to report a port it picked itself; the race window is tiny.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def argv(python: Path, config_path: str, port: int) -> list[str]:
    run = "from litellm.proxy.proxy_cli import run_server; run_server()"
    return [
        str(python),
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
