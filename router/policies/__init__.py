"""Ranking policies, one module each, generic over a `Target` (a deployment for the router,
a replica for the GPU pool), and the factory that builds them."""

from __future__ import annotations

import random
from typing import get_args

from router.config import PolicyName
from router.policies.base import Policy, Target, TargetT
from router.policies.least_in_flight import LeastInFlight
from router.policies.lowest_cost import LowestCost
from router.policies.lowest_latency import LowestLatency
from router.policies.power_of_two import PowerOfTwo
from router.policies.priority import Priority
from router.policies.weighted_round_robin import WeightedRoundRobin

POLICY_NAMES: tuple[PolicyName, ...] = get_args(PolicyName)

__all__ = [
    "POLICY_NAMES",
    "LeastInFlight",
    "LowestCost",
    "LowestLatency",
    "Policy",
    "PowerOfTwo",
    "Priority",
    "Target",
    "TargetT",
    "WeightedRoundRobin",
    "build_policies",
    "new_policy",
]


def new_policy(name: PolicyName, rng: random.Random | None = None) -> Policy:
    """A fresh instance; stateful policies (round robin) need one per alias."""
    match name:
        case "priority":
            return Priority()
        case "weighted_round_robin":
            return WeightedRoundRobin()
        case "least_in_flight":
            return LeastInFlight()
        case "lowest_cost":
            return LowestCost()
        case "lowest_latency":
            return LowestLatency()
        case "power_of_two":
            return PowerOfTwo(rng)
    raise ValueError(f"unknown policy {name!r}")


def build_policies(rng: random.Random | None = None) -> dict[PolicyName, Policy]:
    """One fresh instance of every policy (for one alias)."""
    return {name: new_policy(name, rng) for name in POLICY_NAMES}
