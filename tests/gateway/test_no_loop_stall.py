"""One request's parsing, validation and token estimation never stall the others.

`imesh up` runs in its own process; while maximum-size requests (2,048 messages, just under
the 4 MiB body limit) go through it, `/healthz`, a small chat and the router's gRPC
health and Chat each answer within 50 ms (the bound the issue sets; unloaded they take
about 1-2 ms). The requests are real: they pass validation and are answered.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

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
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(edge base URL, router gRPC address) of `imesh up` in its own process."""
    path = tmp_path_factory.mktemp("mesh") / "mesh.yaml"
    path.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    argv = [sys.executable, "-m", "router.cli.main", "up", "--config", str(path)]
    argv += ["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    try:
        grpc_line, http_line = proc.stdout.readline(), proc.stdout.readline()
        assert grpc_line.startswith("router gRPC on "), grpc_line
        assert http_line.startswith("edge HTTP on "), http_line
        yield http_line.removeprefix("edge HTTP on ").strip(), grpc_line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(15)
        proc.stdout.close()


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


def assert_all_fast(load: Callable[[], None], probes: Mapping[str, Callable[[], object]]) -> None:
    """Every probe answers within BOUND_S while `load` runs. Best of three runs: a machine
    shared with other work can delay one run; a stall (a request holding the loop for its
    whole parse, hundreds of ms) fails all three."""
    runs = []
    for _ in range(3):
        slowest, rounds = slowest_while(load, probes)
        assert rounds >= 5, "the probes did not overlap the large requests"
        if max(slowest.values()) < BOUND_S:
            return
        runs.append({name: f"{seconds * 1000:.1f} ms" for name, seconds in slowest.items()})
    raise AssertionError(f"slowest answers while loaded, per run: {runs}")


def test_edge_answers_healthz_and_a_small_chat_while_a_max_size_request_runs(
    mesh: tuple[str, str],
) -> None:
    base, _ = mesh
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
        assert_all_fast(load, probes)


def test_the_router_answers_health_and_a_small_chat_while_a_max_size_message_runs(
    mesh: tuple[str, str],
) -> None:
    _, address = mesh
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
        assert_all_fast(load, probes)
