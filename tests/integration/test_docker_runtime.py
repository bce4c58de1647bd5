"""The Docker/gVisor effect handler through the registry, on the real engine and real runsc.

The lifecycle end to end, and the failures: a Dockerfile that fails, a
program that never answers its WatcherAPI, a program that crashes, a Stop
during a slow build, and a Delete that must leave nothing behind.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest

from hershy.adapters.docker.compose import PORT_RANGE
from hershy.adapters.docker.runtime import RuntimeUnavailable
from hershy.bootstrap import HostConfig, Runtime, running_host
from hershy.domain.errors import NotFound
from hershy.domain.model import LogStream, Program, State
from hershy.service.watch import Change
from tests.integration.conftest import (
    BASE_IMAGE,
    Host,
    containers_of,
    eventually,
    images_of,
    open_host,
)

pytestmark = pytest.mark.docker


def port_of(program: Program) -> int:
    return int(program.proxy_target.rsplit(":", 1)[1])


def port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port any more (no docker-proxy left behind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def assert_all_gone(host: Host, program: Program) -> None:
    """Deleted: no container, no image, no folder, its port released."""
    with pytest.raises(NotFound):
        host.registry.get(program.id)
    assert containers_of(host.docker, program.id) == []
    assert images_of(host.docker, program.id) == []
    assert not host.program_dir(program.id).exists()
    assert port_is_free(port_of(program)), f"{program.proxy_target} is still bound"
    # The pool may hand the port out again (it round-robins, so look at it directly).
    assert port_of(program) not in host.ports.held


# --- the lifecycle ----------------------------------------------------------------------------


async def test_full_lifecycle_on_runsc(host: Host) -> None:
    registry = host.registry
    assert registry.runtime.startswith("runsc (gVisor, network="), registry.runtime

    program = await host.create()
    assert program.state is State.CREATED
    assert program.proxy_target == "", "the runtime places a program when it starts"
    await registry.start(program.id)
    ready = await registry.wait(program.id, State.READY, 60)
    assert port_of(ready) in PORT_RANGE
    assert ready.proxy_target.startswith("127.0.0.1:")
    assert port_of(ready) in host.ports.held
    assert ready.run == 1
    assert ready.container_id is not None
    assert ready.image_id is not None
    assert ready.image_id.startswith("sha256:")
    (container,) = containers_of(host.docker, program.id)
    assert container.id == ready.container_id
    assert container.status == "running"
    async with host.http.get(f"http://{ready.proxy_target}/watcher/status") as response:
        assert response.status == 200
        status = await response.json()
    assert status["state"] == "Ready"
    assert status["isRunning"] is True
    assert any("built sha256:" in line for line in await host.build_log(program.id))

    await registry.stop(program.id)
    stopped = await registry.wait(program.id, State.STOPPED, 30)
    assert stopped.container_id is None
    assert containers_of(host.docker, program.id) == []
    assert [image.id for image in images_of(host.docker, program.id)] == [ready.image_id]

    await registry.start(program.id)
    again = await registry.wait(program.id, State.READY, 60)
    assert again.run == 2
    assert again.image_id == ready.image_id
    assert again.container_id not in (None, ready.container_id)
    reused = [line for line in await host.build_log(program.id) if "reusing image" in line]
    assert len(reused) == 1, reused
    assert ready.image_id in reused[0]

    await registry.restart(program.id)
    restarted = await registry.wait(program.id, State.READY, 60)
    assert restarted.run == 3
    assert restarted.container_id not in (None, again.container_id)
    (container,) = containers_of(host.docker, program.id)
    assert container.id == restarted.container_id
    assert container.labels["dev.hershy.run"] == "3"

    state_dir = host.program_dir(program.id) / "state"
    assert state_dir.is_dir()
    await host.delete(program.id)
    await assert_all_gone(host, restarted)


async def test_delete_a_ready_program_leaves_no_container_image_folder_or_port(
    host: Host,
) -> None:
    program = await host.ready()
    probe = await host.probe(program, "/probe/write", path="/state/keep")
    assert probe["ok"] is True, probe
    assert (host.program_dir(program.id) / "state" / "keep").exists()
    assert not port_is_free(port_of(program))  # docker-proxy holds it while the program runs

    deleting = await host.registry.delete(program.id)
    assert deleting.state is State.DELETING
    await host.delete(program.id)
    await assert_all_gone(host, program)


# --- refusing an unsandboxed runtime ----------------------------------------------------------


@pytest.mark.usefixtures("docker_client")  # Docker itself must be there: fail clearly if not
async def test_the_host_refuses_to_run_programs_outside_gvisor(tmp_path: Path) -> None:
    config = HostConfig(
        data_dir=tmp_path / "data",
        runtime=Runtime.RUNC,
        allow_insecure_runtime=False,
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        no_auth=True,  # these talk to the registry (or test tokens elsewhere)
    )
    with pytest.raises(RuntimeUnavailable, match="not a sandbox") as refused:
        async with running_host(config):
            pytest.fail("the Host started with runtime runc and no --allow-insecure-runtime")
    assert "--allow-insecure-runtime" in str(refused.value)


# --- failures ---------------------------------------------------------------------------------


async def test_a_failing_dockerfile_ends_in_error_with_the_builds_last_lines(host: Host) -> None:
    program = await host.create(dockerfile=f"FROM {BASE_IMAGE}\nRUN echo about to fail && false\n")
    await host.registry.start(program.id)
    failed = await host.registry.wait(program.id, State.ERROR, 60)
    assert failed.error is not None
    assert failed.error.startswith("build failed"), failed.error
    assert "about to fail" in failed.error, failed.error
    assert "last lines of the build" in failed.error, failed.error
    assert failed.container_id is None
    assert failed.image_id is None
    assert containers_of(host.docker, program.id) == []
    assert images_of(host.docker, program.id) == []


async def test_a_program_that_never_answers_its_watcher_api_ends_in_error(
    tmp_path: Path, docker_client: docker.DockerClient, stub_binary: bytes
) -> None:
    async with open_host(tmp_path / "data", docker_client, stub_binary, ready_timeout=3) as host:
        program = await host.create({"STUB_NEVER_READY": "1"})
        await host.registry.start(program.id)
        began = time.monotonic()
        failed = await host.registry.wait(program.id, State.ERROR, 60)
        assert time.monotonic() - began < 30
        assert failed.error is not None
        assert "did not answer GET /watcher/status" in failed.error, failed.error
        assert "503" in failed.error, failed.error  # the stub's "not ready yet"
        await eventually(
            lambda: containers_of(host.docker, program.id),
            lambda found: found == [],
            within=15,
            what="the container of the failed start is removed",
        )
        assert host.registry.get(program.id).container_id is None


async def test_a_crashing_program_restarts_with_growing_delays_and_a_visible_count(
    host: Host,
) -> None:
    program = await host.create({"STUB_EXIT_AFTER": "1s"})
    subscription = host.registry.hub.subscribe(program.id, capacity=1000)
    backoffs: list[Program] = []
    try:
        await host.registry.start(program.id)
        async with asyncio.timeout(90):
            while len(backoffs) < 3:
                change = await subscription.next()
                assert isinstance(change, Change), change
                # A crash's first BACKOFF change (the removal of its container follows).
                crashed = change.program
                if crashed.state is State.BACKOFF and (
                    not backoffs or crashed.restart_count != backoffs[-1].restart_count
                ):
                    backoffs.append(crashed)
                assert change.program.state is not State.ERROR, change.program.error
    finally:
        subscription.unsubscribe()
    assert [p.restart_count for p in backoffs] == [1, 2, 3]
    assert [p.last_exit_code for p in backoffs] == [3, 3, 3]
    assert all(p.error == "exited with code 3" for p in backoffs), [p.error for p in backoffs]
    gaps = [p.next_restart_at - p.updated_at for p in backoffs if p.next_restart_at is not None]
    assert gaps == pytest.approx([0.5, 1.0, 2.0])
    # Each crash is a new run, in its own container.
    assert [p.run for p in backoffs] == [1, 2, 3]
    stdout = [
        line.text
        async for line in host.registry.logs(program.id, None, frozenset({LogStream.STDOUT}), False)
    ]
    assert any("exiting with code 3" in line for line in stdout), stdout[-5:]
    # The count stays visible on the program as it is now.
    assert host.registry.get(program.id).restart_count >= 3


async def test_stop_during_a_slow_build_leaves_no_image_and_no_container(host: Host) -> None:
    marker = f"hershy-itest-{uuid.uuid4().hex[:12]}"
    before = {c.id for c in host.docker.containers.list(all=True)}
    program = await host.create(dockerfile=f"FROM {BASE_IMAGE}\nRUN sleep 60 && echo {marker}\n")
    await host.registry.start(program.id)
    follow = host.registry.logs(program.id, None, frozenset({LogStream.BUILD}), True)
    async with asyncio.timeout(60):
        async for line in follow:
            if "Running in" in line.text:  # the RUN step's container exists
                break
    await follow.aclose()  # type: ignore[attr-defined]

    def build_containers() -> list[Any]:
        new = [c for c in host.docker.containers.list(all=True) if c.id not in before]
        return [c for c in new if marker in " ".join(c.attrs["Config"].get("Cmd") or [])]

    assert build_containers(), "the RUN step's container should exist during the build"
    began = time.monotonic()
    stopping = await host.registry.stop(program.id)
    assert stopping.state is State.STOPPING
    stopped = await host.registry.wait(program.id, State.STOPPED, 15)
    took = time.monotonic() - began
    assert took < 10, f"Stop during a build took {took:.1f} s"
    assert stopped.container_id is None
    assert stopped.image_id is None
    assert containers_of(host.docker, program.id) == []
    assert images_of(host.docker, program.id) == []
    left_at_stopped = [(c.short_id, c.status) for c in build_containers()]
    # Whatever is left must at least go soon after (dockerd removes a cancelled build's
    # container on its own); then the state must not have claimed it gone too early.
    await eventually(
        build_containers,
        lambda found: found == [],
        within=10,
        what="the cancelled build's RUN container is removed",
    )
    gone_after = time.monotonic() - began
    assert left_at_stopped == [], (
        f"STOPPED {took:.2f} s after the Stop, while the cancelled build's RUN container "
        f"was still there ({left_at_stopped}; gone {gone_after:.2f} s after the Stop)"
    )
