"""Start-up errors are one line naming the address, exit 2, and leave nothing behind."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

IMESH = [sys.executable, "-m", "router.cli.main"]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process is listening on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def up(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*IMESH, "up", *args], capture_output=True, text=True, timeout=30, check=False
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [expected], result.stderr
    assert "router gRPC on" not in result.stdout  # nothing was started


def test_an_edge_port_in_use_is_one_line_naming_it(taken_port: int) -> None:
    address = f"127.0.0.1:{taken_port}"
    result = up("--listen", "127.0.0.1:0", "--http", address)
    assert_one_line_error(result, f"error: edge cannot listen on {address}: address already in use")


def test_a_router_port_in_use_is_one_line_naming_it(taken_port: int) -> None:
    address = f"127.0.0.1:{taken_port}"
    result = up("--listen", address, "--no-http")
    assert_one_line_error(
        result, f"error: router cannot listen on {address}: address already in use"
    )


@pytest.mark.parametrize("bad", ["localhost", "127.0.0.1:99999", ":50051"])
def test_a_listen_address_without_a_usable_port_is_refused_naming_it(bad: str) -> None:
    result = up("--listen", bad, "--no-http")
    assert_one_line_error(
        result,
        f"error: router cannot listen on {bad!r}: listen address must be HOST:PORT, got {bad!r}",
    )


def test_a_bad_gateway_listen_in_the_config_stops_the_start_naming_the_key(
    tmp_path: Path,
) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text(
        "providers: {sim: {kind: simulated}}\n"
        "deployments: [{name: a, provider: sim, model: m}]\n"
        "gateway: {listen: localhost}\n"
    )
    result = up("--config", str(config))
    assert result.returncode == 2
    assert "gateway.listen: listen address must be HOST:PORT, got 'localhost'" in result.stderr
    assert "Traceback" not in result.stderr
