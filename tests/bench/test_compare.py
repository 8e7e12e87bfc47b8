"""Before and after: an earlier run's JSON read back and set beside this run's figures."""

from __future__ import annotations

from pathlib import Path

from bench.compare import load_figures, to_markdown
from bench.load import LoadResult, Sample
from bench.report import BenchReport, Measurement, Round, SubjectReport


def _report(commit: str, latency_ms: float, cpu_s: float) -> BenchReport:
    samples = [Sample(latency_ms / 1000, None, 5, 16, 48)] * 4
    run = LoadResult(4, 1, 1.0, 0.1, samples)
    m = {
        name: Measurement.of(name, run, False, {"mesh": cpu_s}, {"mesh": 0.0})
        for name in ("latency", "throughput")
    }
    subject = SubjectReport("mesh-rest", "mesh REST edge", "d", "mesh", [Round(0, m, 1, 2, 3)])
    return BenchReport({}, {"commit": commit, "date": "today"}, [subject])


def test_an_earlier_runs_json_reads_back_into_the_figures_it_was_written_from(
    tmp_path: Path,
) -> None:
    old = _report("abc123", 4.0, 0.008)
    old.write_json(tmp_path / "LATEST.json", {"targets": []})

    figures, env = load_figures(tmp_path / "LATEST.json")

    assert figures == old.figures()
    assert env["commit"] == "abc123"


def test_before_and_after_are_set_side_by_side_with_their_ratio(tmp_path: Path) -> None:
    old = _report("abc123", 4.0, 0.008)
    old.write_json(tmp_path / "LATEST.json")
    before = load_figures(tmp_path / "LATEST.json")

    text = to_markdown(*before, _report("def456", 2.0, 0.004))

    assert text.startswith("## Against commit abc123 (today)")
    assert "| mesh REST edge | p50 ms @1 | 4.00 | 2.00 | 0.50x |" in text
    assert "| mesh REST edge | CPU ms/req @c | 2.00 | 1.00 | 0.50x |" in text
    assert "CPU µs/token" not in text  # measured in neither run
