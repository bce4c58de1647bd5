"""Integration fixtures: the Host in-process on the REAL Docker engine and the REAL runsc.

Nothing here skips: without Docker and gVisor these tests fail, saying how to
set the machine up (scripts/setup-host.sh). Programs are built FROM scratch
around the static Go WatcherAPI stub in tests/fixtures/watcher-stub, built
once per session; no image is ever pulled.

Every Host a test opens is checked when it closes: each program the test
created is deleted, and no container or image labelled with its id may be
left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import docker
import pytest
from docker.errors import DockerException

from hershy.adapters.docker.compose import LABEL_MANAGED, LABEL_PROGRAM
from hershy.adapters.docker.image_names import host_images, host_part, parse_tag
from hershy.adapters.docker.port_pool import PortPool
from hershy.adapters.docker.runtime import DockerSettings
from hershy.adapters.watcher_probe import ProberSettings
from hershy.bootstrap import HostConfig, Runtime, running_host
from hershy.domain.errors import NotFound
from hershy.domain.model import BackoffPolicy, LogStream, Program, Resources, State
from hershy.service.registry import Registry

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
STUB_DIR = REPO / "tests" / "fixtures" / "watcher-stub"
DOCKER_SOCKET = "/var/run/docker.sock"
BASE_IMAGE = "hershy-busybox:latest"
SETUP_HINT = "run scripts/setup-host.sh (as root) to install and start Docker with gVisor"
#: Fast crash loops: 0.5 s, 1 s, 2 s, then 4 s at most.
POLICY = BackoffPolicy(initial=0.5, factor=2, cap=4, reset_after=60)
USER = "itest"


def stub_dockerfile(env: Mapping[str, str] | None = None) -> str:
    """A FROM scratch image of the stub alone; `env` sets its switches (STUB_EXIT_AFTER, ...)."""
    lines = ["FROM scratch", "COPY watcher-stub /watcher-stub"]
    lines += [f"ENV {name}={value}" for name, value in (env or {}).items()]
    lines.append('ENTRYPOINT ["/watcher-stub"]')
    return "\n".join(lines) + "\n"


# --- session checks ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """The engine, checked once: reachable, runsc registered and the default, base image local."""
    try:
        client = docker.DockerClient(base_url=f"unix://{DOCKER_SOCKET}", timeout=60)
        info: dict[str, Any] = client.info()
    except Exception as error:  # DockerException, or the socket's own errors
        pytest.fail(f"Docker is not reachable at {DOCKER_SOCKET} ({error}): {SETUP_HINT}")
    runtimes = info.get("Runtimes") or {}
    if "runsc" not in runtimes or info.get("DefaultRuntime") != "runsc":
        pytest.fail(
            f"Docker has runtimes {sorted(runtimes)} (default {info.get('DefaultRuntime')!r}); "
            f"these tests need runsc registered and the default: {SETUP_HINT}"
        )
    try:
        client.images.get(BASE_IMAGE)
    except DockerException:
        pytest.fail(f"the local base image {BASE_IMAGE} is missing: {SETUP_HINT}")
    try:
        yield client
    finally:
        client.close()


def _go() -> str:
    for candidate in (shutil.which("go"), "/usr/local/go/bin/go"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("no Go toolchain (`go` not on PATH, no /usr/local/go/bin/go): run scripts/setup.sh")


@pytest.fixture(scope="session")
def stub_binary(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The WatcherAPI stub, a static Go binary, built once per session."""
    out = tmp_path_factory.mktemp("watcher-stub") / "watcher-stub"
    env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    result = subprocess.run(
        [_go(), "build", "-ldflags=-s -w", "-o", str(out), "."],
        cwd=STUB_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"building the watcher stub failed:\n{result.stdout}\n{result.stderr}")
    return out.read_bytes()


@pytest.fixture(scope="session", autouse=True)
def unmount_left_state_volumes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Programs' /state volumes outlive their Host by design; tests that end without deleting
    their programs (a `kill -9`, `force_clean`) leave them mounted. Unmount them at the end,
    as `force_clean` removes containers, so no mount or loop device outlives the session."""
    yield
    base = str(tmp_path_factory.getbasetemp())
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        targets = [line.split()[1] for line in mounts if line.split()[1].startswith(base)]
    for target in reversed(targets):
        subprocess.run(["umount", target], capture_output=True, check=False)


# --- docker look-ups --------------------------------------------------------------------------


def containers_of(client: docker.DockerClient, program_id: str) -> list[Any]:
    """Every container (running or not) labelled as the program's."""
    found: list[Any] = client.containers.list(
        all=True, filters={"label": [f"{LABEL_PROGRAM}={program_id}"]}
    )
    return found


def images_of(client: docker.DockerClient, program_id: str) -> list[Any]:
    """Every image labelled as the program's, or tagged with its name."""
    labelled: list[Any] = client.images.list(filters={"label": [f"{LABEL_PROGRAM}={program_id}"]})
    tagged: list[Any] = client.images.list(name=f"hershy/{program_id}")
    return list({image.id: image for image in [*labelled, *tagged]}.values())


def images_of_host(client: docker.DockerClient, host_id: str) -> dict[str, list[Any]]:
    """The images a Host built, by the program each is of: tagged for the program
    (`image_names`), or labelled as its (a Dockerfile of only FROM)."""
    by_program: dict[str, dict[str, Any]] = {}
    for image in client.images.list(filters=host_images(host_id)):
        for tag in image.tags:
            parsed = parse_tag(host_id, tag)
            if parsed is not None:
                by_program.setdefault(parsed[0], {})[image.id] = image
    for image in client.images.list(filters={"label": [f"{LABEL_MANAGED}={host_id}"]}):
        by_program.setdefault(image.labels.get(LABEL_PROGRAM, ""), {})[image.id] = image
    return {program: list(images.values()) for program, images in by_program.items()}


def image_owner(image: Any) -> str:
    """The Host an image says it is of: its tag's host part, or its managed label."""
    for tag in image.tags:
        if found := re.fullmatch(r"hershy/[^:]+:[^.]+\.([a-z0-9]+)\.[a-z0-9_-]*", tag):
            return found.group(1)
    return str((image.labels or {}).get(LABEL_MANAGED, ""))


def image_owner_of(host: Host) -> str:
    """The host part of the Host's image tags (`image_names`): its id, from its store."""
    with contextlib.closing(sqlite3.connect(host.data_dir / "hershy.db")) as db:
        (host_id,) = db.execute("SELECT value FROM meta WHERE key = 'host_id'").fetchone()
    return host_part(str(host_id))


def leftovers(client: docker.DockerClient, program_id: str) -> list[str]:
    """What Docker still holds of a program, described (empty: nothing)."""
    found = [
        f"container {c.short_id} ({c.name}, {c.status})"
        for c in client.containers.list(
            all=True,
            # The managed label's value is the owning Host's id ("true" before Hosts had ids).
            filters={"label": [LABEL_MANAGED, f"{LABEL_PROGRAM}={program_id}"]},
        )
    ]
    found += [f"image {i.short_id} {i.tags}" for i in images_of(client, program_id)]
    return found


def force_clean(client: docker.DockerClient, program_id: str) -> None:
    """Remove by force what a failed test left, so the next tests start clean."""
    for container in containers_of(client, program_id):
        with contextlib.suppress(DockerException):
            container.remove(force=True)
    for image in images_of(client, program_id):
        with contextlib.suppress(DockerException):
            client.images.remove(image.id, force=True)


# --- polling ----------------------------------------------------------------------------------


async def eventually(
    probe: Callable[[], Awaitable[T] | T],
    done: Callable[[T], bool],
    *,
    within: float,
    interval: float = 0.1,
    what: str,
) -> T:
    """Poll `probe` until `done(value)`; fail with the last value after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        result: T = value  # type: ignore[assignment]
        if done(result):
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within:g} s (last seen: {result!r})")
        await asyncio.sleep(interval)


def tcp_connects(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a TCP connection to (host, port) is accepted (IPv4, IPv6, `fe80::1%eth0`)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError:
            return False
    return True


# --- the Host ---------------------------------------------------------------------------------


@dataclass
class Host:
    """A Host running in-process on Docker/runsc, and what a test made with it."""

    registry: Registry
    data_dir: Path
    docker: docker.DockerClient
    stub: bytes
    http: aiohttp.ClientSession
    created: list[str] = field(default_factory=list)
    #: Where the Host's runtime publishes WatcherAPIs.
    ports: PortPool = field(default_factory=PortPool)
    #: Where its gRPC core serves (for a REST shim of a test's own).
    grpc_address: str = ""

    async def create(
        self,
        env: Mapping[str, str] | None = None,
        *,
        dockerfile: str | None = None,
        resources: Resources | None = None,
    ) -> Program:
        """A program of the stub (with `env`), or of `dockerfile` alone when given."""
        if dockerfile is None:
            program = await self.registry.create(
                USER, stub_dockerfile(env), {"watcher-stub": self.stub}, resources
            )
        else:
            program = await self.registry.create(USER, dockerfile, {}, resources)
        self.created.append(program.id)
        return program

    async def ready(self, env: Mapping[str, str] | None = None, **kwargs: Any) -> Program:
        """A program of the stub, started and READY."""
        program = await self.create(env, **kwargs)
        await self.registry.start(program.id)
        return await self.registry.wait(program.id, State.READY, 60)

    def program_dir(self, program_id: str) -> Path:
        return self.data_dir / "programs" / program_id

    async def delete(self, program_id: str, within: float = 30) -> None:
        """Delete the program and wait until it is gone (DELETED)."""
        try:
            await self.registry.delete(program_id)
            await self.registry.wait(program_id, State.DELETED, within)
        except NotFound:
            pass  # gone already

    async def build_log(self, program_id: str) -> list[str]:
        return [
            line.text
            async for line in self.registry.logs(
                program_id, None, frozenset({LogStream.BUILD}), False
            )
        ]

    async def probe(self, program: Program, route: str, **query: str) -> dict[str, Any]:
        """Ask the stub inside the sandbox, through its published port."""
        url = f"http://{program.proxy_target}{route}"
        async with self.http.get(url, params=query) as response:
            assert response.status == 200, f"GET {route} answered {response.status}"
            body: dict[str, Any] = await response.json()
            return body


@contextlib.asynccontextmanager
async def open_host(
    data_dir: Path,
    client: docker.DockerClient,
    stub: bytes,
    *,
    ready_timeout: float = 30.0,
    ports: PortPool | None = None,
    policy: BackoffPolicy = POLICY,
    prober: ProberSettings | None = None,
) -> AsyncIterator[Host]:
    """A Host on runsc; on exit every program is deleted and checked gone from Docker."""
    ports = ports or PortPool()
    config = HostConfig(
        data_dir=data_dir,
        runtime=Runtime.RUNSC,
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        no_auth=True,  # these talk to the registry (or test tokens elsewhere)
        policy=policy,
        docker=DockerSettings(
            ready_timeout=ready_timeout, stop_grace=2, prober=prober or ProberSettings()
        ),
        port_pool=ports,
    )
    created: list[str] = []
    try:
        async with (
            running_host(config) as (registry, server),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        ):
            host = Host(registry, data_dir, client, stub, http, created, ports, server.address)
            try:
                yield host
            finally:
                for program_id in created:
                    with contextlib.suppress(Exception):
                        await host.delete(program_id)
    finally:
        left = {program_id: leftovers(client, program_id) for program_id in created}
        for program_id, found in left.items():
            if found:
                force_clean(client, program_id)
        left = {program_id: found for program_id, found in left.items() if found}
        if left:
            pytest.fail(f"left behind in Docker after the programs were deleted: {left}")


@pytest.fixture
async def host(
    tmp_path: Path, docker_client: docker.DockerClient, stub_binary: bytes
) -> AsyncIterator[Host]:
    async with open_host(tmp_path / "data", docker_client, stub_binary) as opened:
        yield opened
