"""The standard benchmark: the upstream called directly (the zero baseline), the minimal
relay, a bare gRPC hop, the mesh (REST edge and gRPC API, in each observability mode) and
LiteLLM's proxy, all in front of one upstream, each server in its own process. Within a
round each scenario runs on every subject in turn, so a change in the machine's load hits
them all alike; every process started here is stopped before `run_scenario` returns."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench import grpc_relay, litellm_proxy, minimal_relay, otlp_stub, profile, targets
from bench.environment import describe_environment, load_average
from bench.litellm_env import LiteLLMEnv
from bench.load import GrpcTarget, HttpTarget
from bench.measure import Log, Subject, measure, measure_round, warm_up
from bench.mesh_modes import MeshMode
from bench.plan import BenchSettings, scenarios, settings_dict
from bench.processes import BenchError, Pinning, ServerProcess, Servers, pin
from bench.report import BenchReport, round_figures
from bench.upstream import READY_PREFIX

UPSTREAM_MODEL = "bench-model"
MESH_ALIAS = "bench"
ROUTER_READY = "router gRPC on "
EDGE_READY = "edge HTTP on "
# Each profiled scenario runs this many times: enough samples to rank functions by.
PROFILE_REPEATS = 3


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
    """Measure every subject over `settings.rounds` rounds; BenchError when a server does not
    start, LiteLLM cannot be installed, or a path fails every warm-up request."""
    t0 = time.perf_counter()
    pinning = Pinning.plan(settings.pin)
    report = BenchReport(settings=settings_dict(settings), environment={})
    log(pinning.note)
    original_cpus = os.sched_getaffinity(0) if pinning.client_cpu is not None else None
    servers = Servers(pinning, settings.startup_timeout_s)
    subjects: list[Subject] = []
    try:
        pin(0, pinning.client_cpu)
        litellm_python = None
        if settings.litellm:
            env = LiteLLMEnv()
            if not env.installed():
                log(f"installing LiteLLM into {env.path} (once; later runs reuse it)")
            litellm_python = await asyncio.to_thread(env.ensure)
        else:
            report.skipped[targets.LITELLM] = "disabled (--no-litellm)"
        report.environment = describe_environment(pinning, litellm_python)
        with tempfile.TemporaryDirectory(prefix="imesh-bench-") as tmp:
            await _start_subjects(
                subjects, servers, settings, Path(tmp), litellm_python, report.skipped, log
            )
            for subject in subjects:
                await warm_up(subject, scenarios(settings), settings, log)
            for index in range(settings.rounds):
                log(f"round {index + 1}/{settings.rounds}")
                await measure_round(subjects, index, scenarios(settings), settings)
                for subject in subjects:
                    _log_round(subject, log)
            if settings.profile:
                mesh = next(s for s in subjects if s.key == targets.MESH)
                report.profiles[targets.MESH] = await _profile(mesh, settings, Path(tmp), log)
            collector = next((p for p in servers.started if p.name == "otlp-stub"), None)
            if collector is not None:
                report.notes.append(await _collector_note(servers, collector))
    finally:
        for subject in subjects:
            with contextlib.suppress(Exception):  # closing a client must not hide the cause
                await subject.target.aclose()
        servers.stop_all()
        report.environment["processes"] = {p.name: p.pid for p in servers.started}
        report.environment["load_average_at_end"] = load_average()
        if original_cpus is not None:
            os.sched_setaffinity(0, original_cpus)
    report.subjects = [s.report() for s in subjects]
    report.total_s = time.perf_counter() - t0
    return report


async def _start_subjects(
    subjects: list[Subject],
    servers: Servers,
    settings: BenchSettings,
    tmp: Path,
    litellm_python: Path | None,
    skipped: dict[str, str],
    log: Log,
) -> None:
    """Starts every server and appends its subject to `subjects` as soon as it answers (so
    the caller closes the clients of those that started, whatever fails next)."""
    py = sys.executable
    connections = max(settings.concurrency, settings.streams)
    log(f"starting the upstream ({settings.stream_tokens} tokens unless max_tokens says less)")
    upstream = servers.start(
        "upstream",
        [py, "-m", "bench.upstream", "--tokens", str(settings.stream_tokens)],
        under_test=False,
    )
    upstream_url = await servers.address(upstream, READY_PREFIX) + "/v1"

    def http(url: str, model: str) -> HttpTarget:
        return HttpTarget(url, model, connections=connections)

    subjects.append(
        Subject(
            targets.DIRECT,
            "upstream direct (zero baseline)",
            "HTTP/1.1 load generator → upstream",
            "upstream",
            http(upstream_url, UPSTREAM_MODEL),
            {"upstream": upstream},
        )
    )
    log("starting the minimal relay and the bare gRPC hop")
    relay = servers.start(
        "relay", [py, "-m", "bench.minimal_relay", "--upstream", upstream_url], under_test=True
    )
    hop = servers.start(
        "grpc-hop",
        [py, "-m", "bench.grpc_relay", "--upstream", upstream_url, "--model", UPSTREAM_MODEL],
        under_test=True,
    )
    relay_url = await servers.address(relay, minimal_relay.READY_PREFIX) + "/v1"
    hop_address = await servers.address(hop, grpc_relay.READY_PREFIX)
    subjects.append(
        Subject(
            targets.RELAY,
            "minimal relay (floor)",
            "HTTP/1.1 load generator → aiohttp server + client, orjson per event → upstream",
            "relay",
            http(relay_url, UPSTREAM_MODEL),
            {"relay": relay, "upstream": upstream},
        )
    )
    subjects.append(
        Subject(
            targets.GRPC_HOP,
            "bare grpc.aio hop (floor)",
            "imesh.Client → grpc.aio ChatService → aiohttp → upstream",
            "grpc-hop",
            GrpcTarget(hop_address, MESH_ALIAS),
            {"grpc-hop": hop, "upstream": upstream},
        )
    )
    config_path = _write_yaml(tmp / "mesh.yaml", mesh_config(upstream_url))
    for mode in settings.mesh_modes:
        collector_url = None
        if mode.needs_collector:
            stub = servers.start("otlp-stub", [py, "-m", "bench.otlp_stub"], under_test=False)
            collector_url = await servers.address(stub, otlp_stub.READY_PREFIX)
        name = "mesh" if mode is MeshMode.DEFAULT else f"mesh-{mode.value}"
        log(f"starting the mesh (imesh up, {mode.label})")
        mesh = servers.start(
            name, _mesh_argv(str(config_path)), under_test=True, env=mode.environment(collector_url)
        )
        try:
            router = await servers.address(mesh, ROUTER_READY)
            edge_url = await servers.address(mesh, EDGE_READY) + "/v1"
        except BenchError as exc:
            if mode is MeshMode.DEFAULT:
                raise
            # A mode the mesh cannot run in (say, tracing without its extra) is a finding,
            # not the end of the run.
            skipped[f"{targets.MESH}[{mode.value}]"] = f"did not start: {exc}"
            log(f"the mesh did not start in mode {mode.value}, skipped")
            continue
        tracked = {name: mesh, "upstream": upstream}
        if mode is MeshMode.DEFAULT:
            subjects.append(
                Subject(
                    targets.MESH,
                    "mesh REST edge",
                    "HTTP/1.1 load generator → edge → in-process router → adapter → upstream",
                    name,
                    http(edge_url, MESH_ALIAS),
                    tracked,
                )
            )
            subjects.append(
                Subject(
                    targets.MESH_GRPC,
                    "mesh gRPC (imesh.Client)",
                    "imesh.Client → router gRPC → adapter → upstream",
                    name,
                    GrpcTarget(router, MESH_ALIAS),
                    tracked,
                )
            )
        else:
            subjects.append(
                Subject(
                    f"{targets.MESH}[{mode.value}]",
                    f"mesh REST edge, {mode.label}",
                    "HTTP/1.1 load generator → edge → in-process router → adapter → upstream",
                    name,
                    http(edge_url, MESH_ALIAS),
                    tracked,
                )
            )
    if litellm_python is not None:
        log("starting LiteLLM proxy (1 worker, no DB, no retries)")
        litellm_config = litellm_proxy.config(upstream_url, UPSTREAM_MODEL)
        path = _write_yaml(tmp / "litellm.yaml", litellm_config)
        port = litellm_proxy.free_port()
        proc = servers.start(
            "litellm",
            litellm_proxy.argv(litellm_python, str(path), port),
            under_test=True,
            env=litellm_proxy.OFFLINE_ENV,
        )
        base_url = f"http://127.0.0.1:{port}"
        await litellm_proxy.wait_ready(proc, base_url, max(settings.startup_timeout_s, 120.0))
        subjects.append(
            Subject(
                targets.LITELLM,
                "LiteLLM proxy 1.103.7",
                "HTTP/1.1 load generator → LiteLLM proxy (1 worker) → upstream",
                "litellm",
                http(base_url + "/v1", litellm_proxy.MODEL_ALIAS),
                {"litellm": proc, "upstream": upstream},
            )
        )


async def _profile(subject: Subject, settings: BenchSettings, tmp: Path, log: Log) -> str:
    """The subject's server under py-spy over its token streaming and non-streaming
    scenarios once more (not counted in any figure); the summary as markdown."""
    raw = tmp / f"{subject.server}.raw"
    plan = [s for s in scenarios(settings) if s.name in ("tokens", "throughput")]
    log(f"{subject.name}: profiling {', '.join(s.name for s in plan)} with py-spy")
    async with profile.recording(subject.processes[subject.server].pid, raw):
        for _ in range(PROFILE_REPEATS):
            for scenario in plan:
                await measure(subject, scenario, settings)
    text = await asyncio.to_thread(raw.read_text, encoding="utf-8")
    shares = profile.summarise(text.splitlines())
    note = (
        f"py-spy at {profile.RATE_HZ} Hz (--nonblocking) on the {subject.name} process over "
        f"{' and '.join(s.name for s in plan)} ({PROFILE_REPEATS} times each), after the "
        "measured rounds. Self: samples with "
        "the function on top of the stack; inclusive: anywhere in it (idle threads excluded)."
    )
    return profile.to_markdown(f"Profile: {subject.name}", shares, note)


def _log_round(subject: Subject, log: Log) -> None:
    f = round_figures(subject.rounds[-1], subject.server)
    errors = sum(m.errors for m in subject.rounds[-1].measurements.values())
    log(
        f"  {subject.name}: p50 {_num(f.latency_p50)} ms, RPS {_num(f.rps, 0)}, "
        f"CPU/request {_num(f.cpu_ms_per_request)} ms, CPU/token {_num(f.cpu_us_per_token, 1)} µs"
        + (f", {errors} errors" if errors else "")
    )


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


async def _collector_note(servers: Servers, collector: ServerProcess) -> str:
    url = await servers.address(collector, otlp_stub.READY_PREFIX)
    try:
        async with httpx.AsyncClient(timeout=5.0) as http:
            stats = (await http.get(url + "/stats")).json()
    except httpx.HTTPError as exc:
        return f"tracing mode: the OTLP stub did not answer ({exc})"
    if not stats["exports"]:
        return (
            "tracing mode: the OTLP stub received no export, so the mesh does not read "
            "OTEL_TRACES_EXPORTER / OTEL_EXPORTER_OTLP_ENDPOINT yet (the hook is in place)"
        )
    return (
        f"tracing mode: the OTLP stub received {stats['exports']} exports, {stats['bytes']} bytes"
    )


def _write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


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
