"""Config errors all at once, and listen addresses checked when the config loads."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from router.config import ConfigError, parse_config

BASE: dict[str, Any] = {
    "providers": {"sim": {"kind": "simulated"}, "sim2": {"kind": "simulated"}},
    "deployments": [
        {"name": "a", "provider": "sim", "model": "m-a", "price": {"input": 1.5}},
        {"name": "b", "provider": "sim2", "model": "m-b"},
    ],
    "aliases": {"auto": {"candidates": ["a", "b"]}},
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node: Any = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value
    return data


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "mesh.yaml")
    return str(info.value)


def test_every_problem_is_reported_in_one_go() -> None:
    data = with_change("deployments.0.price", {"input": -1})
    data["aliases"]["auto"]["candidates"] = ["a", "sim-huge"]
    message = error_of(data)
    assert "deployments.0.price.input: Input should be greater than or equal to 0" in message
    assert "aliases.auto.candidates[1]: unknown deployment 'sim-huge'" in message


def test_several_unresolved_names_are_all_reported() -> None:
    data = with_change("deployments.1.provider", "nope")
    data["aliases"]["auto"]["candidates"] = ["a", "ghost"]
    lines = error_of(data).splitlines()
    assert "  deployments[1].provider: unknown provider 'nope' (known: sim, sim2)" in lines
    assert "  aliases.auto.candidates[1]: unknown deployment 'ghost'" in lines


@pytest.mark.parametrize("listen", ["localhost", "localhost:", ":8080", "host:99999", "a b:80"])
@pytest.mark.parametrize("section", ["router", "gateway"])
def test_a_bad_listen_address_is_refused_at_load_naming_the_key(section: str, listen: str) -> None:
    data = copy.deepcopy(BASE)
    data[section] = {"listen": listen}
    message = error_of(data)
    assert f"{section}.listen: listen address must be HOST:PORT, got {listen!r}" in message


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "0.0.0.0:8080", "[::1]:50051", "svc:1"])
def test_good_listen_addresses_load(listen: str) -> None:
    data = copy.deepcopy(BASE)
    data["gateway"] = {"listen": listen}
    assert parse_config(data).gateway.listen == listen
