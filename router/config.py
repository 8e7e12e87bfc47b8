"""The mesh's typed config: providers, deployments, aliases, router limits. Loaded once."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapters.config import AdapterServiceSettings, ProviderConfig, ServerTLS

Capability = Literal["tools", "vision", "json_schema", "streaming"]
PolicyName = Literal[
    "priority",
    "weighted_round_robin",
    "least_in_flight",
    "lowest_cost",
    "lowest_latency",
    "power_of_two",
]
MICROS_PER_USD = 1_000_000


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(Strict):
    """USD per million tokens in the file; integer micro-dollars per million in memory."""

    input: Decimal = Field(Decimal(0), ge=0)
    output: Decimal = Field(Decimal(0), ge=0)
    cached_input: Decimal | None = Field(None, ge=0)

    @property
    def input_micros(self) -> int:
        return int(self.input * MICROS_PER_USD)

    @property
    def output_micros(self) -> int:
        return int(self.output * MICROS_PER_USD)

    @property
    def cached_input_micros(self) -> int:
        return int(
            (self.cached_input if self.cached_input is not None else self.input) * MICROS_PER_USD
        )


class Deployment(Strict):
    """One model on one provider: the unit the router picks, breaks and measures."""

    name: str = Field(min_length=1)
    provider: str = Field(min_length=1)
    model: str = Field(min_length=1, description="the provider's model id")
    context_window: int = Field(8192, ge=1)
    max_output_tokens: int = Field(4096, ge=1)
    capabilities: frozenset[Capability] = frozenset({"streaming"})
    price: Price = Price()
    weight: int = Field(1, ge=0)
    # Fixed hedge delay for this deployment; None uses its observed p95 time to first token.
    hedge_delay_ms: float | None = Field(None, gt=0)


class RetryConfig(Strict):
    """Exponential backoff with full jitter, only before the first token."""

    max_attempts: int = Field(3, ge=1, le=10)
    backoff_base_ms: float = Field(50, ge=0)
    backoff_max_ms: float = Field(2000, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> RetryConfig:
        if self.backoff_max_ms < self.backoff_base_ms:
            raise ValueError("backoff_max_ms must be >= backoff_base_ms")
        return self


class HedgeConfig(Strict):
    enabled: bool = False
    # Fixed delay; None uses the first candidate's observed p95 time to first token.
    delay_ms: float | None = Field(None, gt=0)
    # Used while a deployment has too few samples for a p95.
    default_delay_ms: float = Field(500, gt=0)
    max_hedges: int = Field(1, ge=0, le=4)


class Alias(Strict):
    candidates: list[str] = Field(min_length=1)
    policy: PolicyName = "priority"
    hedging: HedgeConfig = HedgeConfig()
    retry: RetryConfig = RetryConfig()


class BreakerConfig(Strict):
    consecutive_failures: int = Field(5, ge=1)
    failure_rate: float = Field(0.5, gt=0, le=1)
    window_s: float = Field(30, gt=0)
    min_requests: int = Field(10, ge=1)
    open_s: float = Field(10, gt=0)
    half_open_probes: int = Field(1, ge=1)


class Timeouts(Strict):
    """Seconds. The caller's deadline, when shorter, bounds all of these."""

    request: float = Field(300, gt=0)
    attempt: float = Field(120, gt=0)
    first_token: float = Field(30, gt=0)

    @model_validator(mode="after")
    def _nested(self) -> Timeouts:
        if self.first_token > self.attempt:
            raise ValueError("first_token must not exceed attempt")
        if self.attempt > self.request:
            raise ValueError("attempt must not exceed request")
        return self


class RouterSettings(Strict):
    listen: str = "127.0.0.1:50051"
    timeouts: Timeouts = Timeouts()
    breaker: BreakerConfig = BreakerConfig()
    # Seconds SIGTERM waits for in-flight streams before cancelling them.
    drain_s: float = Field(10, ge=0)
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # Coalesce deltas produced within this window into one stream message (first is never held).
    coalesce_ms: float = Field(2, ge=0)
    # When non-empty, only callers whose key hashes to one of these are admitted. Entries
    # are "sha256:HEX" of the key (keys are never stored in clear; compared in constant
    # time). Empty: any key is accepted (tenancy proper comes later).
    api_key_hashes: list[Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]] = []
    # TLS for callers (mutual TLS with `client_ca`); None: plaintext, for a router that
    # listens on loopback beside its caller.
    tls: ServerTLS | None = None


class GatewaySettings(Strict):
    listen: str = "127.0.0.1:8080"
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)


class MeshConfig(Strict):
    providers: dict[str, ProviderConfig]
    deployments: list[Deployment] = Field(min_length=1)
    aliases: dict[str, Alias] = {}
    router: RouterSettings = RouterSettings()
    gateway: GatewaySettings = GatewaySettings()
    # Read by `imesh adapter`, which refuses to start without it.
    adapter_service: AdapterServiceSettings | None = None

    @model_validator(mode="after")
    def _references_resolve(self) -> MeshConfig:
        names = [d.name for d in self.deployments]
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name in seen:
                raise ValueError(f"deployments[{i}].name: duplicate deployment {name!r}")
            seen.add(name)
        for i, d in enumerate(self.deployments):
            if d.provider not in self.providers:
                raise ValueError(
                    f"deployments[{i}].provider: unknown provider {d.provider!r} "
                    f"(known: {', '.join(sorted(self.providers))})"
                )
        for alias, spec in self.aliases.items():
            if alias in seen:
                raise ValueError(f"aliases.{alias}: alias shadows a deployment of that name")
            for j, c in enumerate(spec.candidates):
                if c not in seen:
                    raise ValueError(f"aliases.{alias}.candidates[{j}]: unknown deployment {c!r}")
        return self

    def deployment(self, name: str) -> Deployment:
        for d in self.deployments:
            if d.name == name:
                return d
        raise KeyError(name)


class ConfigError(Exception):
    """The config file cannot be used; the message names the key and the reason."""


def parse_config(data: object, source: str = "<config>") -> MeshConfig:
    try:
        return MeshConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")
        raise ConfigError(f"invalid config {source}:\n" + "\n".join(lines)) from None


def load_config(path: str | Path) -> MeshConfig:
    """Read and validate a YAML config file; raises ConfigError with every bad key named."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    return parse_config(data, str(path))
