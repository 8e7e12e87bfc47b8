"""Builds the Backend for a provider config entry; the only place that dispatches on kind."""

from __future__ import annotations

from adapters.backend import Backend
from adapters.config import (
    AnthropicConfig,
    OpenAICompatibleConfig,
    OpenAIConfig,
    ProviderConfig,
    RemoteConfig,
    SimulatedConfig,
)


def build_backend(config: ProviderConfig) -> Backend:
    """A ready Backend for one provider entry. Resolves secrets now, so a missing
    `env:NAME` fails at start, naming the variable (never its value)."""
    # Imports are local so a deployment of one kind never loads another kind's code.
    if isinstance(config, SimulatedConfig):
        from adapters.simulated import SimulatedBackend

        return SimulatedBackend(config)
    if isinstance(config, RemoteConfig):
        from adapters.remote import RemoteBackend

        return RemoteBackend(config)
    if isinstance(config, OpenAIConfig):
        from adapters.openai_chat import OpenAIChatBackend

        return OpenAIChatBackend(config)
    if isinstance(config, AnthropicConfig):
        from adapters.anthropic_messages import AnthropicMessagesBackend

        return AnthropicMessagesBackend(config)
    if isinstance(config, OpenAICompatibleConfig):
        from adapters.openai_compatible import OpenAICompatibleBackend

        return OpenAICompatibleBackend(config)
    raise TypeError(f"no backend for provider kind {type(config).__name__}")


def build_backends(providers: dict[str, ProviderConfig]) -> dict[str, Backend]:
    """One Backend per provider entry, keyed by the provider's name."""
    backends: dict[str, Backend] = {}
    for name, config in providers.items():
        try:
            backends[name] = build_backend(config)
        except KeyError as exc:
            raise ValueError(f"providers.{name}: {exc.args[0]}") from None
    return backends
