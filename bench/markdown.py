"""LATEST.md: a run's environment, the targets it met or missed, the figures of each subject
(median over rounds) and every round's own figures."""

from __future__ import annotations

from collections.abc import Sequence

from bench.report import CLIENT_BOUND, MIB, BenchReport, Figures, round_figures
from bench.targets import DIRECT, TargetResult

HARNESS_MARK = " *"
HARNESS_NOTE = (
    "Busy @c: the share of the run at concurrency N that the load generator / the server "
    "process was on a CPU or ready to run on one (its CPU plus its run-queue wait, from "
    "schedstat; summed over threads, so several can take it past 100%), not idle waiting "
    "for the other: the one near 100% set the pace. "
    f"RPS{HARNESS_MARK}: the load generator was at least {CLIENT_BOUND:.0%} busy, so that "
    "RPS is (at least partly) the harness's, a floor for the subject's own."
)
NOISE = (
    "Figures are from a shared 2-core machine while other work ran on it; absolute numbers "
    "move by 15-50% between runs. Compare the ratios: they come from one run, each "
    "scenario measured on every subject in turn, seconds apart."
)


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:.1f}"


def load_text(value: object) -> str:
    if not isinstance(value, list | tuple):
        return "-"
    return " / ".join(f"{v:.1f}" for v in value)


def _added(value: float | None, base: float | None) -> str:
    return "-" if value is None or base is None else f"{value - base:.2f}"


def _rss(values: Sequence[int | None]) -> str:
    return " / ".join(_mib(v) for v in values) or "-"


def _rps(f: Figures) -> str:
    """RPS at concurrency N, starred when the load generator's core set the pace."""
    return _f(f.rps, 0) + (HARNESS_MARK if f.rps is not None and f.load_generator_bound else "")


def _busy(f: Figures) -> str:
    """How busy the load generator and the server kept themselves at concurrency N."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    if f.load_generator_busy is None and f.server_busy is None:
        return "-"
    return f"{pct(f.load_generator_busy)} / {pct(f.server_busy)}"


def to_markdown(report: BenchReport, results: Sequence[TargetResult]) -> str:
    env, s = report.environment, report.settings
    figures = report.figures()
    base = figures.get(DIRECT, Figures())
    lines = [
        "# Benchmark: latest run",
        "",
        f"- date: {env.get('date')}; commit {env.get('commit')}; took {report.total_s:.0f} s",
        f"- machine: {env.get('cpu')}, {env.get('cpus')} CPUs; {env.get('platform')}; "
        f"Python {env.get('python')}",
        f"- load average (1, 5, 15 min) at start: {load_text(env.get('load_average_at_start'))}, "
        f"at end: {load_text(env.get('load_average_at_end'))}",
        f"- {env.get('pinning')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items()),
        f"- {s['rounds']} rounds; per round and subject: non-streaming {s['requests']} requests "
        f"at concurrency 1 and {s['throughput_requests']} at {s['concurrency']} "
        f"({s['tokens']} tokens each); streaming TTFT {s['requests']} requests at 1; token "
        f"streaming {s['streams']} concurrent streams x {s['stream_tokens']} tokens, "
        f"{s['stream_waves']} waves. Warm-up {s['warmup']} per scenario.",
        "",
        f"> {NOISE}",
        "",
        "## Targets (this run)",
        "",
        "| target | measured | limit | verdict |",
        "| --- | --- | --- | --- |",
    ]
    for t in results:
        lines.append(f"| {t.name} | {t.value_text} | {t.limit_text} | **{t.verdict.value}** |")
    lines += [
        "",
        "## Figures (median over rounds)",
        "",
        "Added: minus the upstream called directly. CPU: the subject's own server process, "
        "read from /proc over the measured window (the direct row shows the upstream's). "
        "RSS: that process, per round. Core wait: what that process waited, ready to run, "
        "while something else ran on its core (schedstat), per request at concurrency 1: "
        "other work on the machine, paid in latency.",
        "",
        f"{HARNESS_NOTE}",
        "",
        "| subject | p50 ms | added p50 | added p99 | core wait ms/req @1 | RPS @c "
        "| busy @c load gen / server | CPU ms/req @c | TTFT p50 ms | added TTFT "
        "| CPU µs/token | RSS idle MiB "
        "| RSS under load | RSS after |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| --- | --- | --- |",
    ]
    for subject in report.subjects:
        f = figures[subject.key]
        lines.append(
            f"| {subject.name} | {_f(f.latency_p50)} | {_added(f.latency_p50, base.latency_p50)} "
            f"| {_added(f.latency_p99, base.latency_p99)} | {_f(f.wait_ms_per_request)} "
            f"| {_rps(f)} | {_busy(f)} | {_f(f.cpu_ms_per_request)} | {_f(f.ttft_p50)} "
            f"| {_added(f.ttft_p50, base.ttft_p50)} | {_f(f.cpu_us_per_token, 1)} "
            f"| {_rss(f.rss_idle)} | {_rss(f.rss_peak)} | {_rss(f.rss_after)} |"
        )
    lines += [
        "",
        "## Per round",
        "",
        "| subject | round | p50 ms | p99 ms | core wait ms/req @1 | RPS @c "
        "| busy @c load gen / server | CPU ms/req @c "
        "| TTFT p50 ms | CPU µs/token | RSS idle / load / after MiB | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for subject in report.subjects:
        for r in subject.rounds:
            f = round_figures(r, subject.server)
            errors = sum(m.errors for m in r.measurements.values())
            lines.append(
                f"| {subject.name} | {r.index + 1} | {_f(f.latency_p50)} | {_f(f.latency_p99)} "
                f"| {_f(f.wait_ms_per_request)} | {_rps(f)} | {_busy(f)} "
                f"| {_f(f.cpu_ms_per_request)} "
                f"| {_f(f.ttft_p50)} "
                f"| {_f(f.cpu_us_per_token, 1)} "
                f"| {_mib(r.rss_idle)} / {_mib(r.rss_peak)} / {_mib(r.rss_after)} | {errors} |"
            )
    lines += ["", "## Subjects", ""]
    for subject in report.subjects:
        lines.append(f"- **{subject.name}**: {subject.description}")
    notes = [
        f"{subject.name}: the edge's own time (x-imesh-edge-overhead-ms) p50 "
        f"{figures[subject.key].edge_own_p50:.2f} ms at concurrency 1"
        for subject in report.subjects
        if figures[subject.key].edge_own_p50 is not None
    ]
    notes += report.notes
    for subject in report.subjects:
        for r in subject.rounds:
            for m in r.measurements.values():
                if m.load_generator_bound:
                    notes.append(
                        f"{subject.name}, round {r.index + 1}, {m.scenario} (concurrency "
                        f"{m.concurrency}): the load generator was "
                        f"{m.load_generator_busy:.0%} busy (it set the pace)"
                    )
                if m.errors:
                    notes.append(
                        f"ERRORS on {subject.name}, round {r.index + 1}, {m.scenario}: "
                        f"{m.errors}/{m.requests}: {'; '.join(m.first_errors)}"
                    )
    notes += [f"{name}: {why}, not measured" for name, why in report.skipped.items()]
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
