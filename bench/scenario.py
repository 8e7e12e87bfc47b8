"""The standard benchmark: upstream direct (baseline), then the mesh's REST edge and gRPC API
in front of the same upstream, each server in its own process; every process stopped at the end.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from bench import litellm_proxy
from bench.load import GrpcTarget, HttpTarget, Target, run_load
from bench.processes import BenchError, Pinning, ServerProcess, pin
from bench.report import BenchReport, Comparison, Measurement, PathReport
from bench.upstream import READY_PREFIX

UPSTREAM_MODEL = "bench-model"
MESH_ALIAS = "bench"
ROUTER_READY = "router gRPC on "
EDGE_READY = "edge HTTP on "

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class BenchSettings:
    requests: int = 500
    concurrency: int = 32
    tokens: int = 16
    warmup: int = 50
    pin: bool = True
    litellm: bool = True
    startup_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("requests", "concurrency", "tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.warmup < 0:
            raise ValueError("warmup must be >= 0")


def mesh_config(upstream_url: str) -> dict[str, Any]:
    """One openai_compatible provider on the upstream (no key), one deployment, one alias."""
    return {
        "providers": {"upstream": {"kind": "openai_compatible", "base_url": upstream_url}},
        "deployments": [
            {"name": "upstream-model", "provider": "upstream", "model": UPSTREAM_MODEL}
        ],
        "aliases": {MESH_ALIAS: {"candidates": ["upstream-model"], "policy": "priority"}},
        "router": {"drain_s": 1},
    }


async def run_scenario(settings: BenchSettings, log: Log = lambda _: None) -> BenchReport:
    """Measure every path; raises BenchError when a server does not start or a path fails
    every warm-up request. Every process started here is stopped before this returns."""
    t0 = time.perf_counter()
    pinning = Pinning.plan(settings.pin)
    report = BenchReport(settings=asdict(settings), environment=_environment(pinning))
    log(pinning.note)
    procs: list[ServerProcess] = []
    original_cpus = os.sched_getaffinity(0) if pinning.client_cpu is not None else None
    timeout = settings.startup_timeout_s
    try:
        pin(0, pinning.client_cpu)
        with tempfile.TemporaryDirectory(prefix="imesh-bench-") as tmp:
            log(f"starting the upstream ({settings.tokens} tokens per answer)")
            upstream = _start(procs, "upstream", _upstream_argv(settings.tokens), pinning)
            upstream_url = (await upstream.wait_line(READY_PREFIX, timeout))[len(READY_PREFIX) :]
            upstream_url += "/v1"

            log("starting the mesh (imesh up)")
            config_path = _write_yaml(Path(tmp, "mesh.yaml"), mesh_config(upstream_url))
            mesh = _start(procs, "mesh", _mesh_argv(str(config_path)), pinning)
            router = (await mesh.wait_line(ROUTER_READY, timeout))[len(ROUTER_READY) :]
            edge_url = (await mesh.wait_line(EDGE_READY, timeout))[len(EDGE_READY) :] + "/v1"

            servers = {"upstream": upstream}
            baseline = await measure_path(
                "upstream direct (baseline)",
                "httpx → upstream",
                "upstream",
                HttpTarget(upstream_url, UPSTREAM_MODEL, connections=settings.concurrency),
                settings,
                servers,
                log,
            )
            report.paths.append(baseline)
            servers = {"mesh": mesh, "upstream": upstream}
            report.paths.append(
                await measure_path(
                    "mesh REST edge",
                    "httpx → edge → in-process router → adapter → upstream",
                    "mesh",
                    HttpTarget(edge_url, MESH_ALIAS, connections=settings.concurrency),
                    settings,
                    servers,
                    log,
                )
            )
            report.paths.append(
                await measure_path(
                    "mesh gRPC (imesh.Client)",
                    "imesh.Client → router gRPC → adapter → upstream",
                    "mesh",
                    GrpcTarget(router, MESH_ALIAS),
                    settings,
                    servers,
                    log,
                )
            )
            mesh.stop()  # its core is the servers' core: LiteLLM gets it to itself

            why = litellm_proxy.unavailable() if settings.litellm else "disabled (--no-litellm)"
            if why is None:
                path = await _measure_litellm(
                    procs, upstream, upstream_url, tmp, settings, pinning, log
                )
                report.paths.append(path)
            else:
                report.skipped["litellm"] = why
                log(f"litellm: {why}, skipped")
        report.comparisons = [
            c for p in report.paths[1:] if (c := Comparison.of(p, baseline)) is not None
        ]
    finally:
        for proc in reversed(procs):
            proc.stop()
        report.environment["processes"] = {proc.name: proc.pid for proc in procs}
        if original_cpus is not None:
            os.sched_setaffinity(0, original_cpus)
    report.total_s = time.perf_counter() - t0
    return report


async def measure_path(
    name: str,
    description: str,
    server: str,
    target: Target,
    settings: BenchSettings,
    servers: Mapping[str, ServerProcess],
    log: Log,
) -> PathReport:
    """Warm-up, then latency and TTFT one call at a time, then throughput at concurrency."""
    n, conc = settings.requests, settings.concurrency
    try:
        if settings.warmup:
            log(f"{name}: warm-up")
            for stream in (False, True):
                warm = await run_load(partial(target.call, stream), settings.warmup, conc)
                if not warm.samples:
                    raise BenchError(f"{name}: every warm-up request failed: {warm.first_errors}")
        log(f"{name}: latency, {n} requests one at a time")
        latency = await _measure(target, False, n, 1, servers)
        log(f"{name}: streaming TTFT, {n} requests one at a time")
        ttft = await _measure(target, True, n, 1, servers)
        log(f"{name}: throughput, {n} requests at concurrency {conc}")
        throughput = await _measure(target, False, n, conc, servers)
    finally:
        await target.aclose()
    return PathReport(name, description, server, latency, ttft, throughput)


async def _measure(
    target: Target,
    stream: bool,
    requests: int,
    concurrency: int,
    servers: Mapping[str, ServerProcess],
) -> Measurement:
    before = {name: proc.cpu_seconds() for name, proc in servers.items()}
    run = await run_load(lambda: target.call(stream), requests, concurrency)
    spent: dict[str, float] = {}
    for name, proc in servers.items():
        start, end = before[name], proc.cpu_seconds()
        if start is not None and end is not None:
            spent[name] = end - start
    return Measurement.of(run, stream, spent)


async def _measure_litellm(
    procs: list[ServerProcess],
    upstream: ServerProcess,
    upstream_url: str,
    tmp: str,
    settings: BenchSettings,
    pinning: Pinning,
    log: Log,
) -> PathReport:
    log("starting litellm (second baseline)")
    config = litellm_proxy.config(upstream_url, UPSTREAM_MODEL)
    config_path = _write_yaml(Path(tmp, "litellm.yaml"), config)
    port = litellm_proxy.free_port()
    argv = litellm_proxy.argv(str(config_path), port)
    proc = _start(procs, "litellm", argv, pinning, litellm_proxy.OFFLINE_ENV)
    base_url = f"http://127.0.0.1:{port}"
    await litellm_proxy.wait_ready(proc, base_url, max(settings.startup_timeout_s, 60.0))
    return await measure_path(
        "litellm proxy",
        "httpx → LiteLLM proxy (1 worker) → upstream",
        "litellm",
        HttpTarget(base_url + "/v1", litellm_proxy.MODEL_ALIAS, connections=settings.concurrency),
        settings,
        {"litellm": proc, "upstream": upstream},
        log,
    )


def _start(
    procs: list[ServerProcess],
    name: str,
    argv: list[str],
    pinning: Pinning,
    env: Mapping[str, str] | None = None,
) -> ServerProcess:
    proc = ServerProcess(name, argv, cpu=pinning.server_cpu, env=env)
    procs.append(proc)  # appended at once: the finally block stops it whatever happens next
    return proc


def _write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _upstream_argv(tokens: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.upstream",
        "--listen",
        "127.0.0.1:0",
        "--tokens",
        str(tokens),
    ]


def _mesh_argv(config_path: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "router.cli.main",
        "up",
        "--config",
        config_path,
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ]


def _environment(pinning: Pinning) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pinning": pinning.note,
        "client_cpu": pinning.client_cpu,
        "server_cpu": pinning.server_cpu,
    }
