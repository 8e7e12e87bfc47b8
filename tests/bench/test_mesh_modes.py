"""The mesh's observability modes reach `imesh up` as the variables its telemetry reads."""

from __future__ import annotations

import pytest

from bench.mesh_modes import MeshMode, parse_modes


def test_default_mode_keeps_metrics_and_turns_tracing_off() -> None:
    env = MeshMode.DEFAULT.environment()
    assert (env["IMESH_METRICS"], env["OTEL_TRACES_EXPORTER"]) == ("1", "none")


def test_tracing_mode_exports_over_otlp_http_to_the_given_collector() -> None:
    env = MeshMode.TRACING.environment("http://127.0.0.1:4318")
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    with pytest.raises(ValueError, match="collector"):
        MeshMode.TRACING.environment()


def test_off_mode_turns_metrics_and_tracing_off() -> None:
    env = MeshMode.OFF.environment()
    assert (env["IMESH_METRICS"], env["OTEL_TRACES_EXPORTER"]) == ("0", "none")


def test_parsed_modes_always_start_with_the_default_and_refuse_unknown_names() -> None:
    assert parse_modes("off,tracing,off") == (MeshMode.DEFAULT, MeshMode.OFF, MeshMode.TRACING)
    assert parse_modes("") == (MeshMode.DEFAULT,)
    with pytest.raises(ValueError, match="unknown mesh mode 'loud'"):
        parse_modes("default,loud")
