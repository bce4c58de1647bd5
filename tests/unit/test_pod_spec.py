"""The Kubernetes runtime's Pod spec and its contract validator (pure)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from hershy.adapters.kubernetes.pod_spec import (
    PodRequest,
    claim_name,
    compose_pod,
    contract_violations,
    memory_bytes,
    milli_cpus,
    pod_name,
    repository,
)
from hershy.adapters.kubernetes.runtime import network_policy
from hershy.adapters.kubernetes.watch import view_of
from hershy.domain.model import Resources

REGISTRY = "127.0.0.1:5000"
MAXIMUM = Resources(memory_bytes=2 * 1024**3, milli_cpus=2000, pids=1024, state_bytes=8 * 1024**3)
DIGEST = "sha256:" + "ab" * 32
HOST = "0123456789ab"


def request(**changes: Any) -> PodRequest:
    fields: dict[str, Any] = {
        "host_id": HOST,
        "namespace": "hershy",
        "program_id": "prog-1234",
        "run": 3,
        "build_id": "b1",
        "image": f"{REGISTRY}/{repository(HOST, 'prog-1234')}@{DIGEST}",
        "resources": Resources(memory_bytes=256 * 1024**2, milli_cpus=500),
        "runtime_class": "gvisor",
        "claim": claim_name(HOST, "prog-1234"),
        "env": (("GREETING", "hi"),),
        "secret": None,
    }
    fields.update(changes)
    return PodRequest(**fields)


def violations(pod: dict[str, Any], secret: str | None = None) -> list[str]:
    return contract_violations(
        pod,
        runtime_class="gvisor",
        registry=REGISTRY,
        maximum=MAXIMUM,
        claim=claim_name(HOST, "prog-1234"),
        secret=secret,
    )


def test_the_composed_pod_keeps_every_contract() -> None:
    pod = compose_pod(request())
    assert violations(pod) == []
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["runtimeClassName"] == "gvisor"
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    (container,) = spec["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": str(256 * 1024**2)}
    assert container["resources"]["requests"] == container["resources"]["limits"]
    labels = pod["metadata"]["labels"]
    assert labels["dev.hershy.managed"] == HOST
    assert labels["dev.hershy.program"] == "prog-1234"
    assert labels["dev.hershy.run"] == "3"


def test_the_secret_is_named_never_carried() -> None:
    pod = compose_pod(request(secret="hershy-secrets-x"))
    assert violations(pod, secret="hershy-secrets-x") == []
    (container,) = pod["spec"]["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "secrets")
    assert mount == {"name": "secrets", "mountPath": "/run/secrets", "readOnly": True}
    # Another Secret than the program's own is refused.
    assert violations(pod, secret="someone-elses")


def _mutate(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    pod = copy.deepcopy(compose_pod(request()))
    change(pod)
    return pod


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = pod["spec"]["containers"][0]
    return container


HOSTILE: dict[str, Callable[[dict[str, Any]], None]] = {
    "runc": lambda p: p["spec"].update(runtimeClassName="runc"),
    "no runtime class": lambda p: p["spec"].pop("runtimeClassName"),
    "host network": lambda p: p["spec"].update(hostNetwork=True),
    "host pid": lambda p: p["spec"].update(hostPID=True),
    "host ipc": lambda p: p["spec"].update(hostIPC=True),
    "host users": lambda p: p["spec"].update(hostUsers=True),
    "service account token": lambda p: p["spec"].update(automountServiceAccountToken=True),
    "kubelet restarts": lambda p: p["spec"].update(restartPolicy="Always"),
    "host path": lambda p: p["spec"]["volumes"].append({"name": "root", "hostPath": {"path": "/"}}),
    "state as host path": lambda p: p["spec"]["volumes"].__setitem__(
        0, {"name": "state", "hostPath": {"path": "/var/lib"}}
    ),
    "another claim": lambda p: p["spec"]["volumes"][0]["persistentVolumeClaim"].update(
        claimName="someone-elses-state"
    ),
    "init container": lambda p: p["spec"].update(initContainers=[{"name": "x", "image": "y"}]),
    "second container": lambda p: p["spec"]["containers"].append(_container(p)),
    "privileged": lambda p: _container(p)["securityContext"].update(privileged=True),
    "writable root": lambda p: _container(p)["securityContext"].update(
        readOnlyRootFilesystem=False
    ),
    "escalation": lambda p: _container(p)["securityContext"].update(allowPrivilegeEscalation=True),
    "a capability": lambda p: _container(p)["securityContext"]["capabilities"].update(
        add=["NET_ADMIN"]
    ),
    "not all dropped": lambda p: _container(p)["securityContext"]["capabilities"].update(
        drop=["NET_RAW"]
    ),
    "unconfined seccomp": lambda p: _container(p)["securityContext"].update(
        seccompProfile={"type": "Unconfined"}
    ),
    "pod unconfined seccomp": lambda p: p["spec"]["securityContext"].update(
        seccompProfile={"type": "Unconfined"}
    ),
    "unmasked proc": lambda p: _container(p)["securityContext"].update(procMount="Unmasked"),
    "host port": lambda p: _container(p)["ports"][0].update(hostPort=8080),
    "image elsewhere": lambda p: _container(p).update(image="docker.io/library/busybox"),
    "image by tag": lambda p: _container(p).update(image=f"{REGISTRY}/hershy/x:latest"),
    "secret from env": lambda p: _container(p)["env"].append(
        {"name": "T", "valueFrom": {"secretKeyRef": {"name": "other", "key": "k"}}}
    ),
    "no memory limit": lambda p: _container(p)["resources"]["limits"].pop("memory"),
    "over the cpu maximum": lambda p: _container(p)["resources"].update(
        limits={"cpu": "8", "memory": "1Gi"}, requests={"cpu": "8", "memory": "1Gi"}
    ),
    "requests below limits": lambda p: _container(p)["resources"]["requests"].update(cpu="1m"),
    "command override": lambda p: _container(p).update(command=["/bin/sh"]),
    "ephemeral container": lambda p: p["spec"].update(ephemeralContainers=[{"name": "d"}]),
    "sub path": lambda p: _container(p)["volumeMounts"][0].update(subPath="../.."),
    "sysctls": lambda p: p["spec"]["securityContext"].update(
        sysctls=[{"name": "net.core.somaxconn", "value": "1"}]
    ),
    "no labels": lambda p: p["metadata"].update(labels={}),
}


@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_the_validator_refuses_a_pod_that_breaks_a_contract(attack: str) -> None:
    assert violations(_mutate(HOSTILE[attack])), attack


def test_what_the_api_server_adds_by_default_is_accepted() -> None:
    def stored(p: dict[str, Any]) -> None:
        p["metadata"].update(
            uid="u-1", resourceVersion="7", creationTimestamp="2026-12-01T00:00:00Z"
        )
        p["spec"].update(
            dnsPolicy="ClusterFirst",
            schedulerName="default-scheduler",
            serviceAccountName="default",
            serviceAccount="default",
            tolerations=[{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}],
            priority=0,
            preemptionPolicy="PreemptLowerPriority",
            overhead={"memory": "1Mi"},
        )
        _container(p).update(
            terminationMessagePath="/dev/termination-log", terminationMessagePolicy="File"
        )
        _container(p)["resources"]["limits"]["memory"] = "256Mi"
        _container(p)["resources"]["requests"]["memory"] = "256Mi"

    assert violations(_mutate(stored)) == []


def test_quantities() -> None:
    assert memory_bytes("256Mi") == 256 * 1024**2
    assert memory_bytes("1G") == 10**9
    assert memory_bytes(str(5)) == 5
    assert memory_bytes("lots") is None
    assert milli_cpus("500m") == 500
    assert milli_cpus("2") == 2000
    assert milli_cpus("0.5") == 500
    assert milli_cpus("1k") is None


def test_names_are_dns_labels_and_apart_per_host() -> None:
    name = pod_name(HOST, "Prog_With.Odd*Chars", 12)
    assert name == name.lower()
    assert len(name) <= 63
    assert pod_name(HOST, "prog-1", 1) != pod_name("another-host", "prog-1", 1)
    assert repository(HOST, "prog-1") == f"hershy/{HOST}/prog-1"


def test_the_network_policy_admits_only_the_host_to_the_watcher_port() -> None:
    policy = network_policy("n", "hershy", {"dev.hershy.program": "p"}, "10.88.0.1")
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"ipBlock": {"cidr": "10.88.0.1/32"}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert policy["spec"]["policyTypes"] == ["Ingress"]


def test_a_pod_view_reads_exits_oom_and_evictions() -> None:
    pod = compose_pod(request())
    pod["metadata"]["uid"] = "u"
    pod["status"] = {
        "phase": "Failed",
        "podIP": "10.88.0.7",
        "containerStatuses": [{"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}],
    }
    view = view_of(pod)
    assert view.ended
    assert view.terminated is not None
    assert view.terminated.oom_killed
    assert (view.run, view.ip, view.terminated.exit_code) == (3, "10.88.0.7", 137)
    pod["status"] = {"phase": "Failed", "reason": "Evicted", "message": "low on memory"}
    evicted = view_of(pod)
    assert evicted.ended
    assert evicted.terminated is None
    assert evicted.reason == "Evicted"
    pod["status"] = {
        "phase": "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "m"}
        ],
    }
    pending = view_of(pod)
    assert not pending.ended
    assert pending.reason == "Unschedulable"
