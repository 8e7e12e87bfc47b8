"""The mesh's typed config: providers, deployments, aliases, router limits. Loaded once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from adapters.config import AdapterServiceSettings, ProviderConfig, ServerTLS
from adapters.pool_config import PoolServiceConfig, VllmPoolConfig
from gateway.settings import GatewaySettings, ListenAddress
from router.tenancy.config import TenancySettings

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


# Every provider kind: the adapters' own and the GPU pool's.
MeshProvider = Annotated[ProviderConfig | VllmPoolConfig, Field(discriminator="kind")]


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


class AdmissionConfig(Strict):
    """What the router accepts at once; excess is refused at once (OVERLOADED with a
    RetryInfo of `retry_after_s`), never queued."""

    # Requests in flight on this router (a stream counts until its end).
    max_in_flight: int = Field(1000, ge=1)
    # Attempts in flight per deployment (hedges count), for the deployments named here.
    per_deployment: dict[str, Annotated[int, Field(ge=1)]] = {}
    retry_after_s: float = Field(1.0, gt=0)


class RouterSettings(Strict):
    listen: ListenAddress = "127.0.0.1:50051"
    timeouts: Timeouts = Timeouts()
    breaker: BreakerConfig = BreakerConfig()
    # Seconds SIGTERM waits for in-flight streams before cancelling them.
    drain_s: float = Field(10, ge=0)
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    admission: AdmissionConfig = AdmissionConfig()
    # When non-empty, only callers whose key hashes to one of these are admitted. Entries
    # are "sha256:HEX" of the key (keys are never stored in clear; compared in constant
    # time). Empty: any key is accepted (tenancy proper comes later).
    api_key_hashes: list[Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]] = []
    # TLS for callers (mutual TLS with `client_ca`); None: plaintext, for a router that
    # listens on loopback beside its caller.
    tls: ServerTLS | None = None


class MetricsSettings(Strict):
    """Prometheus metrics of a service process (IMESH_METRICS=0 turns them off)."""

    # Serve GET /metrics here ("host:port"): every figure of the process, per-tenant ones
    # included. None: not served (the edge's public /metrics has only the edge's figures).
    listen: str | None = None
    # Per-tenant series multiply with the tenants; large deployments turn the label off.
    tenant_label: bool = True


class MeshConfig(Strict):
    providers: dict[str, MeshProvider]
    deployments: list[Deployment] = Field(min_length=1)
    aliases: dict[str, Alias] = {}
    router: RouterSettings = RouterSettings()
    gateway: GatewaySettings = GatewaySettings()
    metrics: MetricsSettings = MetricsSettings()
    # Read by `imesh adapter`, which refuses to start without it.
    adapter_service: AdapterServiceSettings | None = None
    # Tenants, keys, limits and usage (router/tenancy); None: no tenancy.
    tenancy: TenancySettings | None = None
    # The GPU pool's registry served by `imesh up` / `imesh router` in their own process
    # (membership in memory unless it names a Redis); None: pools run `imesh pool serve`.
    pool_service: PoolServiceConfig | None = None

    @model_validator(mode="after")
    def _references_resolve(self) -> MeshConfig:
        problems = reference_problems(
            self.providers,
            [(d.name, d.provider) for d in self.deployments],
            {alias: spec.candidates for alias, spec in self.aliases.items()},
        )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _admission_names_resolve(self) -> MeshConfig:
        names = {d.name for d in self.deployments}
        unknown = sorted(set(self.router.admission.per_deployment) - names)
        if unknown:
            raise ValueError(
                "router.admission.per_deployment: unknown deployments " + ", ".join(unknown)
            )
        return self


def reference_problems(
    providers: Iterable[str],
    deployments: list[tuple[str, str]],
    aliases: Mapping[str, Iterable[str]],
) -> list[str]:
    """Every name that does not resolve, one "where: why" line each (all of them, so one
    run of a bad file names every problem)."""
    problems: list[str] = []
    known_providers = set(providers)
    seen: set[str] = set()
    for i, (name, provider) in enumerate(deployments):
        if name in seen:
            problems.append(f"deployments[{i}].name: duplicate deployment {name!r}")
        seen.add(name)
        if provider not in known_providers:
            problems.append(
                f"deployments[{i}].provider: unknown provider {provider!r} "
                f"(known: {', '.join(sorted(known_providers))})"
            )
    for alias, candidates in aliases.items():
        if alias in seen:
            problems.append(f"aliases.{alias}: alias shadows a deployment of that name")
        for j, c in enumerate(candidates):
            if c not in seen:
                problems.append(f"aliases.{alias}.candidates[{j}]: unknown deployment {c!r}")
    return problems


def _raw_reference_problems(data: object) -> list[str]:
    """reference_problems over a file that failed validation elsewhere: entries of the
    wrong shape are skipped (the schema's errors already name them)."""
    if not isinstance(data, dict):
        return []
    providers = data.get("providers")
    deployments = data.get("deployments")
    aliases = data.get("aliases")
    pairs = [
        (str(d.get("name")), str(d.get("provider")))
        for d in (deployments if isinstance(deployments, list) else [])
        if isinstance(d, dict)
    ]
    candidates = {
        str(alias): [str(c) for c in spec["candidates"]]
        for alias, spec in (aliases.items() if isinstance(aliases, dict) else [])
        if isinstance(spec, dict) and isinstance(spec.get("candidates"), list)
    }
    return reference_problems(providers if isinstance(providers, dict) else (), pairs, candidates)


class ConfigError(Exception):
    """The config file cannot be used; the message names the key and the reason."""


def parse_config(data: object, source: str = "<config>") -> MeshConfig:
    """The validated config; ConfigError naming every bad key and every unresolved name."""
    try:
        return MeshConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid config {source}:\n" + _describe(exc, data)) from None


def _describe(exc: ValidationError, data: Any) -> str:
    lines: list[str] = []
    cross_checked = False
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        cross_checked = cross_checked or not loc
        lines.extend(f"  {loc}: {m}" if loc else f"  {m}" for m in msg.splitlines())
    if not cross_checked:
        # Field errors stop pydantic before the cross-field check; run it on the raw file
        # so a bad price and a bad alias candidate are both reported in one go.
        lines.extend(f"  {p}" for p in _raw_reference_problems(data))
    return "\n".join(lines)


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
