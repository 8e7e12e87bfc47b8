"""Provider kinds: each registers how to build its Backend; the mesh builds by `kind`.

A kind's module is imported only when a provider of that kind is built, so a deployment of
one kind never loads another kind's code. A package outside adapters/ (the vLLM pool)
registers its own kind with `register()` at import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from adapters.backend import Backend


class KindConfig(Protocol):
    """A provider config entry: any model with a `kind`."""

    @property
    def kind(self) -> str: ...


Builder = Callable[[Any], Backend]

# kind -> "module:Class" taking the kind's config as its one positional argument.
_BUILT_IN: dict[str, str] = {
    "simulated": "adapters.simulated:SimulatedBackend",
    "remote": "adapters.remote:RemoteBackend",
    "openai": "adapters.openai_chat:OpenAIChatBackend",
    "anthropic": "adapters.anthropic_messages:AnthropicMessagesBackend",
    "openai_compatible": "adapters.openai_compatible:OpenAICompatibleBackend",
}
_registered: dict[str, Builder] = {}


def register(kind: str, build: Builder) -> None:
    """Makes `kind` buildable; `build(config)` returns a ready Backend."""
    if kind in _registered or kind in _BUILT_IN:
        raise ValueError(f"provider kind {kind!r} is registered already")
    _registered[kind] = build


def kinds() -> list[str]:
    return sorted({*_BUILT_IN, *_registered})


def build_backend(config: KindConfig) -> Backend:
    """A ready Backend for one provider entry. Resolves secrets now, so a missing
    `env:NAME` fails at start, naming the variable (never its value)."""
    build = _registered.get(config.kind)
    if build is None:
        target = _BUILT_IN.get(config.kind)
        if target is None:
            raise ValueError(f"no backend for provider kind {config.kind!r} (known: {kinds()})")
        module, _, name = target.partition(":")
        build = getattr(importlib.import_module(module), name)
    return build(config)


def build_backends(providers: Mapping[str, KindConfig]) -> dict[str, Backend]:
    """One Backend per provider entry, keyed by the provider's name."""
    backends: dict[str, Backend] = {}
    for name, config in providers.items():
        try:
            backends[name] = build_backend(config)
        except KeyError as exc:
            raise ValueError(f"providers.{name}: {exc.args[0]}") from None
    return backends
