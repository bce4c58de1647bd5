"""The container a program runs in, as a Compose-shaped spec, and the contracts it must keep.

`compose_spec` writes down exactly what will run; `contract_violations`
refuses any spec that breaks a security contract. The Docker adapter only
ever creates containers from a spec that passed. Pure: no IO.

The contracts (README.md, "How programs run"):

| contract | how |
|---|---|
| gVisor runtime | `runtime: runsc` (runc only when the Host allows it, loudly) |
| read-only root | `read_only: true` |
| one writable volume | the program's state folder at `/state`, nothing else |
| no exposed port | 8080 published on 127.0.0.1 only, at a port in 19001-29999 |
| least privilege | `cap_drop: [ALL]`, `no-new-privileges`, not privileged |
| bounded | pids, memory and CPU limits |
| owned | Hershy's labels on the container |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hershy.domain.config import SECRETS_DIR
from hershy.domain.model import Resources

WATCHER_PORT = 8080
STATE_MOUNT = "/state"
PORT_RANGE = range(19001, 30000)
SECURE_RUNTIME = "runsc"

#: Its value is the id of the Host that owns the container or image (one per data dir),
#: so that two Hosts on one Docker daemon never take each other's for orphans.
LABEL_MANAGED = "dev.hershy.managed"
LABEL_PROGRAM = "dev.hershy.program"
LABEL_RUN = "dev.hershy.run"
LABEL_BUILD = "dev.hershy.build"
#: The stop grace (seconds) its program asked for: a restarted Host stops it the same way.
LABEL_STOP_GRACE = "dev.hershy.stop-grace"
#: On images: the user whose build made it (a build reuses only its own user's cache).
LABEL_USER = "dev.hershy.user"


@dataclass(frozen=True, slots=True)
class ContainerRequest:
    host_id: str
    program_id: str
    run: int
    build_id: str
    image: str
    host_port: int
    state_dir: str
    resources: Resources
    runtime: str
    #: Plain environment variables (the program's `env`); never a secret.
    env: tuple[tuple[str, str], ...] = ()
    #: The Host's memory-backed folder of the program's secrets, bound read-only at
    #: /run/secrets; None when it has none. The spec names the folder, never a value.
    secrets_dir: str | None = None

    #: How the program is asked to stop (Docker sends it, waits the grace, then SIGKILL).
    stop_signal: str = "SIGTERM"
    stop_grace_seconds: float = 10.0


def labelled_run(labels: Mapping[str, str]) -> int | None:
    """The run a container's labels name; None if they name none (or garbage)."""
    try:
        return int(labels[LABEL_RUN])
    except (KeyError, ValueError):
        return None


def container_name(program_id: str, run: int) -> str:
    return f"hershy-{program_id}-r{run}"


def labels_for(
    host_id: str, program_id: str, build_id: str, run: int | None = None
) -> dict[str, str]:
    labels = {LABEL_MANAGED: host_id, LABEL_PROGRAM: program_id, LABEL_BUILD: build_id}
    if run is not None:
        labels[LABEL_RUN] = str(run)
    return labels


def compose_spec(request: ContainerRequest) -> dict[str, Any]:
    """The docker-compose file that describes the program's container."""
    spec = _base_spec(request)
    service = spec["services"]["program"]
    if request.env:
        service["environment"] = dict(request.env)
    if request.secrets_dir is not None:
        service["volumes"].append(
            {
                "type": "bind",
                "source": request.secrets_dir,
                "target": SECRETS_DIR,
                "read_only": True,
            }
        )
    return spec


def _base_spec(request: ContainerRequest) -> dict[str, Any]:
    return {
        "name": f"hershy-{request.program_id}",
        "services": {
            "program": {
                "image": request.image,
                "container_name": container_name(request.program_id, request.run),
                "runtime": request.runtime,
                "read_only": True,
                "volumes": [
                    {
                        "type": "bind",
                        "source": request.state_dir,
                        "target": STATE_MOUNT,
                        "read_only": False,
                    }
                ],
                "ports": [
                    {
                        "target": WATCHER_PORT,
                        "published": str(request.host_port),
                        "host_ip": "127.0.0.1",
                        "protocol": "tcp",
                    }
                ],
                "cap_drop": ["ALL"],
                "cap_add": [],
                "security_opt": ["no-new-privileges:true"],
                "privileged": False,
                "pids_limit": request.resources.pids,
                "mem_limit": request.resources.memory_bytes,
                "cpus": request.resources.milli_cpus / 1000,
                "restart": "no",
                "stop_signal": request.stop_signal,
                "stop_grace_period": f"{request.stop_grace_seconds:g}s",
                "labels": {
                    **labels_for(
                        request.host_id, request.program_id, request.build_id, request.run
                    ),
                    LABEL_STOP_GRACE: f"{request.stop_grace_seconds:g}",
                },
                "logging": {"driver": "json-file", "options": {"max-size": "10m", "max-file": "2"}},
            }
        },
    }


def contract_violations(
    spec: Mapping[str, Any], *, allowed_runtimes: frozenset[str], maximum: Resources
) -> list[str]:
    """Every way `spec` breaks a security contract; empty when it keeps them all."""
    services = spec.get("services", {})
    if len(services) != 1:
        return [f"exactly one service expected, found {len(services)}"]
    (service,) = services.values()
    problems: list[str] = []

    def require(condition: bool, problem: str) -> None:
        if not condition:
            problems.append(problem)

    runtime = service.get("runtime")
    require(
        runtime in allowed_runtimes,
        f"runtime must be one of {sorted(allowed_runtimes)}, not {runtime!r}",
    )
    require(service.get("read_only") is True, "the root file system must be read-only")
    volumes = service.get("volumes", [])
    require(
        len(volumes) in (1, 2)
        and volumes[0].get("type") == "bind"
        and volumes[0].get("target") == STATE_MOUNT
        and volumes[0].get("read_only") is False,
        f"the only volume must be the program's state folder, writable at {STATE_MOUNT}",
    )
    require(
        all(
            volume.get("type") == "bind"
            and volume.get("target") == SECRETS_DIR
            and volume.get("read_only") is True
            for volume in volumes[1:]
        ),
        f"the only volume besides {STATE_MOUNT} may be the program's secrets, read-only at "
        f"{SECRETS_DIR}",
    )
    environment = service.get("environment", {})
    require(
        isinstance(environment, dict)
        and all(isinstance(value, str) for value in environment.values()),
        "environment must map names to strings",
    )
    for key in ("tmpfs", "devices", "device_cgroup_rules", "volumes_from", "extra_hosts"):
        require(not service.get(key), f"{key} is not allowed")
    ports = service.get("ports", [])
    port_ok = (
        len(ports) == 1
        and ports[0].get("target") == WATCHER_PORT
        and ports[0].get("host_ip") == "127.0.0.1"
        and str(ports[0].get("published", "")).isdigit()
        and int(ports[0]["published"]) in PORT_RANGE
    )
    require(
        port_ok,
        f"exactly port {WATCHER_PORT} must be published, on 127.0.0.1 only, "
        f"at a port in {PORT_RANGE.start}-{PORT_RANGE.stop - 1}",
    )
    require(service.get("cap_drop") == ["ALL"], "every capability must be dropped (cap_drop: ALL)")
    require(not service.get("cap_add"), "no capability may be added")
    require(
        "no-new-privileges:true" in service.get("security_opt", []),
        "no-new-privileges must be set",
    )
    require(service.get("privileged") is False, "the container must not be privileged")
    for key in ("network_mode", "pid", "ipc", "userns_mode", "cgroup_parent"):
        require(key not in service, f"{key} must not be set (host namespaces are not allowed)")
    pids, memory, cpus = service.get("pids_limit"), service.get("mem_limit"), service.get("cpus")
    require(
        isinstance(pids, int) and 0 < pids <= maximum.pids,
        f"pids_limit must be set, at most {maximum.pids}",
    )
    require(
        isinstance(memory, int) and 0 < memory <= maximum.memory_bytes,
        f"mem_limit must be set, at most {maximum.memory_bytes} bytes",
    )
    require(
        isinstance(cpus, int | float) and 0 < cpus <= maximum.milli_cpus / 1000,
        f"cpus must be set, at most {maximum.milli_cpus / 1000:g}",
    )
    labels = service.get("labels", {})
    require(
        bool(labels.get(LABEL_MANAGED)) and bool(labels.get(LABEL_PROGRAM)),
        f"the container must carry the {LABEL_MANAGED} and {LABEL_PROGRAM} labels",
    )
    return problems
