"""The Docker adapter's pure parts: spec to SDK arguments, the created-container check, runtimes."""

from __future__ import annotations

import io
import tarfile
from typing import Any

import pytest

from hershy.adapters.docker.runtime import (
    ContractBroken,
    DockerSettings,
    RuntimeUnavailable,
    build_context,
    check_created,
    describe_runtime,
    docker_create_args,
)
from hershy.domain.validation import ProgramSource
from tests.unit.test_compose import spec


def test_create_arguments_carry_the_spec_and_nothing_else() -> None:
    arguments = docker_create_args(spec())
    assert arguments["runtime"] == "runsc"
    assert arguments["read_only"] is True
    assert arguments["volumes"] == {
        "/var/lib/hershy/programs/prog-1/state": {"bind": "/state", "mode": "rw"}
    }
    assert arguments["ports"] == {"8080/tcp": ("127.0.0.1", 19005)}
    assert arguments["cap_drop"] == ["ALL"]
    assert arguments["security_opt"] == ["no-new-privileges:true"]
    assert arguments["privileged"] is False
    assert arguments["mem_limit"] == arguments["memswap_limit"] == 512 * 1024**2
    assert arguments["nano_cpus"] == 1_000_000_000
    assert arguments["pids_limit"] == 256
    assert "network_mode" not in arguments
    assert "cap_add" not in arguments


def inspected(**host_config: Any) -> dict[str, Any]:
    base = {
        "Runtime": "runsc",
        "ReadonlyRootfs": True,
        "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "19005"}]},
        "CapDrop": ["ALL"],
    }
    return {"HostConfig": {**base, **host_config}}


def test_a_container_as_asked_passes_the_check() -> None:
    check_created(inspected(), spec())


@pytest.mark.parametrize(
    ("host_config", "problem"),
    [
        ({"Runtime": "runc"}, "under 'runc', not 'runsc'"),
        ({"ReadonlyRootfs": False}, "writable"),
        ({"PortBindings": {"8080/tcp": [{"HostIp": "", "HostPort": "1"}]}}, "beyond 127.0.0.1"),
        ({"CapDrop": None}, "capabilities"),
    ],
)
def test_a_container_docker_made_differently_is_refused(
    host_config: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ContractBroken, match=problem):
        check_created(inspected(**host_config), spec())


NETSTACK_INFO = {
    "DefaultRuntime": "runsc",
    "Runtimes": {"runc": {"path": "runc"}, "runsc": {"path": "/x/runsc", "runtimeArgs": []}},
}


def test_runtime_descriptions_say_how_programs_are_isolated() -> None:
    assert describe_runtime(DockerSettings(), NETSTACK_INFO) == "runsc (gVisor, network=netstack)"
    host = {
        **NETSTACK_INFO,
        "Runtimes": {"runsc": {"path": "runsc", "runtimeArgs": ["--network=host"]}},
    }
    assert describe_runtime(DockerSettings(), host) == "runsc (gVisor, network=host)"
    insecure = DockerSettings(runtime="runc", allow_insecure_runtime=True)
    assert describe_runtime(insecure, NETSTACK_INFO) == "runc (INSECURE: no sandbox)"


@pytest.mark.parametrize(
    ("settings", "info", "problem"),
    [
        (DockerSettings(), {"Runtimes": {"runc": {}}}, "no runtime 'runsc'"),
        (DockerSettings(runtime="runc"), NETSTACK_INFO, "--allow-insecure-runtime"),
        (DockerSettings(), {**NETSTACK_INFO, "DefaultRuntime": "runc"}, "outside gVisor"),
    ],
)
def test_a_host_that_cannot_sandbox_refuses_to_start(
    settings: DockerSettings, info: dict[str, Any], problem: str
) -> None:
    with pytest.raises(RuntimeUnavailable, match=problem):
        describe_runtime(settings, info)


def test_the_build_context_is_canonical_and_executable() -> None:
    source = ProgramSource(b"FROM scratch", {"b/run": b"x", "a": b"y"})
    first = build_context(source)
    assert first == build_context(ProgramSource(b"FROM scratch", {"a": b"y", "b/run": b"x"}))
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["Dockerfile", "a", "b/run"]
    assert {m.mode for m in members} == {0o755}
    assert {m.mtime for m in members} == {0}
