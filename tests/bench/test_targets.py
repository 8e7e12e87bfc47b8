"""The issue's targets, computed from figures of one run: each bound and each ratio can be met,
missed, or not measured when a subject is missing."""

from __future__ import annotations

from bench.load import LoadResult, Sample
from bench.markdown import to_markdown
from bench.report import BenchReport, Figures, Measurement, Round, SubjectReport
from bench.targets import (
    DIRECT,
    GRPC_HOP,
    LITELLM,
    MESH,
    MESH_GRPC,
    RELAY,
    Verdict,
    evaluate,
    rss_growth,
)

SETTINGS = {
    "rounds": 1,
    "requests": 1,
    "throughput_requests": 1,
    "concurrency": 32,
    "tokens": 16,
    "streams": 16,
    "stream_tokens": 256,
    "stream_waves": 1,
    "warmup": 0,
}


def _figures(**mesh: object) -> dict[str, Figures]:
    """A run where the mesh meets every target, with `mesh` overriding its figures."""
    good = {
        "latency_p50": 1.4,
        "ttft_p50": 1.4,
        "rps": 1000.0,
        "cpu_ms_per_request": 0.8,
        "cpu_us_per_token": 20.0,
        "rss_after": [100, 101, 102],
    }
    return {
        DIRECT: Figures(latency_p50=1.0, ttft_p50=1.0),
        RELAY: Figures(latency_p50=1.3, ttft_p50=1.3, cpu_us_per_token=14.0),
        LITELLM: Figures(rps=50.0, cpu_us_per_token=1200.0),
        GRPC_HOP: Figures(latency_p50=0.9),
        MESH_GRPC: Figures(latency_p50=1.3),
        MESH: Figures(**{**good, **mesh}),  # type: ignore[arg-type]
    }


def _verdicts(figures: dict[str, Figures]) -> list[Verdict]:
    return [r.verdict for r in evaluate(figures)]


def test_a_mesh_within_every_bound_meets_every_target() -> None:
    assert _verdicts(_figures()) == [Verdict.MET] * 8


def test_cpu_per_token_over_twice_the_relays_misses_the_streaming_target() -> None:
    results = evaluate(_figures(cpu_us_per_token=28.1))  # 2.007x the relay's 14
    assert results[0].verdict is Verdict.MISSED
    assert results[0].value is not None
    assert round(results[0].value, 3) == 2.007
    # Still 42x less than LiteLLM's 1200 µs.
    assert results[1].verdict is Verdict.MET


def test_less_than_forty_times_below_litellm_misses_that_target() -> None:
    assert evaluate(_figures(cpu_us_per_token=31.0))[1].verdict is Verdict.MISSED  # 38.7x


def test_request_cpu_and_rps_bounds_are_checked_at_their_edges() -> None:
    at_edge = evaluate(_figures(cpu_ms_per_request=1.0, rps=500.0))
    assert (at_edge[2].verdict, at_edge[3].verdict) == (Verdict.MET, Verdict.MET)
    over = evaluate(_figures(cpu_ms_per_request=1.01, rps=499.0))
    assert (over[2].verdict, over[3].verdict) == (Verdict.MISSED, Verdict.MISSED)


def test_added_latency_and_ttft_are_compared_to_what_the_relay_adds_not_to_totals() -> None:
    # The relay adds 0.3 ms over direct; 1.5x of that is 0.45 ms added, so 1.45 ms total.
    results = evaluate(_figures(latency_p50=1.46, ttft_p50=1.45))
    assert (results[4].verdict, results[5].verdict) == (Verdict.MISSED, Verdict.MET)


def test_grpc_path_may_add_half_a_millisecond_over_the_bare_hop() -> None:
    figures = _figures()
    figures[MESH_GRPC] = Figures(latency_p50=1.41)  # hop 0.9 + 0.51
    assert evaluate(figures)[6].verdict is Verdict.MISSED


def test_rss_growing_across_rounds_is_not_flat() -> None:
    assert rss_growth([100, 103, 110]) == 0.1
    assert rss_growth([100, None]) is None
    assert evaluate(_figures(rss_after=[100, 104, 110]))[7].verdict is Verdict.MISSED


def test_a_target_whose_subject_was_not_measured_says_so() -> None:
    figures = _figures()
    del figures[LITELLM]
    results = evaluate(figures)
    assert (results[1].verdict, results[3].verdict) == (Verdict.NOT_MEASURED,) * 2
    assert results[1].value_text == "-"


def test_latest_md_lists_every_target_with_its_verdict() -> None:
    report = BenchReport(
        settings=SETTINGS,
        environment={"date": "d", "versions": {"grpcio": "1"}},
        skipped={"litellm": "disabled (--no-litellm)"},
    )
    results = evaluate(_figures(cpu_ms_per_request=3.0))
    text = to_markdown(report, results)
    assert "| non-streaming c=32: gateway CPU per request | 3.00 ms | ≤ 1 ms | **missed** |" in text
    assert text.count("**met**") == 7
    assert "- litellm: disabled (--no-litellm), not measured" in text


def test_a_relay_that_added_nothing_gives_no_ratio_and_says_why() -> None:
    figures = _figures()
    figures[RELAY] = Figures(latency_p50=0.95, ttft_p50=1.3, cpu_us_per_token=14.0)
    result = evaluate(figures)[4]
    assert result.verdict is Verdict.NOT_MEASURED
    assert result.value_text == "the relay added -0.05 ms"


def test_a_harness_bound_rps_is_starred_and_named_in_the_rps_target() -> None:
    figures = _figures(load_generator_busy=0.95, server_busy=0.6)
    assert evaluate(figures)[3].value_text == (
        "20.0x (1000 vs 50 RPS); the load generator set the pace of mesh"
    )
    assert evaluate(_figures(load_generator_busy=0.5))[3].value_text == "20.0x (1000 vs 50 RPS)"

    run = LoadResult(10, 32, 1.0, 0.5, [Sample(0.001, None, 5, 16, 48)] * 10)
    paced = Measurement.of("throughput", run, False, {"s": 0.5}, {"client": 0.45, "s": 0.1})
    free = Measurement.of("throughput", run, False, {"s": 0.9}, {"client": 0.0, "s": 0.09})
    report = BenchReport(settings=SETTINGS, environment={})
    report.subjects = [
        SubjectReport(key, name, "d", "s", [Round(0, {"throughput": m}, 1, 1, 1)])
        for key, name, m in ((MESH, "mesh REST edge", paced), (RELAY, "relay", free))
    ]
    text = to_markdown(report, evaluate(report.figures()))
    assert "RPS *: the load generator was at least 90% busy" in text
    rows = [line for line in text.splitlines() if line.startswith(("| mesh REST", "| relay"))]
    assert ["| 10 * | 95% / 60% |" in row for row in rows] == [True, False, True, False]
    assert ["| 10 | 50% / 99% |" in row for row in rows] == [False, True, False, True]
    assert (
        "mesh REST edge, round 1, throughput (concurrency 32): the load generator was 95% busy "
        "(it set the pace)"
    ) in text
