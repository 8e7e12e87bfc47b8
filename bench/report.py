"""The benchmark's numbers: per-scenario measurements of each subject in each round, the
figures a subject is judged by (the median over rounds), and their JSON form."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.load import LoadResult

# Busy (on a CPU or ready for one) this share of a run, the load generator, not the server,
# limited its throughput.
CLIENT_BOUND = 0.9
# The load generator's key in a measurement's cpu_s and wait_s.
CLIENT = "client"
MIB = 1024 * 1024


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
    """One scenario run once against one subject."""

    scenario: str
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
    # Completion tokens of every successful answer, summed: the tokens relayed.
    tokens: int
    # Distinct token counts the answers reported (one value when every answer agrees).
    prompt_tokens: list[int]
    completion_tokens: list[int]
    edge_overhead_ms: Percentiles | None
    # CPU seconds each process spent over the run ("client", "upstream", "mesh", ...).
    cpu_s: dict[str, float]
    # Seconds each server process waited on its core's run queue over the run: time it was
    # ready while something else ran there (other work on a shared machine).
    wait_s: dict[str, float]
    # Share of the wall time the load generator's process spent on CPU.
    client_busy: float

    @classmethod
    def of(
        cls,
        scenario: str,
        run: LoadResult,
        stream: bool,
        cpu_s: Mapping[str, float],
        wait_s: Mapping[str, float] | None = None,
    ) -> Measurement:
        samples = run.samples
        overheads = [s.edge_overhead_ms / 1000.0 for s in samples if s.edge_overhead_ms is not None]
        ok = len(samples)
        return cls(
            scenario=scenario,
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
            tokens=sum(s.completion_tokens for s in samples),
            prompt_tokens=sorted({s.prompt_tokens for s in samples}),
            completion_tokens=sorted({s.completion_tokens for s in samples}),
            edge_overhead_ms=Percentiles.of_seconds(overheads),
            cpu_s={CLIENT: run.client_cpu_s, **cpu_s},
            wait_s=dict(wait_s or {}),
            client_busy=run.client_cpu_s / run.wall_s if run.wall_s > 0 else 0.0,
        )

    def busy(self, process: str) -> float | None:
        """Share of the run `process` was on a CPU or ready to run on one (waiting on its
        run queue), not idle: near 1, it had work all along and set the pace. Other work on
        a shared core does not raise it, as a core's own busy share would."""
        cpu = self.cpu_s.get(process)
        if cpu is None or self.wall_s <= 0:
            return None
        return (cpu + self.wait_s.get(process, 0.0)) / self.wall_s

    @property
    def load_generator_busy(self) -> float:
        """Its CPU and run-queue wait; its CPU alone where the wait was not read."""
        busy = self.busy(CLIENT) if CLIENT in self.wait_s else None
        return self.client_busy if busy is None else busy

    @property
    def load_generator_bound(self) -> bool:
        """The load generator had work all along: the RPS is (at least partly) the harness's."""
        return self.load_generator_busy >= CLIENT_BOUND

    def cpu_ms_per_request(self, process: str) -> float | None:
        spent = self.cpu_s.get(process)
        return None if spent is None or self.ok == 0 else spent * 1000.0 / self.ok

    def wait_ms_per_request(self, process: str) -> float | None:
        waited = self.wait_s.get(process)
        return None if waited is None or self.ok == 0 else waited * 1000.0 / self.ok

    def cpu_us_per_token(self, process: str) -> float | None:
        spent = self.cpu_s.get(process)
        return None if spent is None or self.tokens == 0 else spent * 1e6 / self.tokens


@dataclass(frozen=True, slots=True)
class Round:
    """Every scenario once, with the server's resident memory before, at most during, after."""

    index: int
    measurements: dict[str, Measurement]
    rss_idle: int | None
    rss_peak: int | None
    rss_after: int | None


@dataclass(frozen=True, slots=True)
class Figures:
    """What a subject is judged by, each the median over rounds (None: not measured).
    Milliseconds, except CPU per token (microseconds) and RSS (bytes, one per round)."""

    latency_p50: float | None = None
    latency_p99: float | None = None
    ttft_p50: float | None = None
    rps: float | None = None
    cpu_ms_per_request: float | None = None
    cpu_us_per_token: float | None = None
    # The mesh edge's own time (x-imesh-edge-overhead-ms), p50 at concurrency 1.
    edge_own_p50: float | None = None
    # What the server waited for its core per request at concurrency 1 (mean).
    wait_ms_per_request: float | None = None
    # Shares of the run at concurrency N the load generator and the server were busy (on a
    # CPU or ready for one): near 1, that process set the pace.
    load_generator_busy: float | None = None
    server_busy: float | None = None
    rss_idle: list[int | None] = field(default_factory=list)
    rss_peak: list[int | None] = field(default_factory=list)
    rss_after: list[int | None] = field(default_factory=list)

    @property
    def load_generator_bound(self) -> bool:
        """The RPS at concurrency N is (at least partly) the harness's."""
        return self.load_generator_busy is not None and self.load_generator_busy >= CLIENT_BOUND


def round_figures(r: Round, server: str) -> Figures:
    """One round's figures; scenarios: latency, throughput, ttft, tokens."""
    m = r.measurements
    lat = m["latency"].latency_ms if "latency" in m else None
    ttft = m["ttft"].ttft_ms if "ttft" in m else None
    thr = m.get("throughput")
    tok = m.get("tokens")
    return Figures(
        latency_p50=lat.p50 if lat else None,
        latency_p99=lat.p99 if lat else None,
        ttft_p50=ttft.p50 if ttft else None,
        rps=thr.rps if thr else None,
        cpu_ms_per_request=thr.cpu_ms_per_request(server) if thr else None,
        cpu_us_per_token=tok.cpu_us_per_token(server) if tok else None,
        edge_own_p50=_p50(m["latency"].edge_overhead_ms) if "latency" in m else None,
        wait_ms_per_request=m["latency"].wait_ms_per_request(server) if "latency" in m else None,
        load_generator_busy=thr.load_generator_busy if thr else None,
        server_busy=thr.busy(server) if thr else None,
        rss_idle=[r.rss_idle],
        rss_peak=[r.rss_peak],
        rss_after=[r.rss_after],
    )


def _p50(values: Percentiles | None) -> float | None:
    return values.p50 if values is not None else None


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


@dataclass(frozen=True, slots=True)
class SubjectReport:
    """One path measured over rounds: a server (or the upstream itself) behind a client."""

    key: str
    name: str
    description: str
    # The process whose CPU and memory are this subject's ("mesh", "relay", ...).
    server: str
    rounds: list[Round]
    notes: list[str] = field(default_factory=list)

    def figures(self) -> Figures:
        per_round = [round_figures(r, self.server) for r in self.rounds]

        def med(get: Callable[[Figures], float | None]) -> float | None:
            return _median([get(f) for f in per_round])

        return Figures(
            latency_p50=med(lambda f: f.latency_p50),
            latency_p99=med(lambda f: f.latency_p99),
            ttft_p50=med(lambda f: f.ttft_p50),
            rps=med(lambda f: f.rps),
            cpu_ms_per_request=med(lambda f: f.cpu_ms_per_request),
            cpu_us_per_token=med(lambda f: f.cpu_us_per_token),
            edge_own_p50=med(lambda f: f.edge_own_p50),
            wait_ms_per_request=med(lambda f: f.wait_ms_per_request),
            load_generator_busy=med(lambda f: f.load_generator_busy),
            server_busy=med(lambda f: f.server_busy),
            rss_idle=[r.rss_idle for r in self.rounds],
            rss_peak=[r.rss_peak for r in self.rounds],
            rss_after=[r.rss_after for r in self.rounds],
        )

    @property
    def errors(self) -> int:
        return sum(m.errors for r in self.rounds for m in r.measurements.values())


@dataclass(slots=True)
class BenchReport:
    settings: dict[str, Any]
    environment: dict[str, Any]
    subjects: list[SubjectReport] = field(default_factory=list)
    # Paths not measured, with why (e.g. {"litellm": "disabled (--no-litellm)"}).
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Subject key -> a py-spy summary (markdown), when the run profiled it.
    profiles: dict[str, str] = field(default_factory=dict)
    total_s: float = 0.0

    def subject(self, key: str) -> SubjectReport | None:
        return next((s for s in self.subjects if s.key == key), None)

    def figures(self) -> dict[str, Figures]:
        return {s.key: s.figures() for s in self.subjects}

    @property
    def all_ok(self) -> bool:
        return all(s.errors == 0 for s in self.subjects)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["figures"] = {k: asdict(f) for k, f in self.figures().items()}
        return data

    def write_json(self, path: str | Path, extra: Mapping[str, Any] | None = None) -> None:
        data = {**self.to_dict(), **(extra or {})}
        Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
