"""One request's parsing, validation and token estimation never stall the others.

`imesh up` runs in its own process; while maximum-size requests (2,048 messages, just under
the 4 MiB body limit) go through it, `/healthz`, a small chat and the router's gRPC
health and Chat keep being answered, and the event loop that answers them never waits
more than 50 ms (the bound the issue sets) to run what is due.

The bound is checked on the loop itself, with the process's own loop-lag watch
(`imesh_event_loop_lag_seconds` on its metrics port), not as this test's end-to-end
timings: those also count this process's threads contending for its GIL and any other
work on a shared machine. A request parsed on the loop holds it for hundreds of ms and
fails every run; the probes' slowest answers are reported beside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from imesh.v1 import chat_pb2, chat_service_pb2, chat_service_pb2_grpc

BOUND_S = 0.050
MESSAGES = 2048
BODY_LIMIT = 4 * 1024 * 1024
SMALL = {"model": "fast", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
CONFIG = {
    "providers": {
        "sim": {
            "kind": "simulated",
            "ttft_ms": 0,
            "tokens_per_second": 5000,
            "completion_tokens": 8,
        }
    },
    "deployments": [
        {"name": "sim-a", "provider": "sim", "model": "a", "context_window": 4_000_000}
    ],
    "aliases": {"fast": {"candidates": ["sim-a"]}},
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """`imesh up` in its own process, with its metrics port."""
    path = tmp_path_factory.mktemp("mesh") / "mesh.yaml"
    path.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    argv = [sys.executable, "-m", "router.cli.main", "up", "--config", str(path)]
    argv += ["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]
    env = {**os.environ, "IMESH_METRICS": "1"}
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    assert proc.stdout is not None
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        grpc_line, metrics_line, http_line = lines
        assert grpc_line.startswith("router gRPC on "), lines
        assert metrics_line.startswith("metrics on "), lines
        assert http_line.startswith("edge HTTP on "), lines
        yield Mesh(
            edge=http_line.removeprefix("edge HTTP on ").strip(),
            router=grpc_line.split()[-1],
            metrics=metrics_line.removeprefix("metrics on ").strip(),
        )
    finally:
        proc.terminate()
        proc.wait(15)
        proc.stdout.close()


@dataclass(frozen=True)
class Mesh:
    edge: str  # base URL
    router: str  # gRPC address
    metrics: str  # URL of the metrics port's /metrics


def max_size_messages() -> list[dict[str, str]]:
    """2,048 user messages of English-like words, the JSON body just under 4 MiB."""
    words = "the mesh routes each request to a healthy deployment and streams tokens " * 40
    per_message = (BODY_LIMIT - 64 * 1024) // MESSAGES - 40
    return [{"role": "user", "content": words[:per_message]} for _ in range(MESSAGES)]


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def slowest_while(
    load: Callable[[], None], probes: Mapping[str, Callable[[], object]]
) -> tuple[dict[str, float], int]:
    """(slowest time of each probe in seconds, rounds made) while `load` runs three times on
    a thread; each round calls every probe once, in turn."""
    for probe in probes.values():
        probe()  # warm: connections open, first-call costs paid
    done = threading.Event()

    def run_load() -> None:
        try:
            for _ in range(3):
                load()
        finally:
            done.set()

    loader = threading.Thread(target=run_load)
    loader.start()
    slowest = dict.fromkeys(probes, 0.0)
    rounds = 0
    while not done.is_set():
        for name, probe in probes.items():
            slowest[name] = max(slowest[name], timed(probe))
        rounds += 1
        time.sleep(0.002)
    loader.join()
    return slowest, rounds


@dataclass(frozen=True)
class LoopLag:
    """The loop-lag histogram's count: wake-ups watched, and those later than BOUND_S."""

    watched: float
    late: float

    @classmethod
    def scrape(cls, metrics_url: str) -> LoopLag:
        text = httpx.get(metrics_url, timeout=5).text
        families = text_string_to_metric_families(text)
        [family] = [f for f in families if f.name == "imesh_event_loop_lag_seconds"]
        count = next(s.value for s in family.samples if s.name.endswith("_count"))
        within = next(
            s.value
            for s in family.samples
            if s.name.endswith("_bucket") and float(s.labels["le"]) == BOUND_S
        )
        return cls(watched=count, late=count - within)

    def __sub__(self, before: LoopLag) -> LoopLag:
        return LoopLag(self.watched - before.watched, self.late - before.late)


def assert_loop_never_stalls(
    mesh: Mesh, load: Callable[[], None], probes: Mapping[str, Callable[[], object]]
) -> None:
    """While `load` runs and the probes keep being answered, the server's loop never wakes
    a due task more than BOUND_S late. Best of three runs: a machine shared with other work
    can take the CPU from the server for a moment in one run; a stall (a request holding
    the loop for its whole parse, hundreds of ms) is in every run."""
    runs = []
    for _ in range(3):
        before = LoopLag.scrape(mesh.metrics)
        slowest, rounds = slowest_while(load, probes)
        lag = LoopLag.scrape(mesh.metrics) - before
        assert rounds >= 5, "the probes did not overlap the large requests"
        assert lag.watched >= 10, "the loop-lag watch did not run through the load"
        if lag.late == 0:
            return
        answers = ", ".join(f"{name} {s * 1000:.1f} ms" for name, s in slowest.items())
        runs.append(f"{lag.late:g} of {lag.watched:g} wake-ups late (slowest: {answers})")
    raise AssertionError(f"the loop waited over {BOUND_S * 1000:g} ms, per run: {runs}")


def test_edge_answers_healthz_and_a_small_chat_while_a_max_size_request_runs(
    mesh: Mesh,
) -> None:
    base = mesh.edge
    big = json.dumps({"model": "fast", "max_tokens": 4, "messages": max_size_messages()}).encode()
    assert BODY_LIMIT - 128 * 1024 < len(big) < BODY_LIMIT
    headers = {"authorization": "Bearer k", "content-type": "application/json"}
    with httpx.Client(base_url=base, timeout=30) as loader, httpx.Client(base_url=base) as prober:

        def load() -> None:
            resp = loader.post("/v1/chat/completions", content=big, headers=headers)
            assert resp.status_code == 200, resp.text[:200]

        probes = {
            "healthz": lambda: prober.get("/healthz").raise_for_status(),
            "small chat": lambda: prober.post(
                "/v1/chat/completions", json=SMALL, headers=headers
            ).raise_for_status(),
        }
        assert_loop_never_stalls(mesh, load, probes)


def test_the_router_answers_health_and_a_small_chat_while_a_max_size_message_runs(
    mesh: Mesh,
) -> None:
    address = mesh.router
    content = [chat_pb2.ContentPart(text=m["content"]) for m in max_size_messages()]
    big = chat_service_pb2.ChatRequest(
        input=chat_pb2.ChatInput(
            model="fast",
            max_tokens=4,
            messages=[chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[p]) for p in content],
        )
    )
    small = chat_service_pb2.ChatRequest(
        input=chat_pb2.ChatInput(
            model="fast",
            max_tokens=4,
            messages=[chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[content[0]])],
        )
    )
    assert BODY_LIMIT - 128 * 1024 < big.ByteSize() < BODY_LIMIT
    options = [("grpc.max_send_message_length", 2 * BODY_LIMIT)]
    with (
        grpc.insecure_channel(address, options) as loading,
        grpc.insecure_channel(address) as probing,
    ):
        chat_big = chat_service_pb2_grpc.ChatServiceStub(loading).Chat
        chat_small = chat_service_pb2_grpc.ChatServiceStub(probing).Chat
        health = health_pb2_grpc.HealthStub(probing).Check

        def load() -> None:
            assert chat_big(big, timeout=30).message.content

        probes = {
            "health": lambda: health(health_pb2.HealthCheckRequest(), timeout=5),
            "small chat": lambda: chat_small(small, timeout=5),
        }
        assert_loop_never_stalls(mesh, load, probes)
