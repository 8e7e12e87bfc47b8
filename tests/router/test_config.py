"""A bad config stops the start with a message naming the key; a good one loads once, typed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from adapters.registry import build_backends
from router.config import ConfigError, load_config, parse_config

BASE: dict[str, Any] = {
    "providers": {
        "sim": {"kind": "simulated"},
        "oa": {"kind": "openai", "api_key": "env:IMESH_TEST_OPENAI_KEY"},
    },
    "deployments": [
        {"name": "a", "provider": "sim", "model": "m-a", "price": {"input": 1.5, "output": 2}},
        {"name": "b", "provider": "oa", "model": "gpt-x"},
    ],
    "aliases": {"auto": {"candidates": ["a", "b"], "policy": "lowest_cost"}},
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node: Any = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "mesh.yaml")
    return str(info.value)


def test_valid_config_loads_prices_as_integer_micros() -> None:
    price = parse_config(BASE).deployments[0].price
    assert price.input_micros == 1_500_000
    assert price.output_micros == 2_000_000
    # cached input defaults to the input price
    assert price.cached_input_micros == 1_500_000


def test_unknown_key_is_an_error_naming_it() -> None:
    message = error_of(with_change("deployments.0.colour", "red"))
    assert "deployments.0.colour" in message
    assert "Extra inputs are not permitted" in message


def test_inline_secret_is_refused() -> None:
    message = error_of(with_change("providers.oa.api_key", "sk-live-123"))
    assert "providers.oa" in message
    assert "env:NAME" in message
    assert "sk-live-123" not in message


def test_unknown_provider_reference_is_named() -> None:
    message = error_of(with_change("deployments.1.provider", "nope"))
    assert "deployments[1].provider: unknown provider 'nope'" in message


def test_alias_with_unknown_deployment_is_named() -> None:
    message = error_of(with_change("aliases.auto.candidates", ["a", "ghost"]))
    assert "aliases.auto.candidates[1]: unknown deployment 'ghost'" in message


def test_duplicate_deployment_names_are_refused() -> None:
    data = with_change("deployments.1.name", "a")
    assert "duplicate deployment 'a'" in error_of(data)


def test_timeouts_that_do_not_nest_are_refused() -> None:
    data = copy.deepcopy(BASE)
    data["router"] = {"timeouts": {"request": 10, "attempt": 20, "first_token": 5}}
    message = error_of(data)
    assert "router.timeouts" in message
    assert "attempt must not exceed request" in message


def test_unknown_policy_and_provider_kind_are_named() -> None:
    assert "aliases.auto.policy" in error_of(with_change("aliases.auto.policy", "fastest"))
    message = error_of(with_change("providers.sim", {"kind": "bedrock"}))
    assert "providers.sim" in message


def test_bad_api_key_hash_is_refused() -> None:
    data = copy.deepcopy(BASE)
    data["router"] = {"api_key_hashes": ["plaintext-key"]}
    assert "router.api_key_hashes.0" in error_of(data)


def test_invalid_yaml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")


def test_missing_secret_fails_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("IMESH_TEST_OPENAI_KEY", raising=False)
    config = parse_config(BASE)
    with pytest.raises(ValueError, match=r"providers\.oa: .*IMESH_TEST_OPENAI_KEY"):
        build_backends(config.providers)


def test_shipped_default_config_is_valid() -> None:
    config = load_config(Path(__file__).resolve().parents[2] / "router" / "default_config.yaml")
    assert {"auto", "fast", "smart", "cheap"} <= set(config.aliases)
    assert all(p.kind == "simulated" for p in config.providers.values())
