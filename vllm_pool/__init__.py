"""The self-hosted vLLM pool: replicas register through their agents with the pool
service; routers watch it and reach the pool as a Backend of provider kind `vllm_pool`."""

from __future__ import annotations

from typing import Any

from adapters import registry
from adapters.backend import Backend


def _build(config: Any) -> Backend:
    # Imported on first use: a mesh without a pool never loads its code.
    from vllm_pool.backend import PoolBackend

    return PoolBackend(config)


registry.register("vllm_pool", _build)
