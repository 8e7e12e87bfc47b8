"""The registry builds a Backend by the provider config's `kind`."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from adapters import registry
from adapters.config import SimulatedConfig
from adapters.simulated import SimulatedBackend
from tests.reliability.mesh_fakes import ScriptedBackend


def test_built_in_kinds_build_their_backend() -> None:
    backend = registry.build_backend(SimulatedConfig(kind="simulated"))
    assert isinstance(backend, SimulatedBackend)


@dataclass(frozen=True)
class _PoolConfig:
    kind: str = "test_pool_kind"


def test_a_kind_from_outside_adapters_registers_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_registered", {})
    registry.register("test_pool_kind", lambda config: ScriptedBackend())
    assert "test_pool_kind" in registry.kinds()
    assert isinstance(registry.build_backend(_PoolConfig()), ScriptedBackend)
    with pytest.raises(ValueError, match="registered already"):
        registry.register("test_pool_kind", lambda config: ScriptedBackend())


def test_an_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="simulated"):
        registry.build_backend(_PoolConfig(kind="nope"))


def test_a_missing_secret_names_the_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    from adapters.config import OpenAIConfig

    monkeypatch.delenv("IMESH_TEST_ABSENT_KEY", raising=False)
    config = OpenAIConfig(kind="openai", api_key="env:IMESH_TEST_ABSENT_KEY")
    with pytest.raises(ValueError, match=r"providers\.main: .*IMESH_TEST_ABSENT_KEY"):
        registry.build_backends({"main": config})
