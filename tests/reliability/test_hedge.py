"""Hedging: a second attempt after the delay, the first token wins, the loser is cancelled."""

from __future__ import annotations

from imesh.api import CallContext
from imesh.v1 import chat_pb2
from router.candidate import Candidate
from router.config import Deployment, HedgeConfig
from router.hedge import hedge_delay_s
from router.recorder import Outcome
from router.stats import DeploymentStats
from tests.reliability.mesh_fakes import (
    Script,
    collect,
    kinds,
    make_mesh,
    mesh_config,
    other_tasks,
    text_of,
    unavailable,
    user_input,
)

# The hedged winner's pause between tokens: the loser must be closed within it.
WINNER_GAP_S = 0.4


def hedged(delay_ms: float = 50, max_hedges: int = 1, **extra: object) -> dict[str, object]:
    return {
        "candidates": ["dep-a", "dep-b", "dep-c"],
        "policy": "priority",
        "hedging": {"enabled": True, "delay_ms": delay_ms, "max_hedges": max_hedges},
        **extra,
    }


async def test_hedge_starts_after_the_delay_and_the_faster_deployment_wins() -> None:
    mesh = make_mesh(
        {
            "dep-a": [Script(tokens=["A1", "A2"], ttft=5.0)],
            "dep-b": [Script(tokens=["B1", "B2", "B3"], ttft=0.02, gap=WINNER_GAP_S)],
        },
        aliases={"h": hedged(delay_ms=50)},
    )
    events, error = await collect(mesh, user_input("h"))
    assert error is None
    assert events[0].start.deployment == "dep-b"
    assert events[0].start.attempt == 2
    assert text_of(events) == "B1B2B3"
    slow, fast = mesh.backend("dep-a").calls[0], mesh.backend("dep-b").calls[0]
    assert 0.045 <= fast.started_at - slow.started_at < 2.0  # the delay, not the 5 s TTFT
    # The loser was closed, with no token relayed, once the winner had its first token and
    # before its second: ordering, not a tight clock.
    assert slow.cancelled
    assert slow.tokens_sent == 0
    assert slow.closed_at is not None
    assert slow.closed_at - fast.started_at < 0.02 + WINNER_GAP_S
    [loser] = mesh.sink.by_deployment("dep-a")
    [winner] = mesh.sink.by_deployment("dep-b")
    assert (loser.outcome, loser.hedge) == (Outcome.CANCELLED, False)
    assert (winner.outcome, winner.hedge) == (Outcome.SUCCESS, True)
    # The loser's spend is still recorded: its prompt was sent (estimated, priced).
    assert loser.usage.estimated
    assert loser.usage.prompt_tokens > 0
    assert loser.cost_micros > 0
    assert mesh.calls()[-1].deployment == "dep-b"
    assert len(mesh.calls()) == 2


async def test_racing_streams_never_duplicate_or_interleave_tokens() -> None:
    # Both attempts produce tokens at nearly the same time and keep streaming.
    a_tokens = [f"a{i}" for i in range(20)]
    b_tokens = [f"b{i}" for i in range(20)]
    for _ in range(5):
        mesh = make_mesh(
            {
                "dep-a": [Script(tokens=a_tokens, ttft=0.03, gap=0.001)],
                "dep-b": [Script(tokens=b_tokens, ttft=0.01, gap=0.001)],
            },
            aliases={"h": hedged(delay_ms=20)},
        )
        events, error = await collect(mesh, user_input("h"))
        assert error is None
        assert kinds(events).count("start") == 1
        winner = events[0].start.deployment
        expected = a_tokens if winner == "dep-a" else b_tokens
        assert [e.content.text for e in events if e.HasField("content")] == expected
        assert sum(c.cancelled for c in mesh.calls()) == 1


async def test_hedges_are_bounded_by_max_hedges() -> None:
    slow = [Script(tokens=["x"], ttft=0.3)]
    mesh = make_mesh(
        {"dep-a": slow, "dep-b": slow, "dep-c": slow},
        aliases={"h": hedged(delay_ms=20, max_hedges=1)},
    )
    _, error = await collect(mesh, user_input("h"))
    assert error is None
    assert [c.deployment for c in mesh.calls()] == ["dep-a", "dep-b"]
    assert mesh.backend("dep-c").calls == []


async def test_two_hedges_each_on_a_different_deployment() -> None:
    slow = [Script(tokens=["x"], ttft=0.3)]
    mesh = make_mesh(
        {"dep-a": slow, "dep-b": slow, "dep-c": slow},
        aliases={"h": hedged(delay_ms=20, max_hedges=2)},
    )
    events, _ = await collect(mesh, user_input("h"))
    assert [c.deployment for c in mesh.calls()] == ["dep-a", "dep-b", "dep-c"]
    assert events[0].start.deployment == "dep-a"  # started first, so its token came first
    assert sum(c.cancelled for c in mesh.calls()) == 2


async def test_no_hedge_when_the_deadline_leaves_no_time_for_one() -> None:
    mesh = make_mesh(
        {"dep-a": [Script(tokens=["a"], ttft=0.15)], "dep-b": [Script(tokens=["b"])]},
        aliases={"h": hedged(delay_ms=100)},
    )
    # At the 100 ms hedge point only ~100 ms remain, less than a hedge needs: no hedge.
    events, error = await collect(mesh, user_input("h"), CallContext(timeout=0.19))
    assert error is None
    assert text_of(events) == "a"
    assert mesh.backend("dep-b").calls == []


async def test_request_hint_turns_hedging_off() -> None:
    mesh = make_mesh(
        {"dep-a": [Script(tokens=["a"], ttft=0.15)], "dep-b": [Script(tokens=["b"])]},
        aliases={"h": hedged(delay_ms=20)},
    )
    request = user_input("h", routing=chat_pb2.RoutingHints(hedging=chat_pb2.HEDGING_MODE_OFF))
    events, _ = await collect(mesh, request)
    assert text_of(events) == "a"
    assert mesh.backend("dep-b").calls == []


async def test_a_failed_primary_leaves_the_running_hedge_to_win() -> None:
    mesh = make_mesh(
        {
            "dep-a": [Script(fail_at=0, error=unavailable(), ttft=0.1)],
            "dep-b": [Script(tokens=["b"], ttft=0.15)],
        },
        aliases={"h": hedged(delay_ms=20)},
    )
    # dep-a fails ~80 ms after the hedge started; dep-b is still the request's chance.
    events, error = await collect(mesh, user_input("h"))
    assert error is None
    assert events[0].start.deployment == "dep-b"
    assert [c.deployment for c in mesh.calls()] == ["dep-a", "dep-b"]
    assert other_tasks() == []


def test_hedge_delay_prefers_request_then_deployment_then_p95_then_default() -> None:
    config = mesh_config()
    deployment = config.deployments[0]
    stats = DeploymentStats()
    breaker = object()
    candidate = Candidate(deployment, breaker, stats, 0)  # type: ignore[arg-type]
    assert hedge_delay_s(HedgeConfig(delay_ms=70), candidate) == 0.07
    assert hedge_delay_s(HedgeConfig(default_delay_ms=300), candidate) == 0.3
    for _ in range(40):
        stats.record_ttft(0.2)
    assert hedge_delay_s(HedgeConfig(default_delay_ms=300), candidate) == 0.2
    fixed = Deployment(name="d", provider="p-a", model="m", hedge_delay_ms=90)
    fixed_candidate = Candidate(fixed, breaker, stats, 0)  # type: ignore[arg-type]
    assert hedge_delay_s(HedgeConfig(), fixed_candidate) == 0.09
    assert hedge_delay_s(HedgeConfig(delay_ms=70), fixed_candidate) == 0.07


async def test_a_hedge_cancelled_before_it_ran_is_still_recorded_once() -> None:
    # The hedge timer and the primary's first token land in the same loop turn: the hedge
    # is launched, then loses at once, before its task ever ran.
    mesh = make_mesh(
        {"dep-a": [Script(tokens=["a"])], "dep-b": [Script(tokens=["b"])]},
        aliases={"h": hedged(delay_ms=0.0001)},
    )
    events, error = await collect(mesh, user_input("h"))
    assert error is None
    assert text_of(events) == "a"
    assert mesh.backend("dep-b").calls == []  # never reached the upstream
    [hedge] = mesh.sink.by_deployment("dep-b")
    assert (hedge.outcome, hedge.hedge) == (Outcome.CANCELLED, True)
    assert hedge.cost_micros == 0  # nothing was sent, so nothing was spent
    assert len(mesh.sink.records) == 2
    # Its end was accounted: no phantom in-flight call skews least_in_flight/power_of_two.
    assert [mesh.router.stats[d].in_flight for d in ("dep-a", "dep-b", "dep-c")] == [0, 0, 0]
    assert other_tasks() == []
