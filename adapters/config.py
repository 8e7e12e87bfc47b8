"""Typed config of each provider kind; one entry per provider under `providers:`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(Strict):
    """A secret given by reference: `env:NAME` (a variable) or `file:PATH` (a mounted
    Secret's file; surrounding whitespace is dropped). Read at start, never logged."""

    ref: str

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: object) -> object:
        if isinstance(value, str):
            return {"ref": value}
        return value

    @field_validator("ref")
    @classmethod
    def _must_be_reference(cls, ref: str) -> str:
        scheme, _, name = ref.partition(":")
        if scheme not in ("env", "file") or not name:
            raise ValueError(
                "secrets are given by reference, as 'env:NAME' or 'file:PATH', never inline"
            )
        return ref

    @property
    def env_name(self) -> str:
        return self.ref.partition(":")[2]

    def resolve(self) -> str:
        """The secret's value; raises KeyError naming the variable or file when it is unset,
        unreadable or empty."""
        scheme, _, name = self.ref.partition(":")
        if scheme == "file":
            try:
                value = Path(name).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise KeyError(f"secret file {name} cannot be read: {exc}") from None
            if not value:
                raise KeyError(f"secret file {name} is empty")
            return value
        from_env = os.environ.get(name)
        if not from_env:
            raise KeyError(f"environment variable {name} is not set")
        return from_env

    def __repr__(self) -> str:
        return f"SecretRef({self.ref!r})"


class HttpTimeouts(Strict):
    """Seconds. `first_byte` bounds the wait for response headers / first stream bytes."""

    connect: float = Field(5.0, gt=0)
    read: float = Field(60.0, gt=0)
    first_byte: float = Field(30.0, gt=0)
    pool: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> HttpTimeouts:
        if self.first_byte > self.read:
            raise ValueError("first_byte must not exceed read")
        return self


class ServerTLS(Strict):
    """TLS of a gRPC server: its certificate chain and private key (PEM files). With
    `client_ca`, mutual TLS: a client must present a certificate that CA signed."""

    cert: Path
    key: Path
    client_ca: Path | None = None


class ClientTLS(Strict):
    """TLS of a channel: `ca` verifies the server's certificate; `cert` and `key` (both or
    neither) are the client's own, for a server that requires mutual TLS."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    # The name checked against the server's certificate when it differs from the address.
    server_name: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> ClientTLS:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: give both or neither")
        return self


class AdapterServiceSettings(Strict):
    """How `imesh adapter` lets routers in: every call must carry one of `tokens` (several
    while a token is rotated); `tls` encrypts the hop and, with a client CA, checks the
    router's certificate too."""

    tokens: list[SecretRef] = Field(min_length=1)
    tls: ServerTLS | None = None


class SimulatedConfig(Strict):
    """A deterministic fake provider for demos, benchmarks and chaos drills."""

    kind: Literal["simulated"]
    ttft_ms: float = Field(50.0, ge=0)
    tokens_per_second: float = Field(200.0, gt=0)
    # Probability, per call, of failing before the first token.
    error_rate: float = Field(0.0, ge=0, le=1)
    error_kind: Literal["unavailable", "rate_limited", "internal"] = "unavailable"
    retry_after_s: float = Field(1.0, ge=0)
    # Stall forever (until cancelled) after this many tokens; None means never.
    stall_after_tokens: int | None = Field(None, ge=0)
    # Cut the stream with UNAVAILABLE after this many tokens; None means never.
    cut_after_tokens: int | None = Field(None, ge=0)
    # Completion length when max_tokens does not bound it.
    completion_tokens: int = Field(64, ge=1)
    seed: int = 0


class RemoteConfig(Strict):
    """An adapter served by `imesh adapter NAME --listen ADDR`, reached over gRPC."""

    kind: Literal["remote"]
    address: str
    # Channels to spread calls over (PERF-NOTES: bound concurrency per channel).
    channels: int = Field(2, ge=1, le=64)
    # The service token the adapter requires (adapter_service.tokens on its side).
    token: SecretRef
    # None: plaintext (loopback, or a network that encrypts for you).
    tls: ClientTLS | None = None


class HttpProviderConfig(Strict):
    """What every HTTP provider kind shares: where it is, how its connections are pooled,
    bounded in time and routed. Each kind subclasses it (and may change the defaults)."""

    base_url: str
    # tiktoken encoding for local counts when the provider reports no usage.
    tokenizer: str = "o200k_base"
    # HTTP/2 multiplexes calls over a few connections; HTTP/1.1 uses one per call.
    http2: bool = False
    timeouts: HttpTimeouts = HttpTimeouts()
    # Calls in flight at once; more wait up to `timeouts.pool`, then fail OVERLOADED.
    max_connections: int = Field(100, ge=1)
    # "env": HTTPS_PROXY / HTTP_PROXY / NO_PROXY decide; "direct": never a proxy; or a URL.
    proxy: str = "env"

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, proxy: str) -> str:
        if proxy in ("env", "direct") or proxy.startswith(("http://", "https://")):
            return proxy
        raise ValueError("proxy is 'env', 'direct' or an http:// or https:// URL")


class OpenAIConfig(HttpProviderConfig):
    kind: Literal["openai"]
    base_url: str = "https://api.openai.com/v1"
    api_key: SecretRef
    organization: str | None = None
    # False: call without `stream: true` and turn the whole answer into events.
    streaming: bool = True
    http2: bool = True


class AnthropicConfig(HttpProviderConfig):
    kind: Literal["anthropic"]
    base_url: str = "https://api.anthropic.com"
    api_key: SecretRef
    api_version: str = "2023-06-01"
    # Anthropic requires max_tokens; used when the caller sets none.
    default_max_tokens: int = Field(4096, ge=1)
    # Claude's tokenizer is not public: local estimates (cut streams only) use this one.
    tokenizer: str = "cl100k_base"
    http2: bool = True


class OpenAICompatibleConfig(HttpProviderConfig):
    """Any base URL speaking the OpenAI chat API (vLLM, Ollama, Together, Groq...)."""

    kind: Literal["openai_compatible"]
    api_key: SecretRef | None = None
    # Quirks of the server.
    supports_stream_options: bool = True
    supports_tools: bool = True
    # Many servers reject the "developer" role; it is then sent as "system".
    supports_developer_role: bool = False
    # False: call without `stream: true` (servers or proxies that buffer streams).
    streaming: bool = True
    # The request field bounding completion length.
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"


ProviderConfig = Annotated[
    SimulatedConfig | RemoteConfig | OpenAIConfig | AnthropicConfig | OpenAICompatibleConfig,
    Field(discriminator="kind"),
]
