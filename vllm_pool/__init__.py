"""The self-hosted vLLM pool: replicas register through their agents with the pool
service; routers watch it and reach the pool as a Backend of provider kind `vllm_pool`.

Importing the package registers nothing: the composition root (router/cli) calls
`register_kind()` before it builds backends.
"""

from __future__ import annotations

from typing import Any

from adapters import registry
from adapters.backend import Backend

KIND = "vllm_pool"


def _build(config: Any) -> Backend:
    # Imported on first use: a mesh without a pool never loads its code.
    from vllm_pool.backend import PoolBackend

    return PoolBackend(config)


def register_kind() -> None:
    """Makes provider kind `vllm_pool` buildable; calling it again changes nothing."""
    if KIND not in registry.kinds():
        registry.register(KIND, _build)
