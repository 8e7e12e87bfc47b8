"""The issue's performance targets, evaluated on the figures of one run: each is a ratio or
a bound between subjects measured together, marked met, missed or not measured."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from bench.report import Figures

# Subject keys the targets refer to (bench/scenario.py measures them).
DIRECT = "direct"
RELAY = "relay"
MESH = "mesh-rest"
MESH_GRPC = "mesh-grpc"
GRPC_HOP = "grpc-hop"
LITELLM = "litellm"

# "Flat": resident memory after the last round at most this much above after the first.
RSS_GROWTH_LIMIT = 0.05


class Verdict(StrEnum):
    MET = "met"
    MISSED = "missed"
    NOT_MEASURED = "not measured"


@dataclass(frozen=True, slots=True)
class TargetResult:
    name: str
    # The compared quantity and its bound, in the unit `limit_text` names.
    value: float | None
    limit: float
    value_text: str
    limit_text: str
    verdict: Verdict


def _result(
    name: str, value: float | None, limit: float, text: str, limit_text: str, at_most: bool
) -> TargetResult:
    if value is None:
        return TargetResult(name, None, limit, text, limit_text, Verdict.NOT_MEASURED)
    met = value <= limit if at_most else value >= limit
    return TargetResult(
        name, value, limit, text, limit_text, Verdict.MET if met else Verdict.MISSED
    )


def _get(
    figures: Mapping[str, Figures], key: str, pick: Callable[[Figures], float | None]
) -> float | None:
    f = figures.get(key)
    return None if f is None else pick(f)


def _added(
    figures: Mapping[str, Figures], key: str, pick: Callable[[Figures], float | None]
) -> float | None:
    value, base = _get(figures, key, pick), _get(figures, DIRECT, pick)
    return None if value is None or base is None else value - base


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def rss_growth(after: list[int | None]) -> float | None:
    """Growth of resident memory from the first round's end to the last's (0.1 = 10%)."""
    known = [v for v in after if v is not None]
    if len(known) < 2 or known[0] <= 0:
        return None
    return (known[-1] - known[0]) / known[0]


def _added_text(ratio: float | None, mesh: float | None, relay: float | None) -> str:
    if ratio is not None:
        return f"{ratio:.2f}x ({mesh:.2f} vs {relay:.2f} ms)"
    if relay is not None and relay <= 0:
        # Noise put the relay at or under the direct call: there is no ratio to judge.
        return f"the relay added {relay:.2f} ms"
    return "-"


def _rps_text(ratio: float | None, figures: Mapping[str, Figures]) -> str:
    if ratio is None:
        return "-"
    mesh, litellm = figures[MESH], figures[LITELLM]
    text = f"{ratio:.1f}x ({mesh.rps:.0f} vs {litellm.rps:.0f} RPS)"
    paced = [
        name
        for key, name in ((MESH, "mesh"), (LITELLM, "LiteLLM"))
        if figures[key].load_generator_bound
    ]
    if paced:
        # A harness-bound RPS is a floor for that subject's own: the ratio is not the servers'.
        text += f"; the load generator set the pace of {' and '.join(paced)}"
    return text


def evaluate(figures: Mapping[str, Figures]) -> list[TargetResult]:
    """Every target, in the issue's order."""

    def tok(f: Figures) -> float | None:
        return f.cpu_us_per_token

    def lat(f: Figures) -> float | None:
        return f.latency_p50

    def ttft(f: Figures) -> float | None:
        return f.ttft_p50

    mesh_tok, relay_tok = _get(figures, MESH, tok), _get(figures, RELAY, tok)
    litellm_tok = _get(figures, LITELLM, tok)
    cpu_req = _get(figures, MESH, lambda f: f.cpu_ms_per_request)
    mesh_rps = _get(figures, MESH, lambda f: f.rps)
    litellm_rps = _get(figures, LITELLM, lambda f: f.rps)
    mesh_lat, relay_lat = _added(figures, MESH, lat), _added(figures, RELAY, lat)
    mesh_ttft, relay_ttft = _added(figures, MESH, ttft), _added(figures, RELAY, ttft)
    grpc_p50, hop_p50 = _get(figures, MESH_GRPC, lat), _get(figures, GRPC_HOP, lat)
    mesh = figures.get(MESH)
    growth = rss_growth(mesh.rss_after) if mesh is not None else None

    r_tok = _ratio(mesh_tok, relay_tok)
    r_litellm = _ratio(litellm_tok, mesh_tok)
    r_rps = _ratio(mesh_rps, litellm_rps)
    r_lat = _ratio(mesh_lat, relay_lat) if relay_lat and relay_lat > 0 else None
    r_ttft = _ratio(mesh_ttft, relay_ttft) if relay_ttft and relay_ttft > 0 else None
    grpc_over = None if grpc_p50 is None or hop_p50 is None else grpc_p50 - hop_p50
    return [
        _result(
            "token streaming: CPU per token vs the minimal relay",
            r_tok,
            2.0,
            f"{r_tok:.2f}x ({mesh_tok:.1f} vs {relay_tok:.1f} µs)" if r_tok is not None else "-",
            "≤ 2x",
            at_most=True,
        ),
        _result(
            "token streaming: CPU per token, LiteLLM's over the mesh's",
            r_litellm,
            40.0,
            f"{r_litellm:.1f}x less ({litellm_tok:.1f} vs {mesh_tok:.1f} µs)"
            if r_litellm is not None
            else "-",
            "≥ 40x less",
            at_most=False,
        ),
        _result(
            "non-streaming c=32: gateway CPU per request",
            cpu_req,
            1.0,
            f"{cpu_req:.2f} ms" if cpu_req is not None else "-",
            "≤ 1 ms",
            at_most=True,
        ),
        _result(
            "non-streaming c=32: RPS over LiteLLM's",
            r_rps,
            10.0,
            _rps_text(r_rps, figures),
            "≥ 10x",
            at_most=False,
        ),
        _result(
            "c=1 REST: added latency p50 vs the minimal relay's",
            r_lat,
            1.5,
            _added_text(r_lat, mesh_lat, relay_lat),
            "≤ 1.5x",
            at_most=True,
        ),
        _result(
            "c=1 REST: added TTFT p50 vs the minimal relay's",
            r_ttft,
            1.5,
            _added_text(r_ttft, mesh_ttft, relay_ttft),
            "≤ 1.5x",
            at_most=True,
        ),
        _result(
            "gRPC via imesh.Client: p50 over the bare grpc.aio hop",
            grpc_over,
            0.5,
            f"+{grpc_over:.2f} ms ({grpc_p50:.2f} vs {hop_p50:.2f} ms)"
            if grpc_over is not None
            else "-",
            "≤ +0.5 ms",
            at_most=True,
        ),
        _result(
            "mesh RSS across rounds (after each round)",
            growth,
            RSS_GROWTH_LIMIT,
            f"{growth:+.1%} first to last round" if growth is not None else "-",
            f"flat (≤ +{RSS_GROWTH_LIMIT:.0%})",
            at_most=True,
        ),
    ]
