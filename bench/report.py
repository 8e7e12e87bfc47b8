"""The benchmark's numbers: percentiles, per-path summaries, the comparison to the baseline,
as a markdown table and as JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.load import LoadResult

# Above this share of its core, the load generator, not the server, limits throughput.
CLIENT_BOUND = 0.9


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`, interpolated linearly between ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Milliseconds."""

    p50: float
    p90: float
    p99: float

    @classmethod
    def of_seconds(cls, values: Sequence[float]) -> Percentiles | None:
        if not values:
            return None
        ms = [v * 1000.0 for v in values]
        return cls(percentile(ms, 50), percentile(ms, 90), percentile(ms, 99))


@dataclass(frozen=True, slots=True)
class Measurement:
    """One load run on one path, summarized."""

    requests: int
    concurrency: int
    stream: bool
    ok: int
    errors: int
    first_errors: list[str]
    wall_s: float
    rps: float
    latency_ms: Percentiles | None
    ttft_ms: Percentiles | None
    # Distinct token counts the answers reported (one value when every answer agrees).
    prompt_tokens: list[int]
    completion_tokens: list[int]
    edge_overhead_ms: Percentiles | None
    # CPU time per request of each process ("client", "upstream", "mesh", ...), in ms.
    cpu_ms_per_request: dict[str, float]
    # Share of the wall time the load generator spent on CPU: near 1, it set the pace.
    client_busy: float

    @classmethod
    def of(cls, run: LoadResult, stream: bool, server_cpu_s: Mapping[str, float]) -> Measurement:
        samples = run.samples
        overheads = [s.edge_overhead_ms / 1000.0 for s in samples if s.edge_overhead_ms is not None]
        ok = len(samples)
        cpu = {"client": run.client_cpu_s, **server_cpu_s}
        return cls(
            requests=run.requests,
            concurrency=run.concurrency,
            stream=stream,
            ok=ok,
            errors=run.errors,
            first_errors=list(run.first_errors),
            wall_s=run.wall_s,
            rps=ok / run.wall_s if run.wall_s > 0 else 0.0,
            latency_ms=Percentiles.of_seconds([s.latency_s for s in samples]),
            ttft_ms=Percentiles.of_seconds([s.ttft_s for s in samples if s.ttft_s is not None]),
            prompt_tokens=sorted({s.prompt_tokens for s in samples}),
            completion_tokens=sorted({s.completion_tokens for s in samples}),
            edge_overhead_ms=Percentiles.of_seconds(overheads),
            cpu_ms_per_request={k: v * 1000.0 / max(ok, 1) for k, v in cpu.items()},
            client_busy=run.client_cpu_s / run.wall_s if run.wall_s > 0 else 0.0,
        )


@dataclass(frozen=True, slots=True)
class PathReport:
    """One path measured three ways: latency and TTFT one call at a time, then throughput."""

    name: str
    description: str
    # The process whose CPU the table shows for this path ("upstream", "mesh", ...).
    server: str
    latency: Measurement
    ttft: Measurement
    throughput: Measurement

    @property
    def measurements(self) -> tuple[Measurement, Measurement, Measurement]:
        return self.latency, self.ttft, self.throughput


@dataclass(frozen=True, slots=True)
class Comparison:
    """What a path adds over the baseline, at p50, one call at a time."""

    path: str
    baseline: str
    added_latency_ms: float
    latency_ratio: float
    added_ttft_ms: float
    ttft_ratio: float
    rps_ratio: float

    @classmethod
    def of(cls, path: PathReport, baseline: PathReport) -> Comparison | None:
        lat, base_lat = path.latency.latency_ms, baseline.latency.latency_ms
        ttft, base_ttft = path.ttft.ttft_ms, baseline.ttft.ttft_ms
        if lat is None or base_lat is None or ttft is None or base_ttft is None:
            return None
        base_rps = baseline.throughput.rps
        return cls(
            path=path.name,
            baseline=baseline.name,
            added_latency_ms=lat.p50 - base_lat.p50,
            latency_ratio=lat.p50 / base_lat.p50,
            added_ttft_ms=ttft.p50 - base_ttft.p50,
            ttft_ratio=ttft.p50 / base_ttft.p50,
            rps_ratio=path.throughput.rps / base_rps if base_rps > 0 else 0.0,
        )


@dataclass(slots=True)
class BenchReport:
    settings: dict[str, Any]
    environment: dict[str, Any]
    paths: list[PathReport] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    # Paths not measured, with why (e.g. {"litellm": "not installed"}).
    skipped: dict[str, str] = field(default_factory=dict)
    total_s: float = 0.0

    @property
    def all_ok(self) -> bool:
        return all(m.errors == 0 for p in self.paths for m in p.measurements)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(values: Percentiles | None, which: str) -> str:
    return "-" if values is None else f"{getattr(values, which):.2f}"


def to_markdown(report: BenchReport) -> str:
    """The table (one row per path) and the lines that qualify it."""
    s = report.settings
    conc = s["concurrency"]
    added = {c.path: c for c in report.comparisons}
    lines = [
        f"| path | p50 ms | p90 ms | p99 ms | TTFT p50 ms | RPS @{conc} | added p50 ms "
        f"| x p50 | added TTFT ms | edge header p50 ms | server CPU ms/req @{conc} |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in report.paths:
        lat, ttft, thr = p.latency.latency_ms, p.ttft.ttft_ms, p.throughput
        c = added.get(p.name)
        vs_baseline = (
            f"{c.added_latency_ms:.2f} | {c.latency_ratio:.2f} | {c.added_ttft_ms:.2f}"
            if c is not None
            else "- | - | -"
        )
        lines.append(
            f"| {p.name} | {_pct(lat, 'p50')} | {_pct(lat, 'p90')} | {_pct(lat, 'p99')} "
            f"| {_pct(ttft, 'p50')} | {thr.rps:.0f} | {vs_baseline} "
            f"| {_pct(p.latency.edge_overhead_ms, 'p50')} "
            f"| {_ms(thr.cpu_ms_per_request.get(p.server))} |"
        )
    lines.append("")
    lines.append(
        f"{s['requests']} requests per measurement after {s['warmup']} warm-up; latency and "
        f"TTFT one call at a time (TTFT: streaming), RPS non-streaming at concurrency {conc}; "
        f"{s['tokens']} completion tokens per answer."
    )
    lines.append(
        "added: p50 minus the baseline's p50; server CPU: the path's own server process "
        "(the mesh row excludes the upstream's)."
    )
    lines.append(str(report.environment.get("pinning", "")))
    for p in report.paths:
        if p.throughput.client_busy >= CLIENT_BOUND:
            lines.append(
                f"{p.name}: RPS bounded by the load generator (its core "
                f"{p.throughput.client_busy:.0%} busy, "
                f"{p.throughput.cpu_ms_per_request['client']:.2f} ms CPU per request)"
            )
    for name, why in report.skipped.items():
        lines.append(f"{name}: {why}, skipped")
    errors = [(p.name, m) for p in report.paths for m in p.measurements if m.errors]
    for name, m in errors:
        lines.append(f"ERRORS on {name}: {m.errors}/{m.requests}: {'; '.join(m.first_errors)}")
    return "\n".join(lines)
