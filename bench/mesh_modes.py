"""The ways the bench runs the mesh: its observability switches, given to `imesh up` as
environment variables (the mesh reads them at start; a mesh that does not read them yet
runs the same in every mode, which the report then says)."""

from __future__ import annotations

from enum import StrEnum


class MeshMode(StrEnum):
    DEFAULT = "default"  # metrics on, tracing off: what `imesh up` ships with
    TRACING = "tracing"  # metrics on, traces exported over OTLP/HTTP to a local stub
    OFF = "off"  # metrics and tracing off

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def needs_collector(self) -> bool:
        return self is MeshMode.TRACING

    def environment(self, collector_url: str | None = None) -> dict[str, str]:
        """What `imesh up` gets: IMESH_METRICS and the standard OTEL_* exporter settings."""
        quiet = {"OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}
        if self is MeshMode.TRACING:
            if collector_url is None:
                raise ValueError("tracing mode needs a collector URL")
            return {
                **quiet,
                "IMESH_METRICS": "1",
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector_url,
            }
        metrics = "0" if self is MeshMode.OFF else "1"
        return {**quiet, "IMESH_METRICS": metrics, "OTEL_TRACES_EXPORTER": "none"}


_LABELS = {
    MeshMode.DEFAULT: "metrics on, tracing off",
    MeshMode.TRACING: "metrics on, tracing to an OTLP stub",
    MeshMode.OFF: "metrics and tracing off",
}


def parse_modes(text: str) -> tuple[MeshMode, ...]:
    """ "default,tracing,off" -> the modes, in that order; ValueError naming a bad one. The
    default mode is always measured (the targets are computed on it)."""
    modes: list[MeshMode] = [MeshMode.DEFAULT]
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            mode = MeshMode(part)
        except ValueError:
            choices = ", ".join(m.value for m in MeshMode)
            raise ValueError(f"unknown mesh mode {part!r} (choose from {choices})") from None
        if mode not in modes:
            modes.append(mode)
    return tuple(modes)
