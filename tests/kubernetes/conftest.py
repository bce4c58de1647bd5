"""Fixtures of the `kubernetes` tests: a Host in-process with `--runtime kubernetes`.

On the real cluster of scripts/setup-kubernetes.sh (see cluster.py), as the
Host's least-privileged user (deploy/kubernetes/role.yaml); builds run on the
real Docker daemon under runsc. Every program a test made is deleted at its
end and checked gone: no Pod, claim, Secret, policy, registry tag or image.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import docker
import pytest

from hershy.adapters.docker.runtime import DockerSettings
from hershy.adapters.kubernetes.settings import KubernetesSettings
from hershy.bootstrap import HostConfig, Runtime, running_host
from tests.integration.conftest import (
    POLICY,
    Host,
    docker_client,
    force_clean,
    leftovers,
    stub_binary,
)
from tests.kubernetes.cluster import (
    Cluster,
    cluster_leftovers,
    force_clean_cluster,
    kubernetes_cluster,
)

__all__ = ["docker_client", "kubernetes_cluster", "stub_binary"]

pytestmark = [pytest.mark.docker, pytest.mark.kubernetes]


def host_config(data_dir: Path, cluster: Cluster, **docker: object) -> HostConfig:
    return HostConfig(
        data_dir=data_dir,
        runtime=Runtime.KUBERNETES,
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        no_auth=True,
        policy=POLICY,
        docker=DockerSettings(ready_timeout=60, stop_grace=2, **docker),  # type: ignore[arg-type]
        kubernetes=KubernetesSettings(
            kubeconfig=cluster.host_kubeconfig,
            namespace=cluster.namespace,
            runtime_class=cluster.runtime_class,
            registry=cluster.registry,
            storage_class=cluster.storage_class,
        ),
    )


@contextlib.asynccontextmanager
async def open_kubernetes_host(
    data_dir: Path, cluster: Cluster, client: docker.DockerClient, stub: bytes
) -> AsyncIterator[Host]:
    config = host_config(data_dir, cluster)
    created: list[str] = []
    host_id = ""
    try:
        async with (
            running_host(config) as (registry, server),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        ):
            host = Host(
                registry, data_dir, client, stub, http, created, grpc_address=server.address
            )
            host_id = kubernetes_host_id(registry)
            try:
                yield host
            finally:
                for program_id in created:
                    with contextlib.suppress(Exception):
                        await host.delete(program_id, within=120)
    finally:
        left = {}
        for program_id in created:
            found = leftovers(client, program_id)
            if host_id:
                found += await cluster_leftovers(cluster, host_id, program_id)
            if found:
                left[program_id] = found
                force_clean(client, program_id)
                if host_id:
                    await force_clean_cluster(cluster, host_id, program_id)
        if left:
            pytest.fail(f"left behind after the programs were deleted: {left}")


def kubernetes_host_id(registry: object) -> str:
    handler = registry._handler  # type: ignore[attr-defined]
    return str(handler.settings.host_id)


@pytest.fixture
async def k8s_host(
    tmp_path: Path,
    kubernetes_cluster: Cluster,
    docker_client: docker.DockerClient,
    stub_binary: bytes,
) -> AsyncIterator[Host]:
    async with open_kubernetes_host(
        tmp_path / f"data-{secrets.token_hex(3)}", kubernetes_cluster, docker_client, stub_binary
    ) as opened:
        yield opened
