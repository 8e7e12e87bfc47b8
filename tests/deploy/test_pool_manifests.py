"""The GPU pool's manifests: the agent is a native sidecar that drains before vLLM stops,
the HPA scales vLLM on the agents' waiting requests, and the pool service is probed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.cli.main import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; manifests are checked where it is")
    out = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "pool")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def pod(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    spec: dict[str, Any] = find(docs, "Deployment", name)["spec"]["template"]["spec"]
    return spec


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_the_agent_is_a_native_sidecar_of_the_vllm_pod(docs: list[dict[str, Any]]) -> None:
    (agent,) = pod(docs, "vllm-gpu-a")["initContainers"]

    assert agent["restartPolicy"] == "Always"
    assert agent["args"][0] == "replica-agent"


def test_the_agent_arguments_parse(docs: list[dict[str, Any]]) -> None:
    (agent,) = pod(docs, "vllm-gpu-a")["initContainers"]

    args = build_parser().parse_args(agent["args"])

    assert args.vllm == "http://127.0.0.1:8000"
    assert args.pool_name == "gpu-a"


def test_vllms_prestop_hook_creates_the_file_the_agent_drains_on(
    docs: list[dict[str, Any]],
) -> None:
    spec = pod(docs, "vllm-gpu-a")
    (agent,) = spec["initContainers"]
    (vllm,) = spec["containers"]
    hook = "\n".join(vllm["lifecycle"]["preStop"]["exec"]["command"])
    drain_file = flag(agent["args"], "--drain-file")

    assert f'pathlib.Path("{drain_file}").touch()' in hook
    mounts = {m["name"]: m["mountPath"] for m in vllm["volumeMounts"]}
    agent_mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    assert mounts["lifecycle"] == agent_mounts["lifecycle"] == str(Path(drain_file).parent)


def test_the_grace_period_outlasts_the_drain(docs: list[dict[str, Any]]) -> None:
    spec = pod(docs, "vllm-gpu-a")
    (agent,) = spec["initContainers"]

    assert spec["terminationGracePeriodSeconds"] > float(flag(agent["args"], "--drain-timeout-s"))


def test_the_hpa_scales_vllm_on_the_agents_waiting_requests(docs: list[dict[str, Any]]) -> None:
    hpa = find(docs, "HorizontalPodAutoscaler", "vllm-gpu-a")
    (metric,) = hpa["spec"]["metrics"]

    assert hpa["spec"]["scaleTargetRef"]["name"] == "vllm-gpu-a"
    assert metric["pods"]["metric"]["name"] == "imesh_replica_agent_waiting"


def test_the_pool_service_is_probed_on_its_grpc_health(docs: list[dict[str, Any]]) -> None:
    (service,) = pod(docs, "pool-service")["containers"]

    assert service["readinessProbe"]["grpc"] == {"port": 50061, "service": "imesh.v1.PoolService"}
    assert flag(service["args"], "--agent-token").startswith("file:")


def test_agents_and_routers_hold_different_pool_tokens(docs: list[dict[str, Any]]) -> None:
    (service,) = pod(docs, "pool-service")["containers"]
    agent_pod = pod(docs, "vllm-gpu-a")
    (agent,) = agent_pod["initContainers"]
    (token_volume,) = [v for v in agent_pod["volumes"] if v["name"] == "pool-token"]

    assert flag(service["args"], "--agent-token") == "file:/etc/imesh-pool-token/agent"
    assert flag(service["args"], "--reader-token") == "file:/etc/imesh-pool-token/reader"
    assert flag(agent["args"], "--token") == "file:/etc/imesh-pool-token/agent"
    # The replica's pod is given the agent key of the Secret, never the reader's.
    assert [item["key"] for item in token_volume["secret"]["items"]] == ["agent"]


def test_the_pool_service_serves_tls_and_agents_verify_it(docs: list[dict[str, Any]]) -> None:
    (service,) = pod(docs, "pool-service")["containers"]
    (agent,) = pod(docs, "vllm-gpu-a")["initContainers"]

    assert flag(service["args"], "--tls-cert").endswith("tls.crt")
    assert flag(agent["args"], "--ca").endswith("ca.crt")
    assert flag(service["args"], "--redis").startswith("file:")


def test_only_agents_routers_and_admins_reach_the_pool_service(
    docs: list[dict[str, Any]],
) -> None:
    policy = find(docs, "NetworkPolicy", "pool-service-from-agents-and-routers")
    grpc_rule = policy["spec"]["ingress"][0]

    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "pool-service"
    }
    assert grpc_rule["ports"] == [{"protocol": "TCP", "port": 50061}]
    selectors = [peer["podSelector"] for peer in grpc_rule["from"]]
    assert {"matchLabels": {"imesh.dev/router": "true"}} in selectors
    assert {"matchExpressions": [{"key": "imesh.dev/pool", "operator": "Exists"}]} in selectors


def test_only_routers_reach_vllm(docs: list[dict[str, Any]]) -> None:
    policy = find(docs, "NetworkPolicy", "vllm-from-routers")
    serving = policy["spec"]["ingress"][0]
    labels = find(docs, "Deployment", "vllm-gpu-a")["spec"]["template"]["metadata"]["labels"]

    assert "imesh.dev/pool" in labels  # the policy selects the vLLM pods
    assert [peer["podSelector"] for peer in serving["from"]] == [
        {"matchLabels": {"imesh.dev/router": "true"}}
    ]
    assert {p["port"] for p in serving["ports"]} == {8000, 50052}


def test_the_cli_accepts_the_manifests_pool_flags(docs: list[dict[str, Any]]) -> None:
    (service,) = pod(docs, "pool-service")["containers"]
    (agent,) = pod(docs, "vllm-gpu-a")["initContainers"]
    parser = build_parser()

    parser.parse_args(service["args"])
    parser.parse_args(agent["args"])
