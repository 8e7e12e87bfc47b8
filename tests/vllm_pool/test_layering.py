"""The mesh config validates a pool entry without the pool's code, and the kind is
registered by the composition root, not by an import's side effect."""

from __future__ import annotations

import subprocess
import sys

import pytest

from adapters import registry
from adapters.pool_config import VllmPoolConfig


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def test_the_mesh_config_never_imports_the_pool() -> None:
    out = _run("import sys, router.config; print('vllm_pool' in sys.modules)")
    assert out == "False"


def test_importing_the_pool_registers_no_kind() -> None:
    out = _run(
        "import vllm_pool.backend; from adapters import registry; "
        "print('vllm_pool' in registry.kinds())"
    )
    assert out == "False"


async def test_register_kind_makes_the_kind_buildable_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vllm_pool import register_kind
    from vllm_pool.backend import PoolBackend

    monkeypatch.setattr(registry, "_registered", {})
    monkeypatch.setenv("LAYERING_POOL_TOKEN", "r" * 16)
    register_kind()
    register_kind()  # a second call changes nothing
    config = VllmPoolConfig(
        kind="vllm_pool", pool="gpu", address="127.0.0.1:1", token="env:LAYERING_POOL_TOKEN"
    )
    backend = registry.build_backend(config)
    assert isinstance(backend, PoolBackend)
    await backend.aclose()
