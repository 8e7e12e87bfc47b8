"""The Kubernetes manifests render, carry valid mesh config, and probe what they serve."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.config import SecretRef
from router.config import parse_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUSTOMIZATIONS = ["base", "sidecar"]


def render(name: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; manifests are checked where it is")
    out = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / name)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def deployment(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)


def pod_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    sidecars = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    return list(spec["containers"]) + sidecars


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_mesh_container_is_probed_and_bounded(name: str) -> None:
    deployments = [d for d in render(name) if d["kind"] == "Deployment"]
    assert deployments
    for dep in deployments:
        for c in pod_containers(dep):
            if not c["image"].startswith("ghcr.io/inference-mesh/"):
                continue  # the example caller's own app container
            where = f"{dep['metadata']['name']}/{c['name']}"
            assert "readinessProbe" in c, where
            assert "livenessProbe" in c or "startupProbe" in c, where
            assert c["resources"]["requests"], where
            assert c["resources"]["limits"]["memory"], where
            assert c["securityContext"]["runAsNonRoot"] is True, where
            grpc_ports = {p["containerPort"] for p in c.get("ports", []) if p["name"] == "grpc"}
            for port in grpc_ports:
                assert c["readinessProbe"].get("grpc", {}).get("port") == port, where


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_shipped_mesh_config_is_valid(name: str) -> None:
    config_maps = [d for d in render(name) if d["kind"] == "ConfigMap"]
    data = config_maps[0]["data"]
    mesh = parse_config(yaml.safe_load(data["mesh.yaml"]), "mesh.yaml")
    adapters = parse_config(yaml.safe_load(data["adapters.yaml"]), "adapters.yaml")
    assert mesh.aliases
    assert all(p.kind == "remote" for p in mesh.providers.values())
    assert "openai" in adapters.providers


def test_provider_keys_come_from_secrets_named_by_config() -> None:
    docs = render("base")
    adapter = deployment(docs, "adapter-openai")
    (container,) = pod_containers(adapter)
    env = {e["name"]: e for e in container["env"]}
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    config = parse_config(yaml.safe_load(config_map["data"]["adapters.yaml"]))
    for provider in config.providers.values():
        key = getattr(provider, "api_key", None)
        assert isinstance(key, SecretRef)
        assert "secretKeyRef" in env[key.env_name]["valueFrom"], "keys never inline"


def test_shared_router_readiness_follows_breakers_and_liveness_does_not() -> None:
    (router,) = pod_containers(deployment(render("base"), "router"))
    assert router["readinessProbe"]["grpc"]["service"] == "imesh.v1.ChatService"
    assert "service" not in router["livenessProbe"]["grpc"]


def test_router_grace_period_outlasts_its_drain() -> None:
    docs = render("base")
    router = deployment(docs, "router")
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    drain_s = parse_config(yaml.safe_load(config_map["data"]["mesh.yaml"])).router.drain_s
    assert router["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain_s
