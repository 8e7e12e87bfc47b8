"""`imesh adapter` never serves a provider without a service token to check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from router.cli.main import main

CONFIG: dict[str, Any] = {
    "providers": {"sim": {"kind": "simulated", "ttft_ms": 0}},
    "deployments": [{"name": "sim-1", "provider": "sim", "model": "m"}],
}


def run_adapter(tmp_path: Path, config: dict[str, Any]) -> tuple[int, str]:
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.raises(SystemExit) as caught:
        main(["adapter", "sim", "--config", str(path), "--listen", "127.0.0.1:0"])
    return int(caught.value.code or 0), str(path)


def test_adapter_without_service_tokens_refuses_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, path = run_adapter(tmp_path, CONFIG)
    assert code == 2
    assert capsys.readouterr().err.startswith(f"adapter_service: {path} names no service tokens")


def test_adapter_whose_token_file_is_missing_names_it_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "token"
    config = {**CONFIG, "adapter_service": {"tokens": [f"file:{missing}"]}}
    code, _ = run_adapter(tmp_path, config)
    assert code == 2
    assert f"secret file {missing} cannot be read" in capsys.readouterr().err


def test_adapter_whose_tls_key_is_missing_names_it_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text("a-long-enough-service-token", encoding="utf-8")
    tls = {"cert": str(tmp_path / "tls.crt"), "key": str(tmp_path / "tls.key")}
    config = {**CONFIG, "adapter_service": {"tokens": [f"file:{token}"], "tls": tls}}
    code, _ = run_adapter(tmp_path, config)
    assert code == 2
    assert "tls.key cannot be read" in capsys.readouterr().err
