"""RouterMetrics: exact metric moves per record, bounded labels, scrape-time breaker state."""

from __future__ import annotations

import contextlib

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adapters.registry import build_backends
from imesh.api import CallContext
from imesh.errors import MeshError, Reason
from imesh.v1 import events_pb2
from router.admission import Ticket
from router.breaker import CircuitBreaker
from router.config import BreakerConfig, parse_config
from router.metrics import RouterMetrics
from router.recorder import AttemptKind, AttemptRecord, Outcome, RequestOutcome, RequestRecord
from router.scope import Caller, RequestScope
from router.service import ChatRouter
from router.stats import StatsRegistry
from router.tenancy.tenancy import Tenancy
from tests.reliability.mesh_fakes import (
    DEPLOYMENTS,
    Script,
    ScriptedBackend,
    mesh_config,
    unavailable,
    user_input,
)

ALICE = Caller(key_id="k1", tenant="alice")


def metrics(registry: CollectorRegistry, *, tenant_label: bool = True) -> RouterMetrics:
    return RouterMetrics(
        registry, models=["chat"], deployments=["fast-1", "slow-1"], tenant_label=tenant_label
    )


def attempt(
    deployment: str = "fast-1",
    *,
    kind: AttemptKind = AttemptKind.PRIMARY,
    outcome: Outcome = Outcome.SUCCESS,
    won: bool = True,
    request_id: str = "r1",
    prompt: int = 10,
    completion: int = 20,
    cached: int = 0,
    cost_micros: int = 1500,
    caller: Caller = ALICE,
) -> AttemptRecord:
    return AttemptRecord(
        request_id=request_id,
        caller=caller,
        model="chat",
        deployment=deployment,
        provider="p",
        attempt=1,
        kind=kind,
        outcome=outcome,
        error=None,
        latency_s=0.5,
        ttft_s=0.1,
        usage=events_pb2.Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            cost_micros=cost_micros,
        ),
        produced_output=True,
        won=won,
    )


def request(
    *,
    model: str = "chat",
    deployment: str | None = "fast-1",
    outcome: RequestOutcome = RequestOutcome.SUCCESS,
    error: MeshError | None = None,
    request_id: str = "r1",
    completion: int = 21,
    latency_s: float = 1.1,
    ttft_s: float | None = 0.1,
    caller: Caller = ALICE,
) -> RequestRecord:
    return RequestRecord(
        request_id=request_id,
        caller=caller,
        model=model,
        outcome=outcome,
        reason=None if error is None else error.reason,
        error=error,
        deployment=deployment,
        attempts=1,
        retries=0,
        fallbacks=0,
        hedges=0,
        usage=events_pb2.Usage(prompt_tokens=10, completion_tokens=completion),
        latency_s=latency_s,
        ttft_s=ttft_s,
        overhead_s=0.0004,
    )


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def test_a_successful_request_counts_once_with_its_latencies() -> None:
    registry = CollectorRegistry()
    m = metrics(registry)
    m.record_request(request())
    served = {"model": "chat", "deployment": "fast-1"}
    assert value(registry, "imesh_requests_total", **served, tenant="alice", outcome="success") == 1
    assert value(registry, "imesh_request_duration_seconds_sum", **served) == pytest.approx(1.1)
    assert value(registry, "imesh_time_to_first_token_seconds_sum", **served) == pytest.approx(0.1)
    # 21 tokens: the 20 after the first took the second between first token and end.
    assert value(registry, "imesh_time_per_output_token_seconds_sum", **served) == pytest.approx(
        1.0 / 20
    )
    assert value(registry, "imesh_router_overhead_seconds_sum") == pytest.approx(0.0004)


def test_every_attempt_spends_tokens_and_dollars_on_its_own_deployment() -> None:
    registry = CollectorRegistry()
    m = metrics(registry)
    m.record_attempt(attempt("fast-1", prompt=10, completion=20, cached=4, cost_micros=1500))
    m.record_attempt(
        attempt(
            "slow-1",
            kind=AttemptKind.HEDGE,
            outcome=Outcome.CANCELLED,
            won=False,
            prompt=10,
            completion=3,
            cost_micros=500,
        )
    )
    fast = {"model": "chat", "deployment": "fast-1", "tenant": "alice"}
    slow = {"model": "chat", "deployment": "slow-1", "tenant": "alice"}
    assert value(registry, "imesh_tokens_total", **fast, kind="input") == 10
    assert value(registry, "imesh_tokens_total", **fast, kind="output") == 20
    assert value(registry, "imesh_tokens_total", **fast, kind="cached") == 4
    assert value(registry, "imesh_tokens_total", **slow, kind="output") == 3
    assert value(registry, "imesh_cost_dollars_total", **fast) == pytest.approx(0.0015)
    assert value(registry, "imesh_cost_dollars_total", **slow) == pytest.approx(0.0005)
    hedge = {"model": "chat", "deployment": "slow-1"}
    assert value(registry, "imesh_hedges_total", **hedge, result="launched") == 1
    assert value(registry, "imesh_hedges_total", **hedge, result="won") == 0


def test_hedges_that_win_retries_and_fallbacks_are_counted_by_kind() -> None:
    registry = CollectorRegistry()
    m = metrics(registry)
    m.record_attempt(attempt("fast-1", outcome=Outcome.FAILURE, won=False))
    m.record_attempt(attempt("fast-1", kind=AttemptKind.RETRY, outcome=Outcome.FAILURE, won=False))
    m.record_attempt(attempt("slow-1", kind=AttemptKind.FALLBACK, won=False))
    m.record_attempt(attempt("fast-1", kind=AttemptKind.HEDGE, won=True))
    assert value(registry, "imesh_retries_total", model="chat", deployment="fast-1") == 1
    assert value(registry, "imesh_fallbacks_total", model="chat", deployment="slow-1") == 1
    won = {"model": "chat", "deployment": "fast-1", "result": "won"}
    assert value(registry, "imesh_hedges_total", **won) == 1
    failed = {"deployment": "fast-1", "outcome": "failure"}
    assert value(registry, "imesh_attempts_total", **failed, kind="primary") == 1
    assert value(registry, "imesh_attempts_total", **failed, kind="retry") == 1


def test_refusals_count_as_rate_limit_or_load_shed_by_reason() -> None:
    registry = CollectorRegistry()
    m = metrics(registry)
    for reason in (Reason.QUOTA_EXCEEDED, Reason.RATE_LIMITED, Reason.OVERLOADED):
        m.record_request(
            request(
                deployment=None,
                outcome=RequestOutcome.FAILURE,
                error=MeshError.of(reason, "no", retry_after=1.0),
                ttft_s=None,
            )
        )
    limited = registry.get_sample_value
    assert (
        limited(
            "imesh_rate_limit_rejections_total", {"tenant": "alice", "reason": "QUOTA_EXCEEDED"}
        )
        == 1
    )
    assert (
        limited("imesh_rate_limit_rejections_total", {"tenant": "alice", "reason": "RATE_LIMITED"})
        == 1
    )
    assert limited("imesh_load_shed_total", {"tenant": "alice", "reason": "OVERLOADED"}) == 1
    refused = {"model": "chat", "deployment": "none", "tenant": "alice", "outcome": "failure"}
    assert value(registry, "imesh_requests_total", **refused) == 3
    assert (
        value(
            registry, "imesh_request_errors_total", model="chat", reason="OVERLOADED", fault="mesh"
        )
        == 1
    )
    # Nothing answered: no answer latency is recorded for refusals.
    assert (
        value(registry, "imesh_request_duration_seconds_count", model="chat", deployment="none")
        == 0
    )


def test_an_unknown_model_is_one_label_value_however_many_callers_invent() -> None:
    registry = CollectorRegistry()
    m = metrics(registry)
    for i in range(50):
        m.record_request(
            request(
                model=f"typo-{i}",
                deployment=None,
                outcome=RequestOutcome.FAILURE,
                error=MeshError.of(Reason.MODEL_NOT_FOUND, "no such model"),
            )
        )
    assert (
        value(
            registry,
            "imesh_request_errors_total",
            model="unknown",
            reason="MODEL_NOT_FOUND",
            fault="caller",
        )
        == 50
    )


def test_the_tenant_label_can_be_turned_off() -> None:
    registry = CollectorRegistry()
    m = metrics(registry, tenant_label=False)
    m.record_request(request())
    m.record_attempt(attempt())
    labels = {"model": "chat", "deployment": "fast-1"}
    assert value(registry, "imesh_requests_total", **labels, outcome="success") == 1
    assert value(registry, "imesh_tokens_total", **labels, kind="input") == 10
    assert "tenant=" not in generate_latest(registry).decode()


def test_label_cardinality_stays_bounded_after_1000_distinct_request_ids() -> None:
    registry = CollectorRegistry()
    m = metrics(registry)
    tenants = [Caller(key_id=None, tenant=t) for t in ("alice", "bob")]

    def series() -> int:
        text = generate_latest(registry).decode()
        return sum(len(f.samples) for f in text_string_to_metric_families(text))

    def one(i: int) -> None:
        rid = f"req-{i:05d}"
        caller = tenants[i % 2]
        m.record_attempt(attempt(request_id=rid, caller=caller))
        m.record_request(request(request_id=rid, caller=caller))

    for i in range(10):
        one(i)
    before = series()
    for i in range(10, 1010):
        one(i)
    text = generate_latest(registry).decode()
    assert series() == before
    assert "req-0" not in text


def test_breaker_state_and_transitions_are_read_at_scrape_time() -> None:
    now = [0.0]
    config = BreakerConfig(consecutive_failures=1, open_s=5)
    breakers = {"fast-1": CircuitBreaker(config, lambda: now[0])}
    stats = StatsRegistry()
    stats["fast-1"].begin()
    registry = CollectorRegistry()
    metrics(registry).watch(breakers, stats)

    def state(name: str) -> float:
        return value(registry, "imesh_breaker_state", deployment="fast-1", state=name)

    assert (state("closed"), state("open")) == (1, 0)
    permit = breakers["fast-1"].try_acquire()
    assert permit is not None
    breakers["fast-1"].record_failure(permit)
    assert (state("closed"), state("open")) == (0, 1)
    now[0] = 6.0  # past open_s: the next look finds it half-open
    assert state("half_open") == 1
    moves = {"deployment": "fast-1"}
    assert (
        value(
            registry, "imesh_breaker_transitions_total", **moves, **{"from": "closed", "to": "open"}
        )
        == 1
    )
    assert (
        value(
            registry,
            "imesh_breaker_transitions_total",
            **moves,
            **{"from": "open", "to": "half_open"},
        )
        == 1
    )
    assert value(registry, "imesh_in_flight_streams", deployment="fast-1") == 1


def test_metrics_output_passes_the_prometheus_parser() -> None:
    registry = CollectorRegistry()
    m = metrics(registry)
    m.watch({"fast-1": CircuitBreaker(BreakerConfig())}, StatsRegistry())
    m.record_attempt(attempt())
    m.record_request(request())
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    for name in (
        "imesh_requests",
        "imesh_request_duration_seconds",
        "imesh_time_to_first_token_seconds",
        "imesh_time_per_output_token_seconds",
        "imesh_tokens",
        "imesh_cost_dollars",
        "imesh_breaker_state",
        "imesh_breaker_transitions",
        "imesh_retries",
        "imesh_hedges",
        "imesh_fallbacks",
        "imesh_load_shed",
        "imesh_in_flight_streams",
        "imesh_router_overhead_seconds",
        "imesh_rate_limit_rejections",
    ):
        assert name in families, name
    assert families["imesh_requests"].type == "counter"
    assert families["imesh_request_duration_seconds"].type == "histogram"


# -- the scripted scenario: the real router, a fake backend and admitter at their seams --


class QuotaGate:
    """An admitter that refuses with QUOTA_EXCEEDED while `closed`."""

    def __init__(self) -> None:
        self.closed = False

    async def admit(self, scope: RequestScope) -> Ticket:
        if self.closed:
            raise MeshError.of(Reason.QUOTA_EXCEEDED, "daily tokens used up", retry_after=60)
        return _NoTicket()


class _NoTicket:
    def settle(self, usage: events_pb2.Usage) -> None:
        return None

    def release(self) -> None:
        return None


Sample = tuple[str, frozenset[tuple[str, str]]]


def snapshot(registry: CollectorRegistry) -> dict[Sample, float]:
    """Every counter and gauge sample, and every histogram's count (not its buckets)."""
    out: dict[Sample, float] = {}
    for family in registry.collect():
        for s in family.samples:
            if family.type == "histogram" and not s.name.endswith("_count"):
                continue
            if s.name.endswith("_created"):
                continue
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def delta(before: dict[Sample, float], after: dict[Sample, float]) -> dict[str, float]:
    """What moved, as "name{k=v,...}" -> change."""
    moved: dict[str, float] = {}
    for key in before.keys() | after.keys():
        change = after.get(key, 0.0) - before.get(key, 0.0)
        if change:
            name, labels = key
            moved[name + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels)) + "}"] = change
    return moved


async def test_a_scripted_scenario_moves_the_metrics_exactly() -> None:
    scripts = {
        # dep-a: fails once, then serves the retry; then too slow for the hedge race.
        "dep-a": [Script(fail_at=0, error=unavailable()), Script(), Script(ttft=5.0)],
        "dep-b": [Script(tokens=("fast",))],
        "dep-c": [Script(fail_at=0, error=unavailable())],
    }
    backends = {DEPLOYMENTS[d]: ScriptedBackend(*scripts.get(d, [])) for d in DEPLOYMENTS}
    config = mesh_config(
        {
            "again": {"candidates": ["dep-a"], "retry": {"backoff_base_ms": 0}},
            "down": {"candidates": ["dep-c"], "retry": {"max_attempts": 2, "backoff_base_ms": 0}},
            "race": {
                "candidates": ["dep-a", "dep-b"],
                "hedging": {"enabled": True, "delay_ms": 20},
            },
        },
        {"breaker": {"consecutive_failures": 2}},
    )
    gate = QuotaGate()
    registry = CollectorRegistry()
    m = RouterMetrics(
        registry, models=config.aliases, deployments=[d.name for d in config.deployments]
    )
    router = ChatRouter(config, backends, sinks=[m], admitters=[gate])
    m.watch(router.breakers, router.stats, lambda: router.limiter.in_flight)

    held: list[float | None] = []  # requests in flight, seen while a stream is open

    async def step(model: str) -> dict[str, float]:
        before = snapshot(registry)
        with contextlib.suppress(MeshError):
            async for _ in router.chat_batches(user_input(model), CallContext()):
                held.append(registry.get_sample_value("imesh_router_in_flight_requests"))
        await router.settled()  # a served request is recorded right after its answer
        return delta(before, snapshot(registry))

    try:
        retried = await step("again")
        opened = await step("down")
        hedged = await step("race")
        gate.closed = True
        refused = await step("race")
    finally:
        await router.aclose()

    assert held
    assert set(held) == {1.0}
    assert registry.get_sample_value("imesh_router_in_flight_requests") == 0
    ok = "outcome=success"
    assert retried == {
        "imesh_attempts_total{deployment=dep-a,kind=primary,outcome=failure}": 1,
        "imesh_attempts_total{deployment=dep-a,kind=retry,outcome=success}": 1,
        "imesh_retries_total{deployment=dep-a,model=again}": 1,
        # The failed attempt was sent the prompt: its estimate (8 tokens) is spent too.
        "imesh_tokens_total{deployment=dep-a,kind=input,model=again,tenant=none}": 8 + 10,
        "imesh_tokens_total{deployment=dep-a,kind=output,model=again,tenant=none}": 2,
        # 18 prompt tokens at $1/M and 2 completion tokens at $2/M.
        "imesh_cost_dollars_total{deployment=dep-a,model=again,tenant=none}": pytest.approx(22e-6),
        f"imesh_requests_total{{deployment=dep-a,model=again,{ok},tenant=none}}": 1,
        "imesh_request_duration_seconds_count{deployment=dep-a,model=again}": 1,
        "imesh_time_to_first_token_seconds_count{deployment=dep-a,model=again}": 1,
        "imesh_time_per_output_token_seconds_count{deployment=dep-a,model=again}": 1,
        "imesh_router_overhead_seconds_count{}": 1,
    }
    assert opened == {
        "imesh_attempts_total{deployment=dep-c,kind=primary,outcome=failure}": 1,
        "imesh_attempts_total{deployment=dep-c,kind=retry,outcome=failure}": 1,
        "imesh_retries_total{deployment=dep-c,model=down}": 1,
        "imesh_tokens_total{deployment=dep-c,kind=input,model=down,tenant=none}": 2 * 8,
        "imesh_cost_dollars_total{deployment=dep-c,model=down,tenant=none}": pytest.approx(16e-6),
        "imesh_breaker_state{deployment=dep-c,state=closed}": -1,
        "imesh_breaker_state{deployment=dep-c,state=open}": 1,
        "imesh_breaker_transitions_total{deployment=dep-c,from=closed,to=open}": 1,
        "imesh_requests_total{deployment=none,model=down,outcome=failure,tenant=none}": 1,
        "imesh_request_errors_total{fault=upstream,model=down,reason=ALL_ATTEMPTS_FAILED}": 1,
        "imesh_router_overhead_seconds_count{}": 1,
    }
    # The hedge won; the primary it beat was cancelled, its prompt spent all the same
    # (estimated: 8 tokens).
    assert hedged["imesh_hedges_total{deployment=dep-b,model=race,result=launched}"] == 1
    assert hedged["imesh_hedges_total{deployment=dep-b,model=race,result=won}"] == 1
    assert hedged["imesh_attempts_total{deployment=dep-a,kind=primary,outcome=cancelled}"] == 1
    assert hedged["imesh_attempts_total{deployment=dep-b,kind=hedge,outcome=success}"] == 1
    assert hedged[f"imesh_requests_total{{deployment=dep-b,model=race,{ok},tenant=none}}"] == 1
    assert hedged["imesh_tokens_total{deployment=dep-a,kind=input,model=race,tenant=none}"] == 8
    assert refused == {
        "imesh_rate_limit_rejections_total{reason=QUOTA_EXCEEDED,tenant=none}": 1,
        "imesh_requests_total{deployment=none,model=race,outcome=failure,tenant=none}": 1,
        "imesh_request_errors_total{fault=caller,model=race,reason=QUOTA_EXCEEDED}": 1,
        "imesh_router_overhead_seconds_count{}": 1,
    }


async def test_tenant_headroom_and_redis_health_are_read_at_scrape_time() -> None:
    config = parse_config(
        {
            "providers": {"sim": {"kind": "simulated", "ttft_ms": 1, "tokens_per_second": 5000}},
            "deployments": [{"name": "fast", "provider": "sim", "model": "fast-1"}],
            "tenancy": {"tenants": {"team-a": {"limits": {"requests_per_minute": 4}}}},
        }
    )
    assert config.tenancy is not None
    tenancy = Tenancy.build(config.tenancy, config)
    await tenancy.start()
    registry = CollectorRegistry()
    m = RouterMetrics(registry, models=(), deployments=["fast"])
    m.watch_tenancy(tenancy.limiter, tenancy.admitter)
    router = ChatRouter(
        config,
        build_backends(config.providers),
        sinks=[m],
        authenticator=tenancy.authenticator,
        admitters=[tenancy.admitter],
    )
    try:
        key = (await tenancy.keys.create("team-a")).raw
        for _ in range(3):
            await router.chat(user_input("fast"), CallContext(api_key=key))
    finally:
        await router.aclose()
        await tenancy.aclose()
    left = {"tenant": "team-a", "limit": "requests"}
    assert registry.get_sample_value("imesh_tenant_limit_remaining_ratio", left) == 0.25
    assert registry.get_sample_value("imesh_redis_up") == 1
    assert registry.get_sample_value("imesh_redis_errors_total") == 0
    assert registry.get_sample_value("imesh_redis_fallback_admissions_total") == 0
