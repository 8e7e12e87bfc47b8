"""The Kubernetes manifests render, carry valid mesh config, and probe what they serve."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.config import RemoteConfig, SecretRef
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
            # A TLS port is probed on its plaintext health port (kubelet cannot speak TLS).
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            probed = ports.get("grpc-health", ports.get("grpc"))
            if probed is not None:
                assert c["readinessProbe"].get("grpc", {}).get("port") == probed, where


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


def config_map_data(docs: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    return data


def secret_mounts(doc: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """Mount paths of `container` that hold a Secret."""
    volumes = doc["spec"]["template"]["spec"]["volumes"]
    secrets = {v["name"] for v in volumes if "secret" in v}
    return [m["mountPath"] for m in container["volumeMounts"] if m["name"] in secrets]


def from_secret(path: object, mounts: list[str]) -> bool:
    return any(str(path).startswith(mount.rstrip("/") + "/") for mount in mounts)


def test_adapter_listens_on_the_pod_ip_given_by_the_downward_api() -> None:
    (adapter,) = pod_containers(deployment(render("base"), "adapter-openai"))
    args = adapter["args"]
    assert args[args.index("--listen") + 1] == "$(POD_IP):50061"
    assert not any("0.0.0.0" in a for a in args)
    env = {e["name"]: e for e in adapter["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_adapter_requires_tokens_and_client_certificates_from_mounted_secrets() -> None:
    docs = render("base")
    dep = deployment(docs, "adapter-openai")
    (adapter,) = pod_containers(dep)
    settings = parse_config(yaml.safe_load(config_map_data(docs)["adapters.yaml"])).adapter_service
    assert settings is not None
    assert settings.tls is not None
    assert settings.tls.client_ca is not None, "routers must present a certificate"
    mounts = secret_mounts(dep, adapter)
    for ref in settings.tokens:
        assert ref.ref.startswith("file:")
        assert from_secret(ref.ref.removeprefix("file:"), mounts)
    for path in (settings.tls.cert, settings.tls.key, settings.tls.client_ca):
        assert from_secret(path, mounts), path


@pytest.mark.parametrize(
    ("name", "deployment_name"), [("base", "router"), ("sidecar", "example-caller")]
)
def test_every_router_presents_its_certificate_and_token_from_mounted_secrets(
    name: str, deployment_name: str
) -> None:
    docs = render(name)
    dep = deployment(docs, deployment_name)
    mesh = parse_config(yaml.safe_load(config_map_data(docs)["mesh.yaml"]))
    routers = [c for c in pod_containers(dep) if c.get("args", [""])[0] == "router"]
    assert routers
    for provider in mesh.providers.values():
        assert isinstance(provider, RemoteConfig)
        assert provider.tls is not None
        assert provider.tls.cert is not None, "the adapters require a client certificate"
        for router in routers:
            mounts = secret_mounts(dep, router)
            assert from_secret(provider.token.ref.removeprefix("file:"), mounts)
            for path in (provider.tls.ca, provider.tls.cert, provider.tls.key):
                assert from_secret(path, mounts), path


def pod_labels(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] == "Deployment"
    }


def admitted(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a pod with `labels` may connect to the pods `policy` selects."""
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            wanted = peer.get("podSelector", {}).get("matchLabels", {})
            if all(labels.get(k) == v for k, v in wanted.items()):
                return True
    return False


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_only_routers_reach_adapters_and_only_callers_and_the_edge_reach_routers(
    name: str,
) -> None:
    docs = render(name)
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    labels = pod_labels(docs)
    to_adapters = policies["adapters-from-routers"]
    to_router = policies["router-from-callers"]
    assert to_adapters["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "adapter-openai"
    }
    assert to_router["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "router"}
    pods_with_a_router = {"router"} | ({"example-caller"} if name == "sidecar" else set())
    for pod, pod_label in labels.items():
        assert admitted(to_adapters, pod_label) == (pod in pods_with_a_router), pod
    assert admitted(to_router, labels["gateway"])
    assert admitted(to_router, {"imesh.dev/caller": "true"})
    for pod in ("adapter-openai", "redis", "router"):
        assert not admitted(to_router, labels[pod]), pod
