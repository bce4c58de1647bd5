"""`hershy doctor --runtime kubernetes`: can this Host run programs on the cluster?

Asks the API server (reachable, which version), the RuntimeClass (exists, its
handler), the registry (answers the v2 API on HOST:PORT), the StorageClass
(exists), and RBAC: a SelfSubjectAccessReview for each verb the Host needs
(`deploy/kubernetes/role.yaml`, `REQUIRED_ACCESS`), so a missing rule is named.
Each finding is (level, name, detail, fix); the entrypoint prints them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
from lightkube import ApiError, AsyncClient, ConfigError, KubeConfig, codecs
from lightkube.resources.node_v1 import RuntimeClass
from lightkube.resources.storage_v1 import StorageClass

from hershy.adapters.kubernetes.pod_spec import as_dict

#: What the Host does in its namespace: (API group, resource, verb); role.yaml grants these.
REQUIRED_ACCESS: tuple[tuple[str, str, str], ...] = (
    *(("", "pods", verb) for verb in ("create", "get", "list", "watch", "delete")),
    ("", "pods/log", "get"),
    *(("", "persistentvolumeclaims", verb) for verb in ("create", "get", "list", "delete")),
    *(("", "secrets", verb) for verb in ("create", "get", "list", "update", "delete")),
    *(("networking.k8s.io", "networkpolicies", v) for v in ("create", "get", "list", "delete")),
)
ROLE_FILE = "deploy/kubernetes/role.yaml"


@dataclass(frozen=True)
class Finding:
    level: str  # "OK", "WARN" or "FAIL"
    name: str
    detail: str
    fix: str | None = None


@dataclass(frozen=True)
class ClusterOptions:
    kubeconfig: Path | None = None
    namespace: str = "hershy"
    runtime_class: str = "gvisor"
    registry: str = "127.0.0.1:5000"
    storage_class: str | None = None


def check_cluster(options: ClusterOptions) -> list[Finding]:
    return asyncio.run(_check(options))


async def _check(options: ClusterOptions) -> list[Finding]:
    try:
        config = (
            KubeConfig.from_file(options.kubeconfig)
            if options.kubeconfig
            else KubeConfig.from_env()
        )
    except (ConfigError, OSError) as error:
        return [
            Finding(
                "FAIL",
                "kubeconfig",
                f"cannot read it ({error})",
                "pass --kubeconfig PATH (scripts/setup-kubernetes.sh writes one)",
            )
        ]
    findings: list[Finding] = []
    client = AsyncClient(config, namespace=options.namespace, timeout=httpx2.Timeout(10.0))
    try:
        findings.append(await _api_server(client))
        if findings[-1].level == "FAIL":
            return findings
        findings.append(await _runtime_class(client, options.runtime_class))
        findings.append(await _storage_class(client, options.storage_class))
        findings.append(await _rbac(client, options.namespace))
    finally:
        await client.close()
    findings.append(await _registry(options.registry))
    return findings


async def _api_server(client: AsyncClient) -> Finding:
    try:
        response = await client._client._client.get(
            "/version"
        )  # lightkube has no typed /version call
        response.raise_for_status()
        version = response.json().get("gitVersion", "?")
    except (httpx2.HTTPError, OSError, ValueError) as error:
        return Finding(
            "FAIL",
            "API server",
            f"not reachable ({error})",
            "start the cluster (scripts/setup-kubernetes.sh up) or fix --kubeconfig",
        )
    return Finding("OK", "API server", f"Kubernetes {version}")


async def _runtime_class(client: AsyncClient, name: str) -> Finding:
    try:
        found = as_dict(await client.get(RuntimeClass, name))
    except ApiError as error:
        if error.status.code == 403:
            return Finding(
                "WARN",
                "RuntimeClass",
                f"cannot read RuntimeClass {name!r} (forbidden)",
                f"bind the ClusterRole hershy-host-doctor in {ROLE_FILE} to check it",
            )
        return Finding(
            "FAIL",
            "RuntimeClass",
            f"RuntimeClass {name!r}: {error.status.message}",
            "create gVisor's RuntimeClass (handler runsc) or pass --runtime-class",
        )
    handler = found.get("handler", "?")
    if "runsc" not in str(handler) and "gvisor" not in str(handler):
        return Finding(
            "WARN",
            "RuntimeClass",
            f"{name!r} has handler {handler!r}: is it gVisor?",
            "point --runtime-class at the RuntimeClass whose handler is runsc",
        )
    return Finding("OK", "RuntimeClass", f"{name!r} (handler {handler})")


async def _storage_class(client: AsyncClient, name: str | None) -> Finding:
    if name is None:
        return Finding(
            "WARN",
            "StorageClass",
            "none named: claims get the cluster's default, if it has one",
            "pass --storage-class NAME",
        )
    try:
        found = as_dict(await client.get(StorageClass, name))
    except ApiError as error:
        level = "WARN" if error.status.code == 403 else "FAIL"
        return Finding(
            level,
            "StorageClass",
            f"StorageClass {name!r}: {error.status.message}",
            "create it, or pass --storage-class with one the cluster has",
        )
    return Finding("OK", "StorageClass", f"{name!r} ({found.get('provisioner', '?')})")


async def _rbac(client: AsyncClient, namespace: str) -> Finding:
    missing = []
    for group, resource, verb in REQUIRED_ACCESS:
        kind, _, sub = resource.partition("/")
        attributes: dict[str, Any] = {
            "namespace": namespace,
            "verb": verb,
            "group": group,
            "resource": kind,
        }
        if sub:
            attributes["subresource"] = sub
        review = codecs.from_dict(
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes},
            }
        )
        try:
            answer = as_dict(await client.create(review))
        except ApiError as error:
            return Finding(
                "FAIL", "RBAC", f"cannot ask: {error.status.message}", _bind_hint(namespace)
            )
        if not (answer.get("status") or {}).get("allowed"):
            missing.append(f"{verb} {resource}")
    if missing:
        return Finding(
            "FAIL",
            "RBAC",
            f"not allowed in {namespace}: {', '.join(missing)}",
            _bind_hint(namespace),
        )
    return Finding("OK", "RBAC", f"every verb the Host needs is allowed in namespace {namespace}")


def _bind_hint(namespace: str) -> str:
    return f"apply {ROLE_FILE} and bind the Role hershy-host to the Host's user in {namespace}"


async def _registry(registry: str) -> Finding:
    url = f"http://{registry}/v2/"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
            http.get(url) as response,
        ):
            status = response.status
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        return Finding(
            "FAIL",
            "registry",
            f"{url} does not answer ({error})",
            "start the registry or fix --registry",
        )
    if status != 200:
        return Finding(
            "FAIL", "registry", f"{url} answered HTTP {status}", "a v2 registry is needed"
        )
    return Finding("OK", "registry", f"{registry} answers the v2 API")
