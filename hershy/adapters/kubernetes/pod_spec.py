"""The Pod a program's run is, and the contracts it must keep. Pure: no IO.

`compose_pod` writes down exactly what will run; `contract_violations`
refuses a Pod that breaks a security contract. The Kubernetes runtime creates
only Pods that passed, then reads back what the API server stored (admission
may change a spec) and refuses to go on when the stored Pod fails the same
check. The contracts are the Docker runtime's (`adapters/docker/compose.py`,
docs/security.md), said the Kubernetes way:

| contract | how |
|---|---|
| gVisor | `runtimeClassName` (the Host's, `gvisor` by default) |
| read-only root | `readOnlyRootFilesystem: true` |
| one writable volume | its claim at `/state` (its Secret read-only at `/run/secrets`) |
| least privilege | `capabilities.drop: [ALL]`, `allowPrivilegeEscalation: false`, not privileged, |
|  | `seccompProfile: RuntimeDefault` |
| no host namespaces | no `hostNetwork`, `hostPID`, `hostIPC`, `hostUsers: true`, no `hostPort` |
| no API access | `automountServiceAccountToken: false`, `enableServiceLinks: false` |
| bounded | CPU and memory requests = limits, within the Host's maxima |
|  | (pids: the kubelet's `podPidsLimit`) |
| the Host decides restarts | `restartPolicy: Never` |
| owned | Hershy's labels (the Docker runtime's keys) |
| nothing pulled from elsewhere | the image is the Host's registry's, by digest |
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hershy.adapters.docker.compose import (
    LABEL_BUILD,
    LABEL_MANAGED,
    LABEL_PROGRAM,
    LABEL_RUN,
    LABEL_STOP_GRACE,
    STATE_MOUNT,
    WATCHER_PORT,
)
from hershy.domain.config import SECRETS_DIR
from hershy.domain.model import Resources

__all__ = [
    "LABEL_BUILD",
    "LABEL_MANAGED",
    "LABEL_PROGRAM",
    "LABEL_RUN",
    "LABEL_STOP_GRACE",
    "PodRequest",
    "compose_pod",
    "contract_violations",
]

CONTAINER = "program"
STATE_VOLUME = "state"
SECRETS_VOLUME = "secrets"
#: The keys a Pod spec may carry; anything else (a new field a newer API adds, an
#: `ephemeralContainers` list) is refused until it is looked at. Admission and defaults
#: add only keys from this list on the clusters we know.
ALLOWED_SPEC_KEYS = frozenset(
    {
        "containers",
        "volumes",
        "restartPolicy",
        "runtimeClassName",
        "automountServiceAccountToken",
        "enableServiceLinks",
        "securityContext",
        "terminationGracePeriodSeconds",
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "hostUsers",
        "shareProcessNamespace",
        # Set by the API server's defaults, the scheduler or admission: harmless.
        "dnsPolicy",
        "schedulerName",
        "serviceAccount",
        "serviceAccountName",
        "tolerations",
        "priority",
        "preemptionPolicy",
        "nodeName",
        "nodeSelector",
        "affinity",
        "overhead",
        "imagePullSecrets",
        "hostname",
    }
)
ALLOWED_CONTAINER_KEYS = frozenset(
    {
        "name",
        "image",
        "imagePullPolicy",
        "ports",
        "env",
        "resources",
        "securityContext",
        "volumeMounts",
        # Defaults: where the kubelet writes a termination message; what a resize restarts.
        "terminationMessagePath",
        "terminationMessagePolicy",
        "resizePolicy",
    }
)
#: A label value: at most 63 characters of these (Kubernetes' rule).
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class PodRequest:
    host_id: str
    namespace: str
    program_id: str
    run: int
    build_id: str
    #: `registry/repository@sha256:...`: the Host's registry, by digest.
    image: str
    resources: Resources
    runtime_class: str
    claim: str
    #: Plain environment variables (the program's `env`); never a secret.
    env: tuple[tuple[str, str], ...] = ()
    #: The program's Secret (mounted read-only at /run/secrets); None when it has none.
    secret: str | None = None
    stop_grace_seconds: float = 10.0


def short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def object_name(prefix: str, host_id: str, program_id: str) -> str:
    """A DNS label naming an object of a program of a Host: readable, unique per
    (Host, program), so two Hosts in one namespace never share a name."""
    readable = re.sub(r"[^a-z0-9-]+", "-", program_id.lower()).strip("-")[:36] or "p"
    return f"{prefix}-{readable}-{short_hash(host_id + '/' + program_id)}"


def pod_name(host_id: str, program_id: str, run: int) -> str:
    return f"{object_name('hershy', host_id, program_id)}-r{run}"


def claim_name(host_id: str, program_id: str) -> str:
    return object_name("hershy-state", host_id, program_id)


def secret_name(host_id: str, program_id: str) -> str:
    return object_name("hershy-secrets", host_id, program_id)


def policy_name(host_id: str, program_id: str) -> str:
    return object_name("hershy-net", host_id, program_id)


def repository(host_id: str, program_id: str) -> str:
    """The program's repository in the Host's registry (a valid distribution name)."""
    return f"hershy/{_repo_part(host_id)}/{_repo_part(program_id)}"


def _repo_part(text: str) -> str:
    part = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return part or short_hash(text)


def program_labels(host_id: str, program_id: str) -> dict[str, str]:
    return {LABEL_MANAGED: host_id, LABEL_PROGRAM: program_id}


def kube_labels(labels: Mapping[str, str]) -> dict[str, Any]:
    """Labels as lightkube's `labels=` selector takes them (equality on each)."""
    return dict(labels)


def as_dict(resource: Any) -> dict[str, Any]:
    """A lightkube object as the API's JSON shape."""
    raw: dict[str, Any] = resource.to_dict()
    return raw


def selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def labelled_run(labels: Mapping[str, str] | None) -> int | None:
    try:
        return int((labels or {})[LABEL_RUN])
    except (KeyError, ValueError):
        return None


def cpu_quantity(milli_cpus: int) -> str:
    return f"{milli_cpus}m"


def compose_pod(request: PodRequest) -> dict[str, Any]:
    """The Pod of one run of a program."""
    grace = max(0, round(request.stop_grace_seconds))
    limits = {
        "cpu": cpu_quantity(request.resources.milli_cpus),
        "memory": str(request.resources.memory_bytes),
    }
    mounts: list[dict[str, Any]] = [{"name": STATE_VOLUME, "mountPath": STATE_MOUNT}]
    volumes: list[dict[str, Any]] = [
        {"name": STATE_VOLUME, "persistentVolumeClaim": {"claimName": request.claim}}
    ]
    if request.secret is not None:
        mounts.append({"name": SECRETS_VOLUME, "mountPath": SECRETS_DIR, "readOnly": True})
        # The kubelet keeps a Secret volume in memory (a tmpfs), like the Docker runtime's.
        volumes.append(
            {"name": SECRETS_VOLUME, "secret": {"secretName": request.secret, "defaultMode": 0o444}}
        )
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": request.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "watcher", "containerPort": WATCHER_PORT, "protocol": "TCP"}],
        "resources": {"requests": dict(limits), "limits": dict(limits)},
        "securityContext": {
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }
    if request.env:
        container["env"] = [{"name": name, "value": value} for name, value in request.env]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(request.host_id, request.program_id, request.run),
            "namespace": request.namespace,
            "labels": {
                **program_labels(request.host_id, request.program_id),
                LABEL_BUILD: request.build_id,
                LABEL_RUN: str(request.run),
            },
            "annotations": {LABEL_STOP_GRACE: str(grace)},
        },
        "spec": {
            "restartPolicy": "Never",
            "runtimeClassName": request.runtime_class,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "hostNetwork": False,
            "hostPID": False,
            "hostIPC": False,
            "terminationGracePeriodSeconds": grace,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": volumes,
        },
    }


def contract_violations(
    pod: Mapping[str, Any],
    *,
    runtime_class: str,
    registry: str,
    maximum: Resources,
    claim: str | None = None,
    secret: str | None = None,
) -> list[str]:
    """Every way `pod` (as composed, or as the API server stored it) breaks a contract;
    empty when it keeps them all. `claim`/`secret`: the only ones it may mount."""
    problems: list[str] = []

    def require(condition: bool, problem: str) -> None:
        if not condition:
            problems.append(problem)

    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    labels = metadata.get("labels") or {}
    require(
        bool(labels.get(LABEL_MANAGED)) and bool(labels.get(LABEL_PROGRAM)),
        f"the Pod must carry the {LABEL_MANAGED} and {LABEL_PROGRAM} labels",
    )
    unknown = sorted(set(spec) - ALLOWED_SPEC_KEYS)
    require(not unknown, f"spec fields not allowed: {', '.join(unknown)}")
    require(spec.get("restartPolicy") == "Never", "restartPolicy must be Never")
    require(
        spec.get("runtimeClassName") == runtime_class,
        f"runtimeClassName must be {runtime_class!r}, not {spec.get('runtimeClassName')!r}",
    )
    require(
        spec.get("automountServiceAccountToken") is False,
        "automountServiceAccountToken must be false (no API token in the Pod)",
    )
    require(spec.get("enableServiceLinks") is False, "enableServiceLinks must be false")
    for key in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"):
        require(not spec.get(key), f"{key} must not be set (host namespaces are not allowed)")
    require(spec.get("hostUsers") in (None, False), "hostUsers must not be true")
    pod_security = spec.get("securityContext") or {}
    require(
        _seccomp(pod_security) in ("RuntimeDefault", None),
        "the Pod's seccompProfile must be RuntimeDefault",
    )
    require(not pod_security.get("sysctls"), "sysctls are not allowed")
    for key in ("initContainers", "ephemeralContainers"):
        require(not spec.get(key), f"{key} are not allowed")
    containers = spec.get("containers") or []
    require(len(containers) == 1, f"exactly one container expected, found {len(containers)}")
    volumes = spec.get("volumes") or []
    problems += _volume_problems(volumes, claim, secret)
    for container in containers[:1]:
        problems += _container_problems(container, registry, maximum)
    return problems


def _seccomp(security: Mapping[str, Any]) -> str | None:
    profile = security.get("seccompProfile")
    if profile is None:
        return None
    return str((profile or {}).get("type"))


def _volume_problems(
    volumes: Sequence[Mapping[str, Any]], claim: str | None, secret: str | None
) -> list[str]:
    problems = []
    names = [volume.get("name") for volume in volumes]
    if len(set(names)) != len(names):
        problems.append("volume names must be unique")
    for volume in volumes:
        kinds = sorted(key for key in volume if key != "name")
        name = volume.get("name")
        if name == STATE_VOLUME and kinds == ["persistentVolumeClaim"]:
            claimed = (volume["persistentVolumeClaim"] or {}).get("claimName")
            if claim is not None and claimed != claim:
                problems.append(f"/state must be the program's own claim {claim!r}")
            if (volume["persistentVolumeClaim"] or {}).get("readOnly"):
                problems.append("/state must be writable")
        elif name == SECRETS_VOLUME and kinds == ["secret"]:
            named = (volume["secret"] or {}).get("secretName")
            if secret is None or named != secret:
                problems.append("the only Secret mounted may be the program's own")
        else:
            problems.append(
                f"volume {name!r} ({', '.join(kinds)}) is not allowed: only the program's "
                f"claim at {STATE_MOUNT} and its Secret at {SECRETS_DIR}"
            )
    if STATE_VOLUME not in names:
        problems.append(f"the program's claim must be mounted at {STATE_MOUNT}")
    return problems


def _container_problems(
    container: Mapping[str, Any], registry: str, maximum: Resources
) -> list[str]:
    problems: list[str] = []

    def require(condition: bool, problem: str) -> None:
        if not condition:
            problems.append(problem)

    unknown = sorted(set(container) - ALLOWED_CONTAINER_KEYS)
    require(not unknown, f"container fields not allowed: {', '.join(unknown)}")
    image = str(container.get("image") or "")
    require(
        image.startswith(f"{registry}/") and "@sha256:" in image,
        f"the image must be the Host registry's ({registry}), by digest, not {image!r}",
    )
    security = container.get("securityContext") or {}
    require(
        security.get("readOnlyRootFilesystem") is True, "the root file system must be read-only"
    )
    require(
        security.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation must be false"
    )
    require(not security.get("privileged"), "the container must not be privileged")
    capabilities = security.get("capabilities") or {}
    require(capabilities.get("drop") == ["ALL"], "every capability must be dropped (drop: [ALL])")
    require(not capabilities.get("add"), "no capability may be added")
    require(_seccomp(security) == "RuntimeDefault", "seccompProfile must be RuntimeDefault")
    require(
        security.get("procMount") in (None, "Default"), "procMount must be the default (masked)"
    )
    for port in container.get("ports") or []:
        require(
            not port.get("hostPort") and not port.get("hostIP"),
            "no port may be bound on the node (hostPort)",
        )
    for variable in container.get("env") or []:
        require(
            set(variable) <= {"name", "value"},
            f"environment variable {variable.get('name')!r} must be a plain value",
        )
    mounts = container.get("volumeMounts") or []
    for mount in mounts:
        if mount.get("name") == STATE_VOLUME:
            require(mount.get("mountPath") == STATE_MOUNT, f"/state must be at {STATE_MOUNT}")
            require(not mount.get("readOnly"), "/state must be writable")
        elif mount.get("name") == SECRETS_VOLUME:
            require(mount.get("mountPath") == SECRETS_DIR, f"secrets must be at {SECRETS_DIR}")
            require(
                mount.get("readOnly") is True, f"its secrets at {SECRETS_DIR} must be read-only"
            )
        else:
            problems.append(f"mount {mount.get('name')!r} is not allowed")
        require(not mount.get("subPath") and not mount.get("subPathExpr"), "no subPath mounts")
    resources = container.get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    memory, cpu = memory_bytes(limits.get("memory")), milli_cpus(limits.get("cpu"))
    require(
        memory is not None and 0 < memory <= maximum.memory_bytes,
        f"a memory limit must be set, at most {maximum.memory_bytes} bytes",
    )
    require(
        cpu is not None and 0 < cpu <= maximum.milli_cpus,
        f"a CPU limit must be set, at most {maximum.milli_cpus}m",
    )
    require(
        memory_bytes(requests.get("memory")) == memory and milli_cpus(requests.get("cpu")) == cpu,
        "requests must equal limits (what the program is given is what it is held to)",
    )
    return problems


QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$")
BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
DECIMAL = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def memory_bytes(quantity: object) -> int | None:
    """A Kubernetes quantity (`536870912`, `512Mi`, `1G`) in bytes; None if it is not one."""
    match = QUANTITY.match(str(quantity)) if quantity is not None else None
    if match is None:
        return None
    number, suffix = float(match.group(1)), match.group(2)
    factor = BINARY.get(suffix) or DECIMAL.get(suffix)
    if factor is None:
        return None
    return int(number * factor)


def milli_cpus(quantity: object) -> int | None:
    """A CPU quantity (`500m`, `1`, `0.5`) in millicores; None if it is not one."""
    match = QUANTITY.match(str(quantity)) if quantity is not None else None
    if match is None:
        return None
    number, suffix = float(match.group(1)), match.group(2)
    if suffix == "m":
        return int(number)
    if suffix == "":
        return int(number * 1000)
    return None
