"""Security fixtures: a Host on the REAL Docker engine and runsc, two tenants, a victim's secret.

Reuses the integration fixtures (the engine checked once, the watcher stub
built once). Every Host opened here is checked when it closes: no
container or image of any program a test created may be left in Docker.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from hershy.adapters.docker.build import BuildLimits
from hershy.adapters.docker.compose import LABEL_MANAGED, LABEL_USER
from hershy.adapters.docker.image_names import image_tag, user_images
from hershy.adapters.docker.runtime import DockerSettings
from hershy.bootstrap import HostConfig, Runtime, running_host
from hershy.domain.errors import InvalidArgument, NotFound
from hershy.domain.model import LogStream, Program, State
from hershy.entrypoints.grpc_server import GrpcServer
from hershy.service.registry import Registry
from tests.integration.conftest import (
    BASE_IMAGE,
    POLICY,
    docker_client,
    force_clean,
    host,
    leftovers,
    stub_binary,
    unmount_left_state_volumes,
)

__all__ = ["docker_client", "host", "stub_binary", "unmount_left_state_volumes"]

VICTIM, ATTACKER = "victim", "attacker"
STUB_TAIL = 'COPY watcher-stub /watcher-stub\nENTRYPOINT ["/watcher-stub"]\n'


@dataclass
class SecureHost:
    """A Host on runsc with two tenants, and what the test made with it."""

    registry: Registry
    server: GrpcServer
    docker: docker.DockerClient
    stub: bytes
    data_dir: Path
    host_id: str
    created: list[str] = field(default_factory=list)

    async def create(
        self, user: str, dockerfile: str, files: Mapping[str, bytes] | None = None
    ) -> Program:
        program = await self.registry.create(user, dockerfile, dict(files or {}))
        self.created.append(program.id)
        return program

    async def stub_program(self, user: str, head: str, files: Mapping[str, bytes] = {}) -> Program:
        """A program of the watcher stub built on `head` (its FROM and first steps)."""
        return await self.create(user, head + STUB_TAIL, {"watcher-stub": self.stub, **files})

    async def started(self, program: Program, state: State, within: float = 120) -> Program:
        await self.registry.start(program.id)
        return await self.wait_for(program, state, within)

    async def built(self, program: Program, within: float = 240) -> Program:
        """Start it and return once its build is over (its image made, or ERROR).

        What comes after the build (a WatcherAPI port another Host on this Docker
        may grab) is not what these tests are about.
        """
        await self.registry.start(program.id)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            current = self.registry.get(program.id)
            if current.image_id or current.state is State.ERROR:
                return current
            await asyncio.sleep(0.1)
        pytest.fail(f"the build of {program.id} did not end within {within:g} s")

    async def wait_for(self, program: Program, state: State, within: float = 120) -> Program:
        with contextlib.suppress(Exception):
            return await self.registry.wait(program.id, state, within)
        return self.registry.get(program.id)

    async def log(self, program_id: str, *streams: LogStream) -> list[str]:
        wanted = frozenset(streams or LogStream)
        return [line.text async for line in self.registry.logs(program_id, None, wanted, False)]

    def tag_of(self, program: Program) -> str:
        return image_tag(self.host_id, program.user_id, program.id, program.build_id)

    def images_of_user(self, user: str) -> list[Any]:
        """The images this Host built for `user` (other Hosts may share the daemon)."""
        return images_of_user(self.docker, self.host_id, user)

    async def refused(self, user: str, dockerfile: str, files: Mapping[str, bytes] = {}) -> str:
        """Create must refuse the Dockerfile; its message (INVALID_ARGUMENT on `dockerfile`)."""
        before = self.registry.list_programs(user_id=user).total_size
        with pytest.raises(InvalidArgument) as caught:
            await self.create(user, dockerfile, files)
        assert caught.value.field == "dockerfile"
        assert self.registry.list_programs(user_id=user).total_size == before, "a program exists"
        return caught.value.message


@contextlib.asynccontextmanager
async def open_secure_host(
    data_dir: Path,
    client: docker.DockerClient,
    stub: bytes,
    *,
    limits: BuildLimits | None = None,
    base_images: tuple[str, ...] = (BASE_IMAGE,),
    build_timeout: float = 300,
) -> AsyncIterator[SecureHost]:
    config = HostConfig(
        data_dir=data_dir,
        runtime=Runtime.RUNSC,
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        no_auth=True,
        policy=POLICY,
        docker=DockerSettings(
            ready_timeout=30,
            stop_grace=2,
            build_timeout=build_timeout,
            base_images=base_images,
            build_limits=limits or BuildLimits(),
        ),
    )
    created: list[str] = []
    host_id = ""
    try:
        async with running_host(config) as (registry, server):
            with contextlib.closing(sqlite3.connect(data_dir / "hershy.db")) as db:
                (host_id,) = db.execute("SELECT value FROM meta WHERE key = 'host_id'").fetchone()
            host = SecureHost(registry, server, client, stub, data_dir, host_id, created)
            try:
                yield host
            finally:
                for program_id in created:
                    with contextlib.suppress(NotFound):
                        await registry.delete(program_id)
                        with contextlib.suppress(Exception):
                            await registry.wait(program_id, State.DELETED, 60)
    finally:
        left = {program_id: leftovers(client, program_id) for program_id in created}
        for program_id, found in left.items():
            if found:
                force_clean(client, program_id)
        for user in (VICTIM, ATTACKER) if host_id else ():
            for image in images_of_user(client, host_id, user):
                left.setdefault(f"user {user}", []).append(f"image {image.short_id}")
                # By tag, this Host's only: an image may also be another's (a base image).
                for name in [t for t in image.tags if t.startswith("hershy/")] or [image.id]:
                    with contextlib.suppress(docker.errors.DockerException):
                        client.images.remove(name, force=True)
        left = {key: found for key, found in left.items() if found}
        if left:
            pytest.fail(f"left behind in Docker after the programs were deleted: {left}")


def images_of_user(client: docker.DockerClient, host_id: str, user: str) -> list[Any]:
    """The images a Host built for `user`: tagged under the user (`image_names`), or
    labelled as the user's (a Dockerfile of only FROM)."""
    labels = [f"{LABEL_USER}={user}", f"{LABEL_MANAGED}={host_id}"]
    tagged: list[Any] = client.images.list(filters=user_images(host_id, user))
    labelled: list[Any] = client.images.list(filters={"label": labels})
    return list({image.id: image for image in [*tagged, *labelled]}.values())


@pytest.fixture
async def secure_host(
    tmp_path: Path, docker_client: docker.DockerClient, stub_binary: bytes
) -> AsyncIterator[SecureHost]:
    async with open_secure_host(tmp_path / "data", docker_client, stub_binary) as opened:
        yield opened


@dataclass(frozen=True)
class Victim:
    """Another tenant's built program, whose image holds marker bytes no one else may see."""

    program: Program
    tag: str
    image_id: str
    marker: str


@pytest.fixture
async def victim(secure_host: SecureHost) -> Victim:
    marker = f"VICTIM-SECRET-{secrets.token_hex(8)}"
    program = await secure_host.stub_program(
        VICTIM,
        f"FROM {BASE_IMAGE}\nCOPY secret.txt /secret.txt\n",
        {"secret.txt": marker.encode()},
    )
    built = await secure_host.built(program)
    assert built.image_id, built.error
    image = secure_host.docker.images.get(secure_host.tag_of(built))
    return Victim(built, secure_host.tag_of(built), image.id, marker)


async def everything_the_attacker_sees(host: SecureHost) -> str:
    """Every log line, error and image config of the attacker's programs, as one text."""
    seen: list[str] = []
    for program in host.registry.list_programs(user_id=ATTACKER).programs:
        seen += await host.log(program.id)
        seen.append(program.error or "")
    for image in host.images_of_user(ATTACKER):
        seen.append(repr(image.attrs))
    return "\n".join(seen)


async def http_get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()
