"""Every security contract of a running program, verified twice, on the real engine and runsc.

Once from `docker inspect` (what Docker was told and made), once from inside
the running sandbox (what the program can actually do), through the stub's
probe routes on the published WatcherAPI port. One program serves the whole
module (a start under gVisor is the slow part); a second one is made for the
test that one program cannot reach another.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import docker
import pytest
import pytest_asyncio

from hershy.adapters.docker.compose import (
    LABEL_BUILD,
    LABEL_MANAGED,
    LABEL_PROGRAM,
    LABEL_RUN,
    SECURE_RUNTIME,
    STATE_MOUNT,
    WATCHER_PORT,
    contract_violations,
)
from hershy.adapters.docker.image_names import host_part
from hershy.adapters.docker.runtime import SPEC_FILE, DockerSettings
from hershy.domain.model import Program, Resources
from tests.integration.conftest import Host, image_owner, images_of, open_host, tcp_connects

pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="module")]

#: Not the Host's defaults, so that the limits seen are the program's own.
RESOURCES = Resources(memory_bytes=192 * 1024 * 1024, milli_cpus=750, pids=128)
NO_CAPABILITIES = "0000000000000000"


@dataclass
class Running:
    host: Host
    program: Program
    #: `docker inspect` of its container.
    attrs: dict[str, Any]

    @property
    def port(self) -> int:
        return int(self.program.proxy_target.rsplit(":", 1)[1])

    @property
    def config(self) -> dict[str, Any]:
        host_config: dict[str, Any] = self.attrs["HostConfig"]
        return host_config

    @property
    def state_dir(self) -> str:
        return str(self.host.program_dir(self.program.id) / "state")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    stub_binary: bytes,
) -> AsyncIterator[Running]:
    data_dir = tmp_path_factory.mktemp("contracts") / "data"
    async with open_host(data_dir, docker_client, stub_binary) as host:
        program = await host.ready(resources=RESOURCES)
        assert program.container_id is not None
        attrs: dict[str, Any] = docker_client.containers.get(program.container_id).attrs
        yield Running(host, program, attrs)


def host_addresses() -> list[tuple[str, str]]:
    """(address, interface) for every non-loopback IPv4 and IPv6 address of this host."""
    out = subprocess.run(
        ["ip", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        interface, family, cidr = fields[1], fields[2], fields[3]
        if family not in ("inet", "inet6"):
            continue
        address = ipaddress.ip_address(cidr.split("/")[0])
        if address.is_loopback:
            continue
        found.append((str(address), interface))
    return found


def files_named(name: str, roots: list[str]) -> list[str]:
    """Every file called `name` under `roots` (which must exist)."""
    for root in roots:
        assert os.path.isdir(root), root
    return [
        os.path.join(folder, name)
        for root in roots
        for folder, _, files in os.walk(root)
        if name in files
    ]


def connect_target(address: str, interface: str) -> str:
    """What to connect to: a link-local IPv6 address needs its interface."""
    if ipaddress.ip_address(address).is_link_local and ":" in address:
        return f"{address}%{interface}"
    return address


# --- from docker inspect --------------------------------------------------------------------


async def test_inspect_runtime_is_runsc(running: Running) -> None:
    assert running.config["Runtime"] == SECURE_RUNTIME == "runsc"


async def test_inspect_root_file_system_is_read_only(running: Running) -> None:
    assert running.config["ReadonlyRootfs"] is True
    assert not running.config.get("Tmpfs")


async def test_inspect_the_only_mount_is_the_state_folder_read_write(running: Running) -> None:
    assert running.config["Binds"] == [f"{running.state_dir}:{STATE_MOUNT}:rw"]
    (mount,) = running.attrs["Mounts"]
    assert mount["Type"] == "bind"
    assert mount["Source"] == running.state_dir
    assert mount["Destination"] == STATE_MOUNT
    assert mount["RW"] is True
    assert not running.config.get("VolumesFrom")
    assert not running.config.get("Devices")
    assert not running.config.get("Mounts")


async def test_inspect_port_8080_is_published_on_loopback_only(running: Running) -> None:
    expected = {f"{WATCHER_PORT}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(running.port)}]}
    assert running.config["PortBindings"] == expected
    assert running.config["PublishAllPorts"] is False
    assert running.attrs["NetworkSettings"]["Ports"] == expected
    assert running.config["NetworkMode"] not in ("host", "none")
    assert not running.config["NetworkMode"].startswith("container:")


async def test_inspect_capabilities_are_dropped_and_privileges_refused(running: Running) -> None:
    assert "ALL" in running.config["CapDrop"]
    assert not running.config["CapAdd"]
    assert any(
        option in ("no-new-privileges", "no-new-privileges:true")
        for option in running.config["SecurityOpt"]
    ), running.config["SecurityOpt"]
    assert running.config["Privileged"] is False


async def test_inspect_no_host_namespace_is_shared(running: Running) -> None:
    assert running.config["NetworkMode"] != "host"
    assert running.config["PidMode"] in ("", "private")
    assert running.config["IpcMode"] in ("private", "shareable", "none")
    assert running.config["UsernsMode"] == ""
    assert running.config["UTSMode"] == ""


async def test_inspect_limits_are_the_programs_resources(running: Running) -> None:
    assert running.program.resources == RESOURCES
    assert running.config["PidsLimit"] == RESOURCES.pids
    assert running.config["Memory"] == RESOURCES.memory_bytes
    assert running.config["MemorySwap"] == RESOURCES.memory_bytes  # no swap beyond it
    assert running.config["NanoCpus"] == RESOURCES.milli_cpus * 1_000_000
    assert running.config["RestartPolicy"]["Name"] == "no"  # the Host restarts, not Docker


async def test_inspect_labels_name_the_program_and_the_run(running: Running) -> None:
    labels = running.attrs["Config"]["Labels"]
    # Managed by this Host: the image it built carries the same owner.
    (image,) = images_of(running.host.docker, running.program.id)
    assert labels[LABEL_MANAGED]
    assert host_part(labels[LABEL_MANAGED]) == image_owner(image)
    assert labels[LABEL_PROGRAM] == running.program.id
    assert labels[LABEL_RUN] == str(running.program.run)
    assert labels[LABEL_BUILD] == running.program.build_id


async def test_compose_json_is_what_runs_and_keeps_the_contracts(running: Running) -> None:
    spec = json.loads((running.host.program_dir(running.program.id) / SPEC_FILE).read_text())
    settings = DockerSettings()
    assert (
        contract_violations(
            spec, allowed_runtimes=settings.allowed_runtimes, maximum=settings.max_resources
        )
        == []
    )
    service = spec["services"]["program"]
    assert service["image"] == running.attrs["Image"] == running.program.image_id
    assert f"/{service['container_name']}" == running.attrs["Name"]
    assert service["runtime"] == running.config["Runtime"]
    assert service["read_only"] is running.config["ReadonlyRootfs"]
    (port,) = service["ports"]
    binding = running.config["PortBindings"][f"{port['target']}/tcp"]
    assert binding == [{"HostIp": port["host_ip"], "HostPort": port["published"]}]
    (volume,) = service["volumes"]
    assert running.config["Binds"] == [f"{volume['source']}:{volume['target']}:rw"]
    assert service["cap_drop"] == running.config["CapDrop"]
    assert service["pids_limit"] == running.config["PidsLimit"]
    assert service["mem_limit"] == running.config["Memory"]
    assert round(service["cpus"] * 1e9) == running.config["NanoCpus"]
    assert service["labels"].items() <= running.attrs["Config"]["Labels"].items()


# --- from inside the sandbox ----------------------------------------------------------------


async def test_inside_writing_to_the_root_file_system_fails(running: Running) -> None:
    for path in ("/written-by-the-program", "/watcher-stub", "/etc/written", "/etc/hosts"):
        probe = await running.host.probe(running.program, "/probe/write", path=path)
        assert probe["ok"] is False, probe
        assert "read-only file system" in probe["error"], probe


async def test_inside_scratch_space_stays_in_the_sandboxs_memory(running: Running) -> None:
    """gVisor mounts a tmpfs of its own at /tmp, and Docker one at /dev/shm: writable, but
    in the sandbox's memory, never on the host's disk."""
    name = f"scratch-{uuid.uuid4().hex[:8]}"
    for path in (f"/tmp/{name}", f"/dev/shm/{name}"):
        await running.host.probe(running.program, "/probe/write", path=path)
    # The container's own writable layer (overlay2), and everything the program owns.
    upper = running.attrs["GraphDriver"]["Data"]["UpperDir"]
    on_disk = files_named(name, [upper, str(running.host.program_dir(running.program.id))])
    assert on_disk == [], f"a write outside /state reached the host's disk: {on_disk}"


async def test_inside_writing_to_state_works_and_lands_in_the_hosts_folder(
    running: Running,
) -> None:
    name = f"probe-{uuid.uuid4().hex[:8]}"
    probe = await running.host.probe(running.program, "/probe/write", path=f"/state/{name}")
    assert probe["ok"] is True, probe
    on_host = running.host.program_dir(running.program.id) / "state" / name
    assert on_host.read_text().startswith("probe ")


async def test_inside_the_kernel_is_gvisors(running: Running) -> None:
    uname = await running.host.probe(running.program, "/probe/uname")
    assert uname["sysname"] == "Linux"
    # Current runsc: "4.19.0-gvisor"; Debian's 2022 runsc (network=host mode): "4.4.0".
    assert uname["release"].endswith("-gvisor") or uname["release"] == "4.4.0", uname
    assert uname["release"] != os.uname().release


async def test_inside_the_capabilities_are_empty(running: Running) -> None:
    caps = await running.host.probe(running.program, "/probe/caps")
    assert caps["capEff"] == NO_CAPABILITIES, caps


# --- the port: reachable on loopback alone --------------------------------------------------


async def test_the_watcher_api_is_reachable_on_loopback_only(running: Running) -> None:
    assert tcp_connects("127.0.0.1", running.port)
    addresses = host_addresses()
    assert addresses, "this host has no non-loopback address to check"
    reachable = [
        f"{target}:{port}"
        for address, interface in addresses
        for port in (running.port, WATCHER_PORT)
        if tcp_connects(target := connect_target(address, interface), port)
    ]
    assert reachable == [], f"the WatcherAPI answers on non-loopback addresses: {reachable}"


async def test_inside_the_hosts_addresses_do_not_lead_to_the_published_port(
    running: Running,
) -> None:
    """From the sandbox, the host's own addresses (the bridge gateway too) lead nowhere."""
    own = await running.host.probe(
        running.program, "/probe/connect", addr=f"127.0.0.1:{WATCHER_PORT}"
    )
    assert own["ok"] is True, own  # the probe itself works
    reached = []
    for address, _ in host_addresses():
        if ":" in address:
            continue  # the container has no IPv6
        for port in (running.port, WATCHER_PORT):
            probe = await running.host.probe(
                running.program, "/probe/connect", addr=f"{address}:{port}"
            )
            if probe["ok"]:
                reached.append(probe["addr"])
    assert reached == []


async def test_one_program_cannot_reach_another_programs_watcher_api(running: Running) -> None:
    other = await running.host.ready()
    assert other.container_id is not None
    network = running.host.docker.containers.get(other.container_id).attrs["NetworkSettings"]
    other_ip = network["IPAddress"]
    assert other_ip, network
    own_ip = running.attrs["NetworkSettings"]["IPAddress"]
    try:
        itself = await running.host.probe(
            running.program, "/probe/connect", addr=f"{own_ip}:{WATCHER_PORT}"
        )
        assert itself["ok"] is True, itself  # its own address works: the probe is sound
        probe = await running.host.probe(
            running.program, "/probe/connect", addr=f"{other_ip}:{WATCHER_PORT}"
        )
        bridge = running.host.docker.networks.get("bridge").attrs["Options"]
        icc = bridge.get("com.docker.network.bridge.enable_icc")
        assert probe["ok"] is False, (
            f"program {running.program.id} reached program {other.id}'s WatcherAPI directly at "
            f"{other_ip}:{WATCHER_PORT}; the default bridge has enable_icc={icc}: "
            'scripts/setup-host.sh sets "icc": false in /etc/docker/daemon.json, which takes a '
            "restart of dockerd (with no container running) to apply"
        )
    finally:
        await running.host.delete(other.id)
