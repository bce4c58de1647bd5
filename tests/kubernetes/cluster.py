"""The real Kubernetes cluster the `kubernetes` tests run on (scripts/setup-kubernetes.sh).

A session fixture starts it (`up`: idempotent, seconds when its build is cached)
unless it is up already, reads `/run/hershy-kubernetes/env`, and stops it
(`down`) at the end only if it started it. Nothing skips: without the cluster
these tests fail, saying why. `HERSHY_K8S_SETUP` may name the script (a
checkout where it is not merged yet); by default it is the repository's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.resources.core_v1 import PersistentVolumeClaim, Pod, Secret
from lightkube.resources.networking_v1 import NetworkPolicy

from hershy.adapters.kubernetes.images import registry_tags
from hershy.adapters.kubernetes.pod_spec import (
    LABEL_MANAGED,
    LABEL_PROGRAM,
    as_dict,
    kube_labels,
    repository,
)

REPO = Path(__file__).resolve().parents[2]
SETUP = Path(os.environ.get("HERSHY_K8S_SETUP", REPO / "scripts" / "setup-kubernetes.sh"))
ENV_FILE = Path(os.environ.get("HERSHY_K8S_ENV", "/run/hershy-kubernetes/env"))
UP_SECONDS = 1800


@dataclass(frozen=True)
class Cluster:
    #: The admin's kubeconfig (tests look and break things with it).
    kubeconfig: Path
    #: The kubeconfig of a user bound only to deploy/kubernetes/role.yaml (the Host's).
    host_kubeconfig: Path
    registry: str
    storage_class: str
    runtime_class: str
    namespace: str
    nodes: tuple[str, ...]
    env: dict[str, str]

    def serve_args(self) -> tuple[str, ...]:
        """The `hershy serve` options that run programs on this cluster as the Host's user."""
        return (
            "--runtime",
            "kubernetes",
            "--kubeconfig",
            str(self.host_kubeconfig),
            "--namespace",
            self.namespace,
            "--runtime-class",
            self.runtime_class,
            "--registry",
            self.registry,
            "--storage-class",
            self.storage_class,
        )

    def admin(self) -> AsyncClient:
        return AsyncClient(KubeConfig.from_file(self.kubeconfig), namespace=self.namespace)

    def kubectl(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), "-n", self.namespace, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"kubectl {shlex.join(args)} failed: {result.stderr.strip()}")
        return result.stdout


def read_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip().removeprefix("export ").strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = shlex.split(value)[0] if value.strip() else ""
    return values


def _run(*args: str, timeout: float = UP_SECONDS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SETUP), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )


def cluster_from_env(env: dict[str, str]) -> Cluster:
    kubeconfig = Path(env["KUBECONFIG"])
    return Cluster(
        kubeconfig=kubeconfig,
        host_kubeconfig=Path(env.get("HERSHY_K8S_HOST_KUBECONFIG") or kubeconfig),
        registry=env["HERSHY_K8S_REGISTRY"],
        storage_class=env.get("HERSHY_K8S_STORAGE_CLASS", "hershy-local"),
        runtime_class=env.get("HERSHY_K8S_RUNTIME_CLASS", "gvisor"),
        namespace=env.get("HERSHY_K8S_NAMESPACE", "hershy"),
        nodes=tuple(env.get("HERSHY_K8S_NODES", "").replace(",", " ").split()),
        env=env,
    )


@pytest.fixture(scope="session")
def kubernetes_cluster() -> Iterator[Cluster]:
    """The cluster, up for the session (started here only if it was not up)."""
    if not SETUP.exists():
        pytest.fail(f"{SETUP} is missing: the kubernetes tests need the project's cluster script")
    started = False
    status = _run("status", timeout=60)
    if status.returncode != 0 or not ENV_FILE.exists():
        up = _run("up")
        if up.returncode != 0:
            pytest.fail(
                f"{SETUP} up failed ({up.returncode}):\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
            )
        started = True
    cluster = cluster_from_env(read_env(ENV_FILE))
    try:
        yield cluster
    finally:
        if started:
            _run("down", timeout=300)


# --- what a program left on the cluster ------------------------------------------------------


async def cluster_leftovers(cluster: Cluster, host_id: str, program_id: str) -> list[str]:
    """Every Pod, claim, Secret, policy and registry tag of a program (empty: nothing)."""
    labels = kube_labels({LABEL_MANAGED: host_id, LABEL_PROGRAM: program_id})
    found: list[str] = []
    kinds: tuple[Any, ...] = (Pod, PersistentVolumeClaim, Secret, NetworkPolicy)
    client = cluster.admin()
    try:
        for kind in kinds:
            async for item in client.list(kind, namespace=cluster.namespace, labels=labels):
                found.append(f"{kind.__name__} {as_dict(item)['metadata']['name']}")
    finally:
        await client.close()
    async with aiohttp.ClientSession(f"http://{cluster.registry}") as http:
        tags = await registry_tags(http, repository(host_id, program_id))
    found += [f"registry tag {repository(host_id, program_id)}:{tag}" for tag in tags]
    return found


async def force_clean_cluster(cluster: Cluster, host_id: str, program_id: str) -> None:
    labels = kube_labels({LABEL_MANAGED: host_id, LABEL_PROGRAM: program_id})
    kinds: tuple[Any, ...] = (Pod, PersistentVolumeClaim, Secret, NetworkPolicy)
    client = cluster.admin()
    try:
        for kind in kinds:
            async for item in client.list(kind, namespace=cluster.namespace, labels=labels):
                with contextlib.suppress(ApiError):
                    await client.delete(
                        kind,
                        as_dict(item)["metadata"]["name"],
                        namespace=cluster.namespace,
                        grace_period=0,
                    )
    finally:
        await client.close()


async def pods_of(cluster: Cluster, host_id: str, program_id: str) -> list[dict[str, Any]]:
    labels = kube_labels({LABEL_MANAGED: host_id, LABEL_PROGRAM: program_id})
    client = cluster.admin()
    try:
        return [
            as_dict(pod)
            async for pod in client.list(Pod, namespace=cluster.namespace, labels=labels)
        ]
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def admin_client(cluster: Cluster) -> AsyncIterator[AsyncClient]:
    client = cluster.admin()
    try:
        yield client
    finally:
        await client.close()


async def wait_for(condition: Any, within: float, what: str, interval: float = 0.2) -> Any:
    """Poll an async `condition()` until it returns something true."""
    try:
        async with asyncio.timeout(within):
            while True:
                value = await condition()
                if value:
                    return value
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"not within {within:g} s: {what}") from None
