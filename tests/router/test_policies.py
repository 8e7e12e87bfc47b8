"""Each ranking policy's order, on hand-built candidates."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from imesh.v1 import chat_pb2
from router.breaker import CircuitBreaker
from router.candidate import Candidate
from router.config import BreakerConfig, Deployment, PolicyName
from router.policies import (
    POLICY_NAMES,
    LeastInFlight,
    LowestCost,
    LowestLatency,
    PowerOfTwo,
    Priority,
    WeightedRoundRobin,
    build_policies,
    new_policy,
)
from router.stats import DeploymentStats

REQUEST = chat_pb2.ChatInput(model="alias")


def candidate(
    name: str,
    *,
    weight: int = 1,
    in_flight: int = 0,
    cost: int = 0,
    ttft: list[float] | None = None,
) -> Candidate:
    stats = DeploymentStats()
    stats.in_flight = in_flight
    for sample in ttft or []:
        stats.record_ttft(sample)
    return Candidate(
        deployment=Deployment(name=name, provider="sim", model=name, weight=weight),
        breaker=CircuitBreaker(BreakerConfig()),
        stats=stats,
        estimated_cost_micros=cost,
    )


def names(ranked: list[Candidate]) -> list[str]:
    return [c.deployment.name for c in ranked]


def test_priority_keeps_config_order() -> None:
    cands = [candidate("a", cost=9), candidate("b", cost=1), candidate("c", in_flight=0)]
    assert names(Priority().rank(cands, REQUEST)) == ["a", "b", "c"]


def test_weighted_round_robin_is_smooth_like_nginx() -> None:
    cands = [candidate("a", weight=5), candidate("b", weight=1), candidate("c", weight=1)]
    policy = WeightedRoundRobin()
    firsts = [policy.rank(cands, REQUEST)[0].deployment.name for _ in range(7)]
    assert firsts == ["a", "a", "b", "a", "c", "a", "a"]


def test_weighted_round_robin_distribution_matches_weights_exactly() -> None:
    cands = [candidate("a", weight=3), candidate("b", weight=2), candidate("c", weight=5)]
    policy = WeightedRoundRobin()
    firsts = Counter(policy.rank(cands, REQUEST)[0].deployment.name for _ in range(10 * 40))
    assert firsts == {"a": 120, "b": 80, "c": 200}


def test_weighted_round_robin_never_puts_weight_zero_first() -> None:
    cands = [candidate("zero", weight=0), candidate("a", weight=1), candidate("b", weight=2)]
    policy = WeightedRoundRobin()
    for _ in range(30):
        ranked = names(policy.rank(cands, REQUEST))
        assert ranked[0] != "zero"
        assert ranked[-1] == "zero"
        assert sorted(ranked) == ["a", "b", "zero"]


def test_weighted_round_robin_with_only_weight_zero_left_uses_config_order() -> None:
    cands = [candidate("x", weight=0), candidate("y", weight=0)]
    assert names(WeightedRoundRobin().rank(cands, REQUEST)) == ["x", "y"]


def test_weighted_round_robin_state_is_per_instance() -> None:
    cands = [candidate("a", weight=1), candidate("b", weight=1)]
    first, second = WeightedRoundRobin(), WeightedRoundRobin()
    assert names(first.rank(cands, REQUEST))[0] == "a"
    assert names(first.rank(cands, REQUEST))[0] == "b"
    assert names(second.rank(cands, REQUEST))[0] == "a"


def test_least_in_flight_orders_by_load_with_ties_in_config_order() -> None:
    cands = [
        candidate("a", in_flight=3),
        candidate("b", in_flight=1),
        candidate("c", in_flight=1),
        candidate("d", in_flight=0),
    ]
    assert names(LeastInFlight().rank(cands, REQUEST)) == ["d", "b", "c", "a"]


def test_lowest_cost_orders_by_estimated_cost_with_ties_in_config_order() -> None:
    cands = [candidate("a", cost=500), candidate("b", cost=20), candidate("c", cost=20)]
    assert names(LowestCost().rank(cands, REQUEST)) == ["b", "c", "a"]


def test_lowest_latency_orders_by_ttft_ewma() -> None:
    cands = [
        candidate("slow", ttft=[0.9]),
        candidate("fast", ttft=[0.1]),
        candidate("mid", ttft=[0.4]),
    ]
    assert names(LowestLatency().rank(cands, REQUEST)) == ["fast", "mid", "slow"]


def test_lowest_latency_explores_unsampled_deployments_first() -> None:
    cands = [
        candidate("fast", ttft=[0.05]),
        candidate("new1"),
        candidate("slow", ttft=[2.0]),
        candidate("new2"),
    ]
    assert names(LowestLatency().rank(cands, REQUEST)) == ["new1", "new2", "fast", "slow"]


def test_power_of_two_prefers_lower_in_flight_of_its_two_picks() -> None:
    cands = [candidate(f"d{i}", in_flight=i) for i in range(5)]
    rng = random.Random(7)
    policy = PowerOfTwo(random.Random(7))
    for _ in range(50):
        i, j = rng.sample(range(5), 2)
        ranked = names(policy.rank(cands, REQUEST))
        assert ranked[:2] == [f"d{min(i, j)}", f"d{max(i, j)}"]
        assert sorted(ranked) == [f"d{k}" for k in range(5)]


def test_power_of_two_never_picks_the_busiest_first() -> None:
    cands = [candidate("idle"), candidate("busy", in_flight=50), candidate("warm", in_flight=2)]
    policy = PowerOfTwo(random.Random(1))
    firsts = Counter(policy.rank(cands, REQUEST)[0].deployment.name for _ in range(300))
    assert firsts["busy"] == 0
    # idle wins whenever it is drawn (2 of 3 pairs); warm only in the busy/warm pair.
    assert firsts["idle"] > firsts["warm"] > 0


def test_power_of_two_with_one_candidate_returns_it() -> None:
    cands = [candidate("only", in_flight=9)]
    assert names(PowerOfTwo(random.Random(0)).rank(cands, REQUEST)) == ["only"]


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_returns_each_candidate_exactly_once(name: PolicyName) -> None:
    policy = new_policy(name, random.Random(3))
    assert policy.name == name
    cands = [candidate(f"d{i}", weight=i % 3, in_flight=i % 2, cost=10 - i) for i in range(6)]
    ranked = policy.rank(cands, REQUEST)
    assert sorted(names(ranked)) == sorted(names(cands))


def test_build_policies_gives_fresh_instances_of_every_policy() -> None:
    first, second = build_policies(), build_policies()
    assert set(first) == set(POLICY_NAMES)
    assert all(first[n] is not second[n] for n in POLICY_NAMES)


@dataclass(frozen=True)
class Replica:
    """A policy Target that is not a deployment: what the GPU pool ranks."""

    name: str
    in_flight: int = 0
    ttft_ewma: float | None = None
    weight: int = 1
    estimated_cost_micros: int = 0


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_ranks_any_target_not_only_deployments(name: PolicyName) -> None:
    replicas = [Replica("r1", in_flight=3, ttft_ewma=0.2), Replica("r2", ttft_ewma=0.1)]
    ranked: list[Replica] = new_policy(name, random.Random(1)).rank(replicas, REQUEST)
    assert sorted(r.name for r in ranked) == ["r1", "r2"]
    assert all(isinstance(r, Replica) for r in ranked)
    if name in ("least_in_flight", "lowest_latency", "power_of_two"):
        assert ranked[0].name == "r2"
