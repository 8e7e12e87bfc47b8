"""The router's usage spill directory is a volume that outlives its pod (not /tmp, which
the read-only root filesystem would refuse anyway)."""

from __future__ import annotations

from tests.deploy.test_manifests import deployment, render

SPILL_DIR = "/var/lib/imesh/usage-spill"


def test_routers_spill_usage_to_a_shared_claim_that_outlives_the_pod() -> None:
    docs = render("base")
    spec = deployment(docs, "router")["spec"]["template"]["spec"]
    [router] = [c for c in spec["containers"] if c["name"] == "router"]
    [mount] = [m for m in router["volumeMounts"] if m["mountPath"] == SPILL_DIR]
    assert not mount.get("readOnly", False)
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    [pvc] = [
        d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim
    ]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # every replica mounts it
