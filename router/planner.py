"""Plan: alias -> candidates -> capability filter -> policy ranking."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from adapters.token_estimate import estimate_prompt_tokens
from imesh.errors import MeshError, Reason, invalid_argument
from imesh.v1 import chat_pb2
from router.breaker import BreakerState, CircuitBreaker
from router.candidate import Candidate
from router.config import Capability, Deployment, HedgeConfig, MeshConfig, RetryConfig
from router.policies import POLICY_NAMES, Policy, build_policies
from router.pricing import Rates, estimate_cost_micros
from router.stats import DeploymentStats, StatsRegistry

# How many known names a MODEL_NOT_FOUND message lists.
KNOWN_NAMES_SHOWN = 8

_CAPABILITY_NAMES: Mapping[int, Capability] = {
    chat_pb2.CAPABILITY_TOOLS: "tools",
    chat_pb2.CAPABILITY_VISION: "vision",
    chat_pb2.CAPABILITY_JSON_SCHEMA: "json_schema",
    chat_pb2.CAPABILITY_STREAMING: "streaming",
}


@dataclass(frozen=True)
class Plan:
    model: str
    candidates: list[Candidate]
    retry: RetryConfig
    hedging: HedgeConfig
    prompt_tokens_estimate: int
    # Name of the policy that ranked the candidates (the alias's, or the caller's override).
    policy: str = "priority"


class _Member:
    """One deployment as planning reads it: what its config says, converted once."""

    __slots__ = (
        "breaker",
        "capabilities",
        "context_window",
        "deployment",
        "max_in_flight",
        "max_output_tokens",
        "rates",
        "stats",
    )

    def __init__(
        self,
        deployment: Deployment,
        breaker: CircuitBreaker,
        stats: DeploymentStats,
        max_in_flight: int | None,
    ) -> None:
        self.deployment = deployment
        self.breaker = breaker
        self.stats = stats
        self.max_in_flight = max_in_flight
        self.rates = Rates(deployment.price)
        self.capabilities = deployment.capabilities
        self.context_window = deployment.context_window
        self.max_output_tokens = deployment.max_output_tokens


@dataclass(frozen=True, slots=True)
class _Route:
    """Everything planning needs for one requestable name, computed once."""

    members: tuple[_Member, ...]
    policy_name: str
    policies: Mapping[str, Policy]
    retry: RetryConfig
    hedging: HedgeConfig
    hedging_on: HedgeConfig
    hedging_off: HedgeConfig


def _policies(rng: random.Random | None) -> dict[str, Policy]:
    return {name: policy for name, policy in build_policies(rng).items()}


def _hedge_variants(hedging: HedgeConfig) -> tuple[HedgeConfig, HedgeConfig]:
    # ON with a configured max of 0 hedges would be no hedging; ON means at least one.
    on = hedging.model_copy(update={"enabled": True, "max_hedges": max(hedging.max_hedges, 1)})
    off = hedging.model_copy(update={"enabled": False})
    return on, off


class Planner:
    """Turns a request into a ranked list of deployments to try, or a typed refusal.

    Holds one policy instance per alias (and per policy name, for caller overrides), so
    stateful policies keep their turn per alias. Runs on the event loop; never blocks.
    """

    def __init__(
        self,
        config: MeshConfig,
        breakers: Mapping[str, CircuitBreaker],
        stats: StatsRegistry,
        rng: random.Random | None = None,
    ) -> None:
        missing = [d.name for d in config.deployments if d.name not in breakers]
        if missing:
            raise ValueError(f"no circuit breaker for deployments: {', '.join(missing)}")
        limits = config.router.admission.per_deployment
        members = {
            d.name: _Member(d, breakers[d.name], stats[d.name], limits.get(d.name))
            for d in config.deployments
        }
        self._routes: dict[str, _Route] = {}
        for alias, spec in config.aliases.items():
            on, off = _hedge_variants(spec.hedging)
            self._routes[alias] = _Route(
                members=tuple(members[name] for name in spec.candidates),
                policy_name=spec.policy,
                policies=_policies(rng),
                retry=spec.retry,
                hedging=spec.hedging,
                hedging_on=on,
                hedging_off=off,
            )
        # A deployment asked for by name: one candidate, so one shared (stateless) ranking.
        direct_policies = _policies(rng)
        retry, hedging = RetryConfig(), HedgeConfig()
        on, off = _hedge_variants(hedging)
        for name, member in members.items():
            self._routes[name] = _Route(
                (member,), "priority", direct_policies, retry, hedging, on, off
            )
        names = [*config.aliases, *members]
        shown = ", ".join(names[:KNOWN_NAMES_SHOWN])
        more = len(names) - KNOWN_NAMES_SHOWN
        self._known_names = f"{shown}, and {more} more" if more > 0 else shown

    def plan(self, request: chat_pb2.ChatInput, prompt_tokens: int | None = None) -> Plan:
        """`prompt_tokens`: the request's estimate when the caller has it already
        (RequestScope.prompt_tokens_estimate); made here otherwise."""
        route = self._route(request.model)
        routing = request.routing
        policy_name = routing.policy or route.policy_name
        policy = route.policies.get(policy_name)
        if policy is None:
            raise invalid_argument(
                "input.routing.policy",
                f"unknown policy {policy_name!r} (known: {', '.join(POLICY_NAMES)})",
            )
        if prompt_tokens is None:
            prompt_tokens = estimate_prompt_tokens(request)
        capable = self._capable(route.members, request, prompt_tokens)
        candidates: list[Candidate] = []
        for c in capable:
            if c.breaker.available():
                candidates.append(c)
        if not candidates:
            raise unavailable_error(request.model, capable)
        if len(candidates) > 1:
            candidates = policy.rank(candidates, request)
        if routing.hedging == chat_pb2.HEDGING_MODE_ON:
            hedging = route.hedging_on
        elif routing.hedging == chat_pb2.HEDGING_MODE_OFF:
            hedging = route.hedging_off
        else:
            hedging = route.hedging
        return Plan(
            model=request.model,
            candidates=candidates,
            retry=route.retry,
            hedging=hedging,
            prompt_tokens_estimate=prompt_tokens,
            policy=policy_name,
        )

    def _route(self, model: str) -> _Route:
        if not model:
            raise invalid_argument("input.model", "required: an alias or deployment name")
        route = self._routes.get(model)
        if route is None:
            raise MeshError.of(
                Reason.MODEL_NOT_FOUND,
                f"model {model!r} is not a known alias or deployment (known: {self._known_names})",
                metadata={"model": model},
            )
        return route

    def _capable(
        self, members: Sequence[_Member], request: chat_pb2.ChatInput, prompt_tokens: int
    ) -> list[Candidate]:
        needs = _required_capabilities(request)
        max_tokens = request.max_tokens  # 0 when unset
        routing = request.routing
        cost_cap = routing.max_cost_micros if routing.HasField("max_cost_micros") else None
        capable: list[Candidate] = []
        refused = False
        for m in members:
            completion = max_tokens if max_tokens > 0 else m.max_output_tokens
            cost = estimate_cost_micros(prompt_tokens, completion, m.rates)
            if (
                prompt_tokens + completion > m.context_window
                or (needs and not needs <= m.capabilities)
                or (cost_cap is not None and cost > cost_cap)
            ):
                refused = True
                continue
            capable.append(
                Candidate(m.deployment, m.breaker, m.stats, cost, m.max_in_flight, m.rates)
            )
        if not capable:
            assert refused
            refusals = [_refusal(m, needs, max_tokens, prompt_tokens, cost_cap) for m in members]
            raise MeshError.of(
                Reason.NO_CAPABLE_DEPLOYMENT,
                f"no deployment of {request.model!r} can serve this request: "
                + " | ".join(r for r in refusals if r),
                metadata={"model": request.model},
            )
        return capable


def _refusal(
    m: _Member,
    needs: frozenset[Capability],
    max_tokens: int,
    prompt_tokens: int,
    cost_cap: int | None,
) -> str:
    """Why the deployment cannot serve the request, in words ("" when it can)."""
    d = m.deployment
    completion = max_tokens if max_tokens > 0 else m.max_output_tokens
    cost = estimate_cost_micros(prompt_tokens, completion, m.rates)
    why: list[str] = []
    if prompt_tokens + completion > m.context_window:
        why.append(
            f"context window {m.context_window} < {prompt_tokens + completion} "
            f"estimated tokens ({prompt_tokens} prompt + {completion} completion)"
        )
    lacking = needs - m.capabilities
    if lacking:
        why.append(f"lacks {', '.join(sorted(lacking))}")
    if cost_cap is not None and cost > cost_cap:
        why.append(f"estimated cost {cost} micro-USD > max_cost_micros {cost_cap}")
    return f"{d.name}: {'; '.join(why)}" if why else ""


_NO_NEEDS: frozenset[Capability] = frozenset()


def _required_capabilities(request: chat_pb2.ChatInput) -> frozenset[Capability]:
    needs: set[Capability] = set()
    if request.tools:
        needs.add("tools")
    if request.response_format.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        needs.add("json_schema")
    for message in request.messages:
        for part in message.content:
            if part.HasField("image"):
                needs.add("vision")
                break
    required = request.routing.required_capabilities
    if not needs and not required:
        return _NO_NEEDS
    for value in required:
        if value == chat_pb2.CAPABILITY_UNSPECIFIED:
            continue
        name = _CAPABILITY_NAMES.get(value)
        if name is None:
            raise invalid_argument(
                "input.routing.required_capabilities", f"unknown capability {value}"
            )
        needs.add(name)
    return frozenset(needs)


def unavailable_error(model: str, candidates: Sequence[Candidate]) -> MeshError:
    """No candidate admits calls now: 429 ALL_COOLING_DOWN when every one of them is
    resting after a provider's rate limit, else 503 ALL_BREAKERS_OPEN; the message says
    each one's state in words and when the first is back."""
    waits = [c.breaker.retry_after() for c in candidates]
    back_in = min(waits, default=0.0)
    metadata = {"model": model}
    if candidates and all(c.breaker.cooling_for() > 0 for c in candidates):
        return MeshError.of(
            Reason.ALL_COOLING_DOWN,
            f"every deployment of {model!r} is cooling down after a rate limit; "
            f"the first is back in {back_in:.1f}s",
            retry_after=back_in,
            metadata=metadata,
        )
    states = "; ".join(
        f"{c.name} {_state_in_words(c.breaker)}, back in {wait:.1f}s"
        for c, wait in zip(candidates, waits, strict=True)
    )
    return MeshError.of(
        Reason.ALL_BREAKERS_OPEN,
        f"no deployment of {model!r} admits calls now ({states})",
        retry_after=back_in or None,
        metadata=metadata,
    )


def _state_in_words(breaker: CircuitBreaker) -> str:
    if breaker.cooling_for() > 0:
        return "is cooling down after a rate limit"
    state = breaker.state
    if state is BreakerState.OPEN:
        return "has its circuit breaker open"
    if state is BreakerState.HALF_OPEN:
        return "is probing (half-open, every probe slot taken)"
    return "admits calls"
