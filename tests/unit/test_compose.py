"""The container spec and the security contracts it must keep."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from hershy.adapters.docker.compose import ContainerRequest, compose_spec, contract_violations
from hershy.domain.model import Resources

MAXIMUM = Resources(memory_bytes=4 * 1024**3, milli_cpus=2000, pids=4096)
SECURE = frozenset({"runsc"})


def spec() -> dict[str, Any]:
    return compose_spec(
        ContainerRequest(
            host_id="h-1",
            program_id="prog-1",
            run=3,
            build_id="b-1",
            image="sha256:abc",
            host_port=19005,
            state_dir="/var/lib/hershy/programs/prog-1/state",
            resources=Resources(),
            runtime="runsc",
        )
    )


def service(document: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = document["services"]["program"]
    return result


def test_the_generated_spec_keeps_every_contract() -> None:
    document = spec()
    assert contract_violations(document, allowed_runtimes=SECURE, maximum=MAXIMUM) == []
    program = service(document)
    assert program["runtime"] == "runsc"
    assert program["read_only"] is True
    assert program["ports"] == [
        {"target": 8080, "published": "19005", "host_ip": "127.0.0.1", "protocol": "tcp"}
    ]
    assert program["volumes"][0]["target"] == "/state"
    assert program["cap_drop"] == ["ALL"]
    assert program["labels"]["dev.hershy.run"] == "3"
    assert program["container_name"] == "hershy-prog-1-r3"


def _set(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    def change(program: dict[str, Any]) -> None:
        program[key] = value

    return change


def _port(**changes: object) -> Callable[[dict[str, Any]], None]:
    def change(program: dict[str, Any]) -> None:
        program["ports"][0].update(changes)

    return change


BREACHES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("runc", _set("runtime", "runc"), "runtime must be one of"),
    ("writable root", _set("read_only", False), "read-only"),
    ("second volume", lambda p: p["volumes"].append(dict(p["volumes"][0])), "only volume"),
    ("read-only state", lambda p: p["volumes"][0].update(read_only=True), "only volume"),
    ("state elsewhere", lambda p: p["volumes"][0].update(target="/data"), "only volume"),
    ("tmpfs", _set("tmpfs", ["/tmp"]), "tmpfs is not allowed"),
    ("devices", _set("devices", ["/dev/kvm"]), "devices is not allowed"),
    ("all interfaces", _port(host_ip="0.0.0.0"), "127.0.0.1 only"),
    ("no host ip", lambda p: p["ports"][0].pop("host_ip"), "127.0.0.1 only"),
    ("low port", _port(published="8080"), "19001-29999"),
    ("other target", _port(target=22), "exactly port 8080"),
    ("second port", lambda p: p["ports"].append(dict(p["ports"][0])), "exactly port 8080"),
    ("capabilities kept", _set("cap_drop", []), "cap_drop: ALL"),
    ("capability added", _set("cap_add", ["NET_ADMIN"]), "no capability may be added"),
    ("new privileges", _set("security_opt", []), "no-new-privileges"),
    ("privileged", _set("privileged", True), "not be privileged"),
    ("host network", _set("network_mode", "host"), "network_mode must not be set"),
    ("host pid", _set("pid", "host"), "pid must not be set"),
    ("no pids limit", _set("pids_limit", None), "pids_limit"),
    ("too much memory", _set("mem_limit", 5 * 1024**3), "mem_limit"),
    ("too many cpus", _set("cpus", 8.0), "cpus must be set, at most 2"),
    ("unlabelled", _set("labels", {}), "labels"),
]


@pytest.mark.parametrize(("breach", "change", "problem"), BREACHES, ids=[b[0] for b in BREACHES])
def test_each_breach_is_refused_with_a_reason(
    breach: str, change: Callable[[dict[str, Any]], None], problem: str
) -> None:
    document = copy.deepcopy(spec())
    change(service(document))
    problems = contract_violations(document, allowed_runtimes=SECURE, maximum=MAXIMUM)
    assert len(problems) == 1, problems
    assert problem in problems[0]


def test_runc_passes_only_when_the_host_allows_it_explicitly() -> None:
    document = copy.deepcopy(spec())
    service(document)["runtime"] = "runc"
    allowed = frozenset({"runsc", "runc"})
    assert contract_violations(document, allowed_runtimes=allowed, maximum=MAXIMUM) == []


def test_a_spec_with_more_than_one_service_is_refused() -> None:
    document = copy.deepcopy(spec())
    document["services"]["sidecar"] = service(document)
    assert contract_violations(document, allowed_runtimes=SECURE, maximum=MAXIMUM) == [
        "exactly one service expected, found 2"
    ]


def test_the_programs_stop_signal_and_grace_are_in_the_spec_and_the_create_arguments() -> None:
    from dataclasses import replace

    from hershy.adapters.docker.compose import LABEL_STOP_GRACE
    from hershy.adapters.docker.runtime import docker_create_args

    request = replace(
        ContainerRequest(
            host_id="h-1",
            program_id="prog-1",
            run=1,
            build_id="b-1",
            image="sha256:abc",
            host_port=19005,
            state_dir="/s",
            resources=Resources(),
            runtime="runsc",
        ),
        stop_signal="SIGINT",
        stop_grace_seconds=2.5,
    )
    spec = compose_spec(request)
    service = spec["services"]["program"]
    assert service["stop_signal"] == "SIGINT"
    assert service["stop_grace_period"] == "2.5s"
    # Kept on the container, so a Host restarted meanwhile stops it the same way.
    assert service["labels"][LABEL_STOP_GRACE] == "2.5"
    assert docker_create_args(spec)["stop_signal"] == "SIGINT"
    assert contract_violations(spec, allowed_runtimes=SECURE, maximum=MAXIMUM) == []
