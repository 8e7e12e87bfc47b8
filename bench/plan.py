"""What one benchmark run measures: its settings and the scenarios each subject goes through."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bench.load import Call
from bench.mesh_modes import MeshMode


@dataclass(frozen=True, slots=True)
class BenchSettings:
    requests: int = 150  # per one-at-a-time scenario (latency, TTFT)
    throughput_requests: int = 300
    concurrency: int = 32
    tokens: int = 16  # answer length, except in token streaming
    stream_tokens: int = 256
    streams: int = 16
    stream_waves: int = 2
    rounds: int = 3
    warmup: int = 20
    pin: bool = True
    litellm: bool = True
    # One extra, unmeasured round of the mesh under py-spy (bench/profile.py).
    profile: bool = False
    mesh_modes: tuple[MeshMode, ...] = tuple(MeshMode)
    startup_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        for name in (
            "requests",
            "throughput_requests",
            "concurrency",
            "tokens",
            "stream_tokens",
            "streams",
            "stream_waves",
            "rounds",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.warmup < 0:
            raise ValueError("warmup must be >= 0")
        if MeshMode.DEFAULT not in self.mesh_modes:
            raise ValueError("the default mesh mode is always measured")


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    call: Call
    requests: int
    concurrency: int

    def expected_tokens(self, settings: BenchSettings) -> int:
        return self.call.max_tokens or settings.stream_tokens


def scenarios(settings: BenchSettings) -> tuple[Scenario, ...]:
    """Non-streaming at concurrency 1 and N, streaming TTFT at 1, then token streaming."""
    short_plain, short_stream = Call(False, settings.tokens), Call(True, settings.tokens)
    return (
        Scenario("latency", short_plain, settings.requests, 1),
        Scenario("throughput", short_plain, settings.throughput_requests, settings.concurrency),
        Scenario("ttft", short_stream, settings.requests, 1),
        Scenario("tokens", Call(True), settings.streams * settings.stream_waves, settings.streams),
    )


def settings_dict(settings: BenchSettings) -> dict[str, Any]:
    data = asdict(settings)
    data["mesh_modes"] = [m.value for m in settings.mesh_modes]
    return data
