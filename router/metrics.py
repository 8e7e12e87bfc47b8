"""Router metrics for Prometheus: RED, resilience and runtime figures, as a record sink.

Counters and histograms move once per finished attempt (`record_attempt`) and once per
finished request (`record_request`), never per token, as plain numbers turned into metric
families only when Prometheus scrapes. Live state (breaker states and transitions,
attempts in flight, tenancy, pools) is read at the scrape, so it costs the request path
nothing.

Labels stay bounded: a model label is a configured alias or deployment (anything else,
say a caller's typo, is "unknown"), a deployment label a configured deployment, a reason a
`Reason` member; tenants come from the tenancy config and the label can be turned off
(`tenant_label=False`) where there are many. Request ids never become labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from gateway.loop_histogram import LoopHistogram
from imesh.errors import Reason, classify
from router.breaker import BreakerState, CircuitBreaker
from router.recorder import AttemptKind, AttemptRecord, RequestOutcome, RequestRecord
from router.stats import StatsRegistry

if TYPE_CHECKING:
    from router.tenancy.admission import TenantAdmitter
    from router.tenancy.fallback import FallbackLimiter

UNKNOWN = "unknown"
NONE = "none"
MICROS_PER_DOLLAR = 1_000_000

# Seconds. A request spans a cache hit to a long generation; TTFT and per-token times are
# finer; the router's own overhead is meant to stay under a millisecond.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

_RATE_LIMIT_REASONS = frozenset(
    {Reason.RATE_LIMITED, Reason.QUOTA_EXCEEDED, Reason.BUDGET_EXCEEDED}
)
_SHED_REASONS = frozenset({Reason.OVERLOADED})


# Duration, time to first token and time per output token of one (model, deployment).
_Answered = tuple[LoopHistogram, LoopHistogram, LoopHistogram]


def _add(counts: dict[tuple[str, ...], float], key: tuple[str, ...], amount: float = 1) -> None:
    counts[key] = counts.get(key, 0) + amount


class RouterMetrics(Collector):
    """A RecordSink that keeps the router's Prometheus metrics.

    Lifecycle: build once per router with the registry of the process and the names the
    config defines (it registers itself); hand it to the router as a sink; call `watch()`
    with the router's breakers and stats (and `watch_tenancy()`) to expose their live
    state at scrape time.

    A record costs a few dictionary updates: the figures are plain numbers rendered into
    metric families only when Prometheus scrapes. That needs no lock because the records
    and the scrape run on the same event loop (`/metrics` is served there).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        models: Iterable[str],
        deployments: Iterable[str],
        tenant_label: bool = True,
    ) -> None:
        self.registry = registry
        self._deployments = frozenset(deployments)
        self._models = frozenset(models) | self._deployments
        self._tenant_label = tenant_label
        self._tenant: tuple[str, ...] = ("tenant",) if tenant_label else ()
        # Counters by label values, in each family's label order.
        self._requests: dict[tuple[str, ...], float] = {}
        self._errors: dict[tuple[str, ...], float] = {}
        self._tokens: dict[tuple[str, ...], float] = {}
        self._cost: dict[tuple[str, ...], float] = {}
        self._attempts: dict[tuple[str, ...], float] = {}
        self._retries: dict[tuple[str, ...], float] = {}
        self._fallbacks: dict[tuple[str, ...], float] = {}
        self._hedges: dict[tuple[str, ...], float] = {}
        self._shed: dict[tuple[str, ...], float] = {}
        self._limited: dict[tuple[str, ...], float] = {}
        # Histograms by (model, deployment) of answered requests; overhead of every request.
        self._answered: dict[
            tuple[str, str], tuple[LoopHistogram, LoopHistogram, LoopHistogram]
        ] = {}
        self._overhead = LoopHistogram(OVERHEAD_BUCKETS)
        registry.register(self)

    # -- the sink --------------------------------------------------------------------

    def record_attempt(self, record: AttemptRecord) -> None:
        # Hot path (once per attempt): label values are read as plain attributes
        # (`_value_`, not the `value` descriptor) and counts bumped inline.
        model = record.model
        if model not in self._models:
            model = UNKNOWN
        deployment = record.deployment
        if deployment not in self._deployments:
            deployment = UNKNOWN
        kind = record.kind
        key: tuple[str, ...] = (deployment, kind._value_, record.outcome._value_)
        counts = self._attempts
        counts[key] = counts.get(key, 0) + 1
        usage = record.usage
        prompt, completion, cached = (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens,
        )
        cost = usage.cost_micros
        if prompt or completion or cached or cost:
            if self._tenant_label:
                spent: tuple[str, ...] = (model, deployment, record.caller.tenant or NONE)
            else:
                spent = (model, deployment)
            if prompt:
                _add(self._tokens, (*spent, "input"), prompt)
            if completion:
                _add(self._tokens, (*spent, "output"), completion)
            if cached:
                _add(self._tokens, (*spent, "cached"), cached)
            if cost:
                _add(self._cost, spent, cost / MICROS_PER_DOLLAR)
        if kind is AttemptKind.PRIMARY:
            return
        if kind is AttemptKind.RETRY:
            _add(self._retries, (model, deployment))
        elif kind is AttemptKind.FALLBACK:
            _add(self._fallbacks, (model, deployment))
        elif kind is AttemptKind.HEDGE:
            _add(self._hedges, (model, deployment, "launched"))
            if record.won:
                _add(self._hedges, (model, deployment, "won"))

    def record_request(self, record: RequestRecord) -> None:
        model = record.model
        if model not in self._models:
            model = UNKNOWN
        deployment = record.deployment
        if deployment is None:
            deployment = NONE
        elif deployment not in self._deployments:
            deployment = UNKNOWN
        tenant: tuple[str, ...] = (record.caller.tenant or NONE,) if self._tenant_label else ()
        outcome = record.outcome
        key = (model, deployment, *tenant, outcome._value_)
        counts = self._requests
        counts[key] = counts.get(key, 0) + 1
        reason = record.reason
        if reason is not None and outcome is RequestOutcome.FAILURE:
            fault = classify(record.error).fault.value if record.error is not None else "mesh"
            _add(self._errors, (model, reason.value, fault))
            if reason in _RATE_LIMIT_REASONS:
                _add(self._limited, (*tenant, reason.value))
            elif reason in _SHED_REASONS:
                _add(self._shed, (*tenant, reason.value))
        self._overhead.observe(record.overhead_s)
        if record.deployment is None:
            return  # refused or failed before any answer: no latency of an answer to keep
        answered = self._answered.get((model, deployment))
        if answered is None:
            answered = self._answered[(model, deployment)] = (
                LoopHistogram(DURATION_BUCKETS),
                LoopHistogram(TTFT_BUCKETS),
                LoopHistogram(TPOT_BUCKETS),
            )
        duration, ttft_hist, tpot = answered
        duration.observe(record.latency_s)
        ttft = record.ttft_s
        if ttft is not None:
            ttft_hist.observe(ttft)
            tokens = record.usage.completion_tokens
            if outcome is RequestOutcome.SUCCESS and tokens > 1:
                tpot.observe((record.latency_s - ttft) / (tokens - 1))

    # -- the scrape ------------------------------------------------------------------

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        tenant = self._tenant
        for name, doc, labels, counts in (
            (
                "imesh_requests",
                "Finished requests by outcome (success, failure, cancelled); deployment is "
                "the one that answered ('none' when no attempt did).",
                ("model", "deployment", *tenant, "outcome"),
                self._requests,
            ),
            (
                "imesh_request_errors",
                "Failed requests by the reason the caller was given and whose fault it was "
                "(caller, mesh, upstream).",
                ("model", "reason", "fault"),
                self._errors,
            ),
            (
                "imesh_tokens",
                "Tokens spent by every attempt (hedge losers and failed streams included).",
                ("model", "deployment", *tenant, "kind"),
                self._tokens,
            ),
            (
                "imesh_cost_dollars",
                "What every attempt cost, in US dollars.",
                ("model", "deployment", *tenant),
                self._cost,
            ),
            (
                "imesh_attempts",
                "Finished attempts by kind (primary, retry, fallback, hedge) and outcome.",
                ("deployment", "kind", "outcome"),
                self._attempts,
            ),
            (
                "imesh_retries",
                "Attempts again on a deployment the request had already tried.",
                ("model", "deployment"),
                self._retries,
            ),
            (
                "imesh_fallbacks",
                "Attempts after a failure on a deployment the request had not tried yet.",
                ("model", "deployment"),
                self._fallbacks,
            ),
            (
                "imesh_hedges",
                "Hedged attempts launched, and those whose answer the caller got (won).",
                ("model", "deployment", "result"),
                self._hedges,
            ),
            (
                "imesh_load_shed",
                "Requests refused by admission control because the router was at its limit.",
                (*tenant, "reason"),
                self._shed,
            ),
            (
                "imesh_rate_limit_rejections",
                "Requests refused by a tenant's rate limit, token quota or budget.",
                (*tenant, "reason"),
                self._limited,
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=labels)
            for key, value in counts.items():
                family.add_metric(key, value)
            yield family
        answered = ("model", "deployment")
        for index, (name, doc) in enumerate(
            (
                (
                    "imesh_request_duration_seconds",
                    "Time from a request's admission to its last event.",
                ),
                (
                    "imesh_time_to_first_token_seconds",
                    "Time from a request's admission to its first output reaching the caller.",
                ),
                (
                    "imesh_time_per_output_token_seconds",
                    "Mean time between output tokens after the first, per successful request.",
                ),
            )
        ):
            latencies = HistogramMetricFamily(name, doc, labels=answered)
            for key, histograms in self._answered.items():
                histogram = histograms[index]
                latencies.add_metric(key, histogram.cumulative(), histogram.total)
            yield latencies
        overhead = HistogramMetricFamily(
            "imesh_router_overhead_seconds",
            "Time a request spent in the mesh with no upstream call running and no backoff.",
        )
        overhead.add_metric((), self._overhead.cumulative(), self._overhead.total)
        yield overhead

    # -- outside the record path -----------------------------------------------------

    def watch(
        self,
        breakers: Mapping[str, CircuitBreaker],
        stats: StatsRegistry,
        requests_in_flight: Callable[[], int] | None = None,
    ) -> None:
        """Expose the breakers' states and transitions, the attempts in flight per
        deployment and the requests in flight on the router (what an autoscaler of routers
        follows), read at scrape time."""
        self.registry.register(_LiveState(breakers, stats, requests_in_flight))

    def watch_tenancy(self, limiter: FallbackLimiter, admitter: TenantAdmitter) -> None:
        """Expose Redis health as tenancy met it and each tenant's remaining share of its
        limits after its latest admission, read at scrape time."""
        self.registry.register(_TenancyState(limiter, admitter, tenant_label=self._tenant_label))


_STATES: tuple[BreakerState, ...] = tuple(BreakerState)


class _LiveState(Collector):
    """Scrape-time view of the router's breakers and in-flight attempts."""

    def __init__(
        self,
        breakers: Mapping[str, CircuitBreaker],
        stats: StatsRegistry,
        requests_in_flight: Callable[[], int] | None,
    ) -> None:
        self._breakers = breakers
        self._stats = stats
        self._requests_in_flight = requests_in_flight

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = GaugeMetricFamily(
            "imesh_breaker_state",
            "1 for the state each deployment's circuit breaker is in, 0 for the others.",
            labels=("deployment", "state"),
        )
        transitions = CounterMetricFamily(
            "imesh_breaker_transitions",
            "Circuit breaker state changes, by deployment and the states left and entered.",
            labels=("deployment", "from", "to"),
        )
        in_flight = GaugeMetricFamily(
            "imesh_in_flight_streams",
            "Attempts running now against each deployment (hedges included).",
            labels=("deployment",),
        )
        for name, breaker in self._breakers.items():
            current = breaker.state
            for candidate in _STATES:
                state.add_metric((name, candidate.value), 1.0 if candidate is current else 0.0)
            for (left, entered), count in breaker.transitions.items():
                transitions.add_metric((name, left.value, entered.value), count)
            if name in self._stats:
                in_flight.add_metric((name,), self._stats[name].in_flight)
        yield state
        yield transitions
        yield in_flight
        if self._requests_in_flight is not None:
            yield GaugeMetricFamily(
                "imesh_router_in_flight_requests",
                "Requests the router holds now, from admission to their last event.",
                value=self._requests_in_flight(),
            )


class _TenancyState(Collector):
    """Scrape-time view of tenancy: whether Redis answers, how often it did not, and how
    close each tenant is to its limits (the share remaining after its latest admission;
    with the tenant label off, the lowest share of any tenant)."""

    def __init__(
        self, limiter: FallbackLimiter, admitter: TenantAdmitter, *, tenant_label: bool
    ) -> None:
        self._limiter = limiter
        self._admitter = admitter
        self._tenant_label = tenant_label

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        limiter = self._limiter
        yield GaugeMetricFamily(
            "imesh_redis_up",
            "1 while tenancy's shared Redis answers, 0 while the router serves on local limits.",
            value=0.0 if limiter.shared_down else 1.0,
        )
        yield CounterMetricFamily(
            "imesh_redis_errors",
            "Times tenancy found Redis unreachable and fell back to local limits.",
            value=limiter.outages,
        )
        yield CounterMetricFamily(
            "imesh_redis_fallback_admissions",
            "Requests admitted on this router's local limits while Redis was unreachable.",
            value=limiter.fallback_admissions,
        )
        labels = ("tenant", "limit") if self._tenant_label else ("limit",)
        remaining = GaugeMetricFamily(
            "imesh_tenant_limit_remaining_ratio",
            "Share of a tenant's request or token limit left after its latest admission.",
            labels=labels,
        )
        lowest: dict[str, float] = {}
        for tenant, figures in self._admitter.standing.items():
            for limit, total, left in (
                ("requests", figures.limit_requests, figures.remaining_requests),
                ("tokens", figures.limit_tokens, figures.remaining_tokens),
            ):
                if not total:
                    continue
                ratio = max(left or 0, 0) / total
                if self._tenant_label:
                    remaining.add_metric((tenant, limit), ratio)
                else:
                    lowest[limit] = min(ratio, lowest.get(limit, 1.0))
        for limit, ratio in lowest.items():
            remaining.add_metric((limit,), ratio)
        yield remaining
