"""The report's maths: percentiles, CPU per request and per token, medians over rounds."""

from __future__ import annotations

import os
import time

import pytest

from bench.load import LoadResult, Sample
from bench.processes import sched_times
from bench.report import Measurement, Round, SubjectReport, percentile, round_figures


def test_percentile_interpolates_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def _run(latencies_ms: list[float], tokens: int, errors: int = 0) -> LoadResult:
    samples = [Sample(ms / 1000, ms / 2000, 5, tokens, 3 * tokens) for ms in latencies_ms]
    return LoadResult(len(samples) + errors, 1, 2.0, 0.5, samples, errors)


def test_cpu_is_divided_by_successful_requests_and_by_the_tokens_they_relayed() -> None:
    m = Measurement.of("tokens", _run([1.0] * 4, 256, errors=1), True, {"mesh": 0.1024})

    assert m.ok == 4
    assert m.tokens == 4 * 256
    assert m.cpu_ms_per_request("mesh") == pytest.approx(25.6)
    assert m.cpu_us_per_token("mesh") == pytest.approx(100.0)
    assert m.cpu_us_per_token("absent") is None
    assert m.cpu_s["client"] == 0.5
    assert m.rps == pytest.approx(2.0)  # 4 answers in 2 s
    assert m.ttft_ms is not None
    assert m.ttft_ms.p50 == pytest.approx(0.5)


def test_nothing_relayed_gives_no_per_token_figure_rather_than_a_division_by_zero() -> None:
    m = Measurement.of("tokens", _run([], 256, errors=3), True, {"mesh": 0.1})
    assert (m.cpu_us_per_token("mesh"), m.cpu_ms_per_request("mesh")) == (None, None)
    assert m.latency_ms is None


def _round(index: int, p50_ms: float, cpu_s: float, rss: int) -> Round:
    runs = {
        "latency": Measurement.of("latency", _run([p50_ms] * 3, 16), False, {"mesh": cpu_s}),
        "throughput": Measurement.of("throughput", _run([1.0] * 10, 16), False, {"mesh": cpu_s}),
        "ttft": Measurement.of("ttft", _run([p50_ms] * 3, 16), True, {"mesh": cpu_s}),
        "tokens": Measurement.of("tokens", _run([9.0] * 2, 256), True, {"mesh": cpu_s}),
    }
    return Round(index, runs, rss, rss + 10, rss + 1)


def test_a_subjects_figures_are_the_median_over_rounds_and_rss_is_kept_per_round() -> None:
    rounds = [_round(0, 1.0, 0.01, 100), _round(1, 9.0, 0.03, 200), _round(2, 2.0, 0.02, 300)]
    subject = SubjectReport("mesh-rest", "mesh", "d", "mesh", rounds)

    f = subject.figures()

    assert f.latency_p50 == 2.0
    assert f.cpu_ms_per_request == pytest.approx(2.0)  # 20 ms over 10 requests
    assert f.cpu_us_per_token == pytest.approx(0.02e6 / 512)
    assert f.rss_idle == [100, 200, 300]
    assert f.rss_peak == [110, 210, 310]
    assert f.rss_after == [101, 201, 301]
    assert round_figures(rounds[1], "mesh").latency_p50 == 9.0


def test_run_queue_wait_is_divided_by_the_successful_requests() -> None:
    m = Measurement.of("latency", _run([1.0] * 4, 16), False, {"relay": 0.01}, {"relay": 0.02})
    assert m.wait_ms_per_request("relay") == pytest.approx(5.0)
    assert m.wait_ms_per_request("upstream") is None


def test_sched_times_of_a_live_process_grow_with_its_work() -> None:
    before = sched_times(os.getpid())
    # Several clock ticks of CPU (/proc counts CPU time in 10 ms ticks), however busy the machine.
    burn_until = time.process_time() + 0.05
    while time.process_time() < burn_until:
        sum(range(10_000))
    after = sched_times(os.getpid())
    assert before is not None
    assert after is not None
    spent = after - before
    assert spent.cpu_s > 0
    assert spent.wait_s is not None
    assert spent.wait_s >= 0


def test_a_process_busy_with_cpu_and_run_queue_wait_sets_the_pace_at_ninety_percent() -> None:
    run = _run([1.0] * 4, 16)  # 2 s of wall time; the load generator's CPU: 0.5 s
    paced = Measurement.of("throughput", run, False, {"mesh": 1.0}, {"client": 1.4, "mesh": 0.1})
    assert paced.busy("mesh") == pytest.approx(0.55)
    assert paced.busy("absent") is None
    assert paced.load_generator_busy == pytest.approx(0.95)
    assert paced.load_generator_bound
    below = Measurement.of("throughput", run, False, {}, {"client": 1.28})
    assert below.load_generator_busy == pytest.approx(0.89)
    assert not below.load_generator_bound
    # Without schedstat, only its CPU share is known.
    unread = Measurement.of("throughput", run, False, {})
    assert (unread.load_generator_busy, unread.load_generator_bound) == (0.25, False)


def test_figures_carry_how_busy_the_load_generator_and_the_server_were_at_concurrency_n() -> None:
    r = _round(0, 1.0, 0.01, 100)
    runs = dict(r.measurements)
    runs["throughput"] = Measurement.of(
        "throughput", _run([1.0] * 10, 16), False, {"mesh": 1.2}, {"client": 1.44, "mesh": 0.2}
    )
    f = round_figures(Round(0, runs, 1, 2, 3), "mesh")
    assert f.load_generator_busy == pytest.approx(0.97)
    assert f.server_busy == pytest.approx(0.7)
    assert f.load_generator_bound
    assert not round_figures(r, "mesh").load_generator_bound
