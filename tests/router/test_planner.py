"""Planner: name resolution, capability filters, breaker gate, policy choice, hedging mode."""

from __future__ import annotations

import grpc
import pytest

from adapters.token_estimate import estimate_prompt_tokens
from imesh.errors import MeshError, Reason, classify
from imesh.v1 import chat_pb2
from router.breaker import CircuitBreaker
from router.config import HedgeConfig, MeshConfig, RetryConfig, parse_config
from router.planner import Plan, Planner
from router.stats import StatsRegistry

CONFIG = {
    "providers": {"sim": {"kind": "simulated"}},
    "deployments": [
        {
            "name": "small",
            "provider": "sim",
            "model": "small-1",
            "context_window": 16384,
            "capabilities": ["streaming", "tools", "json_schema"],
            "price": {"input": 0.15, "output": 0.60},
        },
        {
            "name": "large",
            "provider": "sim",
            "model": "large-1",
            "context_window": 131072,
            "capabilities": ["streaming", "tools", "vision", "json_schema"],
            "price": {"input": 3.00, "output": 15.00, "cached_input": 0.30},
        },
        {
            "name": "backup",
            "provider": "sim",
            "model": "large-1",
            "context_window": 131072,
            "capabilities": ["streaming", "vision"],
            "price": {"input": 2.50, "output": 12.00},
        },
    ],
    "aliases": {
        "auto": {
            "candidates": ["large", "small", "backup"],
            "policy": "lowest_cost",
            "hedging": {"enabled": True, "max_hedges": 2},
            "retry": {"max_attempts": 5},
        },
        "smart": {
            "candidates": ["large", "backup"],
            "policy": "priority",
            "hedging": {"enabled": False, "delay_ms": 400, "max_hedges": 0},
        },
        "rr": {"candidates": ["small", "large"], "policy": "weighted_round_robin"},
    },
    "router": {"breaker": {"consecutive_failures": 1, "open_s": 10}},
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Mesh:
    def __init__(self) -> None:
        self.config: MeshConfig = parse_config(CONFIG)
        self.clock = FakeClock()
        self.breakers = {
            d.name: CircuitBreaker(self.config.router.breaker, clock=self.clock)
            for d in self.config.deployments
        }
        self.stats = StatsRegistry()
        self.planner = Planner(self.config, self.breakers, self.stats)

    def trip(self, name: str) -> None:
        permit = self.breakers[name].try_acquire()
        assert permit is not None
        self.breakers[name].record_failure(permit)


@pytest.fixture
def mesh() -> Mesh:
    return Mesh()


def request(model: str, prompt: str = "hello", **fields: object) -> chat_pb2.ChatInput:
    req = chat_pb2.ChatInput(
        model=model,
        messages=[
            chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text=prompt)])
        ],
    )
    for key, value in fields.items():
        if key == "routing":
            assert isinstance(value, chat_pb2.RoutingHints)
            req.routing.CopyFrom(value)
        else:
            setattr(req, key, value)
    return req


def names(plan: Plan) -> list[str]:
    return [c.deployment.name for c in plan.candidates]


def refusal(mesh: Mesh, req: chat_pb2.ChatInput) -> MeshError:
    with pytest.raises(MeshError) as info:
        mesh.planner.plan(req)
    return info.value


def test_alias_resolves_to_its_candidates_in_policy_order(mesh: Mesh) -> None:
    plan = mesh.planner.plan(request("smart"))
    assert plan.model == "smart"
    assert names(plan) == ["large", "backup"]
    assert plan.policy == "priority"
    assert plan.retry == RetryConfig()
    assert plan.hedging.delay_ms == 400


def test_alias_uses_its_own_policy_and_retry(mesh: Mesh) -> None:
    plan = mesh.planner.plan(request("auto"))
    assert names(plan) == ["small", "backup", "large"]  # lowest_cost
    assert plan.policy == "lowest_cost"
    assert plan.retry.max_attempts == 5


def test_deployment_name_gives_a_one_candidate_plan_with_defaults(mesh: Mesh) -> None:
    plan = mesh.planner.plan(request("backup"))
    assert names(plan) == ["backup"]
    assert plan.retry == RetryConfig()
    assert plan.hedging == HedgeConfig()
    assert plan.policy == "priority"


def test_plan_carries_prompt_estimate_and_candidate_cost(mesh: Mesh) -> None:
    req = request("small", prompt="x" * 4000, max_tokens=1000)
    plan = mesh.planner.plan(req)
    assert plan.prompt_tokens_estimate == estimate_prompt_tokens(req) == 1007
    # 1007 x 0.15 + 1000 x 0.60 = 151.05 + 600 micro-dollars
    assert plan.candidates[0].estimated_cost_micros == 751


def test_unknown_model_is_not_found_and_lists_known_names(mesh: Mesh) -> None:
    err = refusal(mesh, request("gpt-9"))
    assert err.code is grpc.StatusCode.NOT_FOUND
    assert err.reason == "MODEL_NOT_FOUND"
    assert "'gpt-9'" in err.message
    assert "auto" in err.message
    assert "small" in err.message


def test_empty_model_is_invalid_argument(mesh: Mesh) -> None:
    err = refusal(mesh, request(""))
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert err.field_violations[0].field == "input.model"


def test_context_window_excludes_deployments_too_small_for_prompt_plus_output(mesh: Mesh) -> None:
    # 12,507 prompt tokens + 4,096 default output > 16,384
    plan = mesh.planner.plan(request("auto", prompt="x" * 50_000))
    assert names(plan) == ["backup", "large"]


def test_context_window_counts_max_tokens_instead_of_deployment_default(mesh: Mesh) -> None:
    plan = mesh.planner.plan(request("auto", prompt="x" * 50_000, max_tokens=100))
    assert "small" in names(plan)


def test_context_window_refusal_says_why(mesh: Mesh) -> None:
    err = refusal(mesh, request("small", prompt="x" * 64_000))
    assert err.code is grpc.StatusCode.FAILED_PRECONDITION
    assert err.reason == "NO_CAPABLE_DEPLOYMENT"
    # 16,000 text + 4 message + 3 reply = 16,007 prompt; + 4,096 output
    assert "small: context window 16384 < 20103 estimated tokens" in err.message


def test_tools_require_the_tools_capability(mesh: Mesh) -> None:
    req = request("smart")
    req.tools.add(name="lookup", parameters_json="{}")
    assert names(mesh.planner.plan(req)) == ["large"]
    err = refusal(mesh, _with_model(req, "backup"))
    assert "backup: lacks tools" in err.message


def test_images_require_the_vision_capability(mesh: Mesh) -> None:
    req = request("auto")
    req.messages[0].content.add(image=chat_pb2.ImagePart(url="https://x/cat.png"))
    assert "small" not in names(mesh.planner.plan(req))
    assert "small: lacks vision" in refusal(mesh, _with_model(req, "small")).message


def test_json_schema_response_format_requires_json_schema(mesh: Mesh) -> None:
    req = request("smart")
    req.response_format.type = chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    req.response_format.json_schema = '{"type": "object"}'
    assert names(mesh.planner.plan(req)) == ["large"]
    assert "backup: lacks json_schema" in refusal(mesh, _with_model(req, "backup")).message


def test_json_object_response_format_needs_no_capability(mesh: Mesh) -> None:
    req = request("smart")
    req.response_format.type = chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT
    assert names(mesh.planner.plan(req)) == ["large", "backup"]


def test_required_capabilities_hint_filters(mesh: Mesh) -> None:
    hints = chat_pb2.RoutingHints(
        required_capabilities=[chat_pb2.CAPABILITY_VISION, chat_pb2.CAPABILITY_TOOLS]
    )
    assert names(mesh.planner.plan(request("auto", routing=hints))) == ["large"]
    err = refusal(mesh, request("small", routing=hints))
    assert "small: lacks vision" in err.message


def test_max_cost_excludes_deployments_estimated_above_it(mesh: Mesh) -> None:
    # With max_tokens 1000 and 1007 prompt tokens: small 751, backup 14518, large 18021.
    hints = chat_pb2.RoutingHints(max_cost_micros=15_000)
    plan = mesh.planner.plan(request("auto", prompt="x" * 4000, max_tokens=1000, routing=hints))
    assert names(plan) == ["small", "backup"]
    err = refusal(mesh, request("large", prompt="x" * 4000, max_tokens=1000, routing=hints))
    assert "large: estimated cost 18021 micro-USD > max_cost_micros 15000" in err.message


def test_max_cost_zero_is_a_limit_not_unset(mesh: Mesh) -> None:
    err = refusal(mesh, request("small", routing=chat_pb2.RoutingHints(max_cost_micros=0)))
    assert err.reason == "NO_CAPABLE_DEPLOYMENT"


def test_no_capable_deployment_lists_every_deployment_and_reason(mesh: Mesh) -> None:
    req = request("smart", prompt="x" * 600_000)
    req.tools.add(name="lookup")
    err = refusal(mesh, req)
    assert "large: context window 131072 <" in err.message
    assert "backup: context window 131072 <" in err.message
    assert "lacks tools" in err.message


def test_open_breaker_excludes_its_deployment(mesh: Mesh) -> None:
    mesh.trip("large")
    assert names(mesh.planner.plan(request("smart"))) == ["backup"]


def test_all_breakers_open_is_unavailable_with_soonest_retry_after(mesh: Mesh) -> None:
    mesh.trip("large")
    mesh.clock.now += 4
    mesh.trip("backup")
    err = refusal(mesh, request("smart"))
    assert err.code is grpc.StatusCode.UNAVAILABLE
    assert err.reason == "ALL_BREAKERS_OPEN"
    assert err.retry_after == pytest.approx(6)


def test_cooling_deployment_counts_as_unavailable(mesh: Mesh) -> None:
    mesh.breakers["large"].cool_down(2.5)
    mesh.trip("backup")
    err = refusal(mesh, request("smart"))
    assert err.reason == "ALL_BREAKERS_OPEN"
    assert err.retry_after == pytest.approx(2.5)
    assert "large is cooling down after a rate limit, back in 2.5s" in err.message
    assert "backup has its circuit breaker open, back in 10.0s" in err.message


def test_every_deployment_cooling_down_is_a_429_that_says_so_in_words(mesh: Mesh) -> None:
    mesh.breakers["large"].cool_down(2.5)
    mesh.breakers["backup"].cool_down(1.9)
    err = refusal(mesh, request("smart"))
    assert err.reason is Reason.ALL_COOLING_DOWN
    assert classify(err).http_status == 429
    assert err.retry_after == pytest.approx(1.9)
    assert err.message == (
        "every deployment of 'smart' is cooling down after a rate limit; the first is back in 1.9s"
    )


def test_open_breaker_of_incapable_deployment_is_not_all_breakers_open(mesh: Mesh) -> None:
    mesh.trip("backup")
    req = request("smart")
    req.tools.add(name="lookup")
    assert names(mesh.planner.plan(req)) == ["large"]


def test_breaker_that_reached_half_open_is_planned_again(mesh: Mesh) -> None:
    mesh.trip("large")
    mesh.clock.now += 10
    assert names(mesh.planner.plan(request("smart"))) == ["large", "backup"]


def test_routing_policy_overrides_the_alias_policy(mesh: Mesh) -> None:
    plan = mesh.planner.plan(request("auto", routing=chat_pb2.RoutingHints(policy="priority")))
    assert names(plan) == ["large", "small", "backup"]
    assert plan.policy == "priority"


def test_unknown_routing_policy_is_invalid_argument(mesh: Mesh) -> None:
    err = refusal(mesh, request("auto", routing=chat_pb2.RoutingHints(policy="fastest")))
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert err.field_violations[0].field == "input.routing.policy"
    assert "'fastest'" in err.message


def test_round_robin_turn_is_kept_per_alias_across_plans(mesh: Mesh) -> None:
    firsts = [names(mesh.planner.plan(request("rr")))[0] for _ in range(4)]
    assert firsts == ["small", "large", "small", "large"]


def test_hedging_mode_on_forces_hedging_with_at_least_one_hedge(mesh: Mesh) -> None:
    hints = chat_pb2.RoutingHints(hedging=chat_pb2.HEDGING_MODE_ON)
    hedging = mesh.planner.plan(request("smart", routing=hints)).hedging
    assert hedging.enabled
    assert hedging.max_hedges == 1
    assert hedging.delay_ms == 400


def test_hedging_mode_off_disables_configured_hedging(mesh: Mesh) -> None:
    hints = chat_pb2.RoutingHints(hedging=chat_pb2.HEDGING_MODE_OFF)
    assert not mesh.planner.plan(request("auto", routing=hints)).hedging.enabled


def test_hedging_mode_unspecified_uses_the_alias_config(mesh: Mesh) -> None:
    hedging = mesh.planner.plan(request("auto")).hedging
    assert hedging.enabled
    assert hedging.max_hedges == 2
    assert not mesh.planner.plan(request("smart")).hedging.enabled


def test_planner_requires_a_breaker_per_deployment() -> None:
    config = parse_config(CONFIG)
    with pytest.raises(ValueError, match="backup"):
        Planner(config, {"small": CircuitBreaker(config.router.breaker)}, StatsRegistry())


def _with_model(req: chat_pb2.ChatInput, model: str) -> chat_pb2.ChatInput:
    copy = chat_pb2.ChatInput()
    copy.CopyFrom(req)
    copy.model = model
    return copy
