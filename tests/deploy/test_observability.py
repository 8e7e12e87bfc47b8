"""deploy/observability: the dashboard and the alerts query only metrics the mesh exports,
and the kustomization renders the scrape config, the rules and the dashboard."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client import CollectorRegistry

from adapters.metrics import AdapterMetrics
from gateway.metrics import EdgeMetrics
from router.breaker import CircuitBreaker
from router.config import BreakerConfig
from router.metrics import RouterMetrics
from router.stats import StatsRegistry
from vllm_pool.metrics import PoolReplicaCollector
from vllm_pool.view import PoolView

HERE = Path(__file__).resolve().parents[2] / "deploy" / "observability"
METRIC = re.compile(r"\bimesh_[a-z_]+\b")
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


class _Tenancy:
    """What the tenancy collector reads, without a tenancy behind it."""

    shared_down = False
    outages = 0
    fallback_admissions = 0
    standing: dict[str, Any] = {}


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry, models=["m"], deployments=["d"])
    metrics.watch({"d": CircuitBreaker(BreakerConfig())}, StatsRegistry(), lambda: 0)
    metrics.watch_tenancy(_Tenancy(), _Tenancy())  # type: ignore[arg-type]
    EdgeMetrics(registry)
    AdapterMetrics(registry)
    view = PoolView(
        grpc.aio.insecure_channel("127.0.0.1:1"),
        pool="p",
        token="t",
        build_backend=lambda spec: None,  # type: ignore[arg-type,return-value]
        build_health=lambda: None,  # type: ignore[arg-type,return-value]
    )
    registry.register(PoolReplicaCollector([view]))
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def queries() -> dict[str, str]:
    """Every PromQL expression in the rules and the dashboard, by where it is."""
    found: dict[str, str] = {}
    rules = yaml.safe_load((HERE / "prometheus-rules.yaml").read_text())
    for group in rules["spec"]["groups"]:
        for rule in group["rules"]:
            found[f"alert {rule['alert']}"] = rule["expr"]
    dashboard = json.loads((HERE / "imesh-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found[f"panel {panel['title']} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found[f"variable {variable['name']}"] = variable["definition"]
    return found


async def test_every_query_names_only_metrics_the_mesh_exports() -> None:
    # async: the pool view's channel is made on a running loop, as in the router.
    exported = exported_names()
    exprs = queries()
    assert len(exprs) > 20
    for where, expr in exprs.items():
        named = set(METRIC.findall(expr))
        assert named, where
        assert named <= exported, f"{where}: {sorted(named - exported)}"


def test_the_alerts_an_on_call_engineer_needs_are_there() -> None:
    alerts = {k.removeprefix("alert ") for k in queries() if k.startswith("alert ")}
    assert {
        "ImeshErrorRateHigh",
        "ImeshBreakerOpen",
        "ImeshTimeToFirstTokenHigh",
        "ImeshTenantQuotaNearLimit",
        "ImeshPoolSaturated",
    } <= alerts


def test_dashboard_panels_have_unique_ids_and_fit_the_grid() -> None:
    dashboard = json.loads((HERE / "imesh-dashboard.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]


def test_the_kustomization_renders_monitor_rules_and_dashboard() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; manifests are checked where it is")
    out = subprocess.run(
        [kubectl, "kustomize", str(HERE)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    rendered = [d for d in yaml.safe_load_all(out) if d]
    docs = {d["kind"]: d for d in rendered}
    assert {"PodMonitor", "PrometheusRule", "ConfigMap", "NetworkPolicy"} <= docs.keys()
    config_map = docs["ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    json.loads(config_map["data"]["imesh-dashboard.json"])
    monitors = {d["metadata"]["name"]: d["spec"] for d in rendered if d["kind"] == "PodMonitor"}
    # Sidecar routers live in their callers' namespaces: found by label anywhere.
    routers = monitors["inference-mesh-routers"]
    assert routers["namespaceSelector"] == {"any": True}
    assert routers["selector"]["matchLabels"] == {"imesh.dev/router": "true"}
    ports = {e["port"] for e in monitors["inference-mesh-services"]["podMetricsEndpoints"]}
    assert ports == {"metrics", "http"}


def test_the_router_hpa_component_scales_on_requests_in_flight(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; manifests are checked where it is")
    deploy = HERE.parent
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # Kustomize takes directories relative to the overlay only.
                "resources": [os.path.relpath(deploy / "base", overlay)],
                "components": [os.path.relpath(HERE / "router-hpa", overlay)],
            }
        )
    )
    out = subprocess.run(
        [kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    (hpa,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "HorizontalPodAutoscaler"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "imesh_router_in_flight_requests"
    adapter_rules = yaml.safe_load(
        (HERE / "router-hpa" / "prometheus-adapter-rules.yaml").read_text()
    )
    assert "imesh_router_in_flight_requests" in adapter_rules["rules"][0]["seriesQuery"]
