"""`hershy doctor --runtime kubernetes` against the real cluster, as the Host's user."""

from __future__ import annotations

from pathlib import Path

import pytest

from hershy.adapters.kubernetes.doctor import ClusterOptions, check_cluster
from tests.kubernetes.cluster import Cluster

pytestmark = [pytest.mark.docker, pytest.mark.kubernetes]


def options(cluster: Cluster, **changes: object) -> ClusterOptions:
    fields: dict[str, object] = {
        "kubeconfig": cluster.host_kubeconfig,
        "namespace": cluster.namespace,
        "runtime_class": cluster.runtime_class,
        "registry": cluster.registry,
        "storage_class": cluster.storage_class,
    }
    fields.update(changes)
    return ClusterOptions(**fields)  # type: ignore[arg-type]


def test_every_check_passes_on_the_cluster_as_the_hosts_user(kubernetes_cluster: Cluster) -> None:
    findings = {f.name: f for f in check_cluster(options(kubernetes_cluster))}
    assert set(findings) == {"API server", "RuntimeClass", "StorageClass", "RBAC", "registry"}
    assert {name: f.level for name, f in findings.items()} == dict.fromkeys(findings, "OK"), (
        findings
    )
    assert "Kubernetes v1." in findings["API server"].detail


def test_each_problem_is_named_with_its_fix(kubernetes_cluster: Cluster, tmp_path: Path) -> None:
    broken = options(
        kubernetes_cluster,
        runtime_class="no-such-class",
        storage_class="no-such-storage",
        registry="127.0.0.1:1",
        namespace="kube-system",  # the Host's Role is not bound there
    )
    findings = {f.name: f for f in check_cluster(broken)}
    for name in ("RuntimeClass", "StorageClass", "RBAC", "registry"):
        assert findings[name].level == "FAIL", findings[name]
        assert findings[name].fix, findings[name]
    assert "create pods" in findings["RBAC"].detail
    missing = check_cluster(options(kubernetes_cluster, kubeconfig=tmp_path / "none"))
    assert [(f.name, f.level) for f in missing] == [("kubeconfig", "FAIL")]
