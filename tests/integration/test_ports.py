"""Where programs are reached, on the real engine: the runtime places each at every start.

A port a program had (or was about to get) can be taken at any moment, by
another Host's container on the same daemon or by any process. Each test gives
its Host a few ports of its own and takes the ones the runtime would pick next
with plain socket listeners; the start must go elsewhere, record where, reach
READY and be reachable through the Host's proxy. Nothing is ever an ERROR for
it, and every port goes back when the program is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import pytest

from hershy.adapters.docker.compose import PORT_RANGE
from hershy.adapters.docker.port_pool import PortPool, loopback_port_is_free
from hershy.adapters.docker.runtime import PORT_ATTEMPTS, DockerSettings
from hershy.bootstrap import HostConfig, running_host
from hershy.domain import events as ev
from hershy.domain.errors import FailedPrecondition
from hershy.domain.model import BackoffPolicy, LogStream, Program, State
from hershy.entrypoints.rest import RestConfig, RestServer
from hershy.service.watch import Change
from tests.integration.conftest import (
    USER,
    Host,
    containers_of,
    eventually,
    open_host,
    stub_dockerfile,
)

pytestmark = pytest.mark.docker

#: Slow enough to take the crashed run's port while the program waits in BACKOFF.
SLOW_BACKOFF = BackoffPolicy(initial=4, factor=2, cap=8, reset_after=60)


def port_of(program: Program) -> int:
    return int(program.proxy_target.rpartition(":")[2])


def free_ports(count: int) -> range:
    """`count` consecutive WatcherAPI ports nothing holds now, away from where Hosts begin."""
    for _ in range(200):
        first = random.randrange(24000, PORT_RANGE.stop - count)
        ports = range(first, first + count)
        if all(loopback_port_is_free(port) for port in ports):
            return ports
    pytest.fail("no free run of WatcherAPI ports on this machine")


def listenable(port: int) -> bool:
    """Whether a server could listen on the port now (nothing else listens there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Listeners:
    """Plain listeners on 127.0.0.1 (what any other process could do), one per port."""

    def __init__(self) -> None:
        self._sockets: dict[int, socket.socket] = {}

    def take(self, *ports: int) -> None:
        for port in ports:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # Like most servers: connections of the port's last user in TIME_WAIT do not stop it.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen()
            self._sockets[port] = listener

    def free(self, *ports: int) -> None:
        for port in ports:
            self._sockets.pop(port).close()

    def close(self) -> None:
        self.free(*list(self._sockets))


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    held = Listeners()
    try:
        yield held
    finally:
        held.close()


@contextlib.asynccontextmanager
async def ports_host(
    tmp_path: Path,
    client: docker.DockerClient,
    stub: bytes,
    pool: PortPool,
    policy: BackoffPolicy = SLOW_BACKOFF,
) -> AsyncIterator[Host]:
    async with open_host(tmp_path / "data", client, stub, ports=pool, policy=policy) as host:
        yield host
        for program_id in host.created:
            await host.delete(program_id)
        assert pool.held == frozenset(), "a deleted program's port was not given back"


@contextlib.asynccontextmanager
async def proxy_of(host: Host) -> AsyncIterator[str]:
    """The Host's REST shim and WatcherAPI proxy (a shim of the test's own): its base URL."""
    rest = RestServer(
        RestConfig(grpc_address=host.grpc_address, http_address="127.0.0.1:0", auth_enabled=False)
    )
    await rest.start()
    try:
        yield f"http://{rest.address}"
    finally:
        await rest.stop()


async def status_through_the_proxy(host: Host, base: str, program: Program) -> int:
    async def answer() -> int:
        async with host.http.get(f"{base}/programs/{program.id}/watcher/status") as response:
            return response.status

    # The shim learns of the change through its Watch: give it a moment.
    return await eventually(answer, lambda status: status == 200, within=10, what="the proxy")


class Placements:
    """Every address the runtime reported for a program, from a Watch of it."""

    def __init__(self, host: Host, program_id: str) -> None:
        self._start = host.registry.watch(program_id)
        self.addresses: list[str] = []
        self.states: list[State] = []

    async def until(self, state: State, within: float = 60) -> Program:
        async with asyncio.timeout(within):
            while True:
                change = await self._start.subscription.next()
                assert isinstance(change, Change), change
                self.states.append(change.program.state)
                assert change.program.state is not State.ERROR, change.program.error
                if isinstance(change.event, ev.ContainerCreated):
                    self.addresses.append(change.event.address)
                    assert change.program.proxy_target == change.event.address
                if change.program.state is state:
                    return change.program

    def close(self) -> None:
        self._start.subscription.unsubscribe()


async def test_a_port_taken_while_stopped_or_in_backoff_is_left_for_another(
    tmp_path: Path, docker_client: docker.DockerClient, stub_binary: bytes, listeners: Listeners
) -> None:
    a, b, c = free_ports(3)
    pool = PortPool(range(a, c + 1))
    async with (
        ports_host(tmp_path, docker_client, stub_binary, pool) as host,
        proxy_of(host) as proxy,
    ):
        program = await host.ready()
        assert port_of(program) == a
        await host.registry.stop(program.id)
        stopped = await host.registry.wait(program.id, State.STOPPED, 30)
        assert port_of(stopped) == a, "where it last ran stays on record"
        assert pool.held == frozenset()

        # STOPPED: its own port and the next one in line are taken meanwhile; a manual start.
        listeners.take(a, b)
        watch = Placements(host, program.id)
        await host.registry.start(program.id)
        moved = await watch.until(State.READY)
        assert watch.addresses == [f"127.0.0.1:{c}"]
        assert port_of(moved) == c
        assert (await host.probe(moved, "/watcher/status"))["state"] == "Ready"
        assert await status_through_the_proxy(host, proxy, moved) == 200

        # BACKOFF: the crashed run's port is taken while it waits, and the next in line
        # (round the range: a) still is; only b is left for the automatic restart.
        listeners.free(b)
        (container,) = containers_of(host.docker, program.id)
        await asyncio.to_thread(container.kill)
        await host.registry.wait(program.id, State.BACKOFF, 30)
        await eventually(
            lambda: (host.registry.get(program.id).container_id, listenable(c)),
            lambda seen: seen == (None, True),
            within=10,
            what="the crashed run's container gone and its port given back",
        )
        listeners.take(c)
        assert host.registry.get(program.id).state is State.BACKOFF, "restarted too soon"
        watch.addresses.clear()
        again = await watch.until(State.READY)
        watch.close()
        assert watch.addresses == [f"127.0.0.1:{b}"]
        assert port_of(again) == b
        assert again.restart_count == 1
        assert State.ERROR not in watch.states
        assert host.registry.get(program.id).proxy_target == f"127.0.0.1:{b}"
        assert await status_through_the_proxy(host, proxy, again) == 200
        assert pool.held == {b}


async def test_a_port_taken_between_create_and_the_first_start(
    tmp_path: Path, docker_client: docker.DockerClient, stub_binary: bytes, listeners: Listeners
) -> None:
    a, b = free_ports(2)
    pool = PortPool(range(a, b + 1))
    async with (
        ports_host(tmp_path, docker_client, stub_binary, pool) as host,
        proxy_of(host) as proxy,
    ):
        program = await host.create()
        assert program.proxy_target == ""
        listeners.take(a)  # the first port in line, taken after Create
        watch = Placements(host, program.id)
        await host.registry.start(program.id)
        ready = await watch.until(State.READY)
        watch.close()
        assert watch.addresses == [f"127.0.0.1:{b}"]
        assert port_of(ready) == b
        assert await status_through_the_proxy(host, proxy, ready) == 200


async def test_a_port_docker_finds_taken_is_given_up_for_the_next(
    tmp_path: Path, docker_client: docker.DockerClient, stub_binary: bytes, listeners: Listeners
) -> None:
    """The pool's check passed, then someone bound the port before Docker did (a race)."""
    a, b = free_ports(2)
    # Fault injection: the check always says free, as if the port were taken just after it.
    pool = PortPool(range(a, b + 1), is_free=lambda _: True)
    async with (
        ports_host(tmp_path, docker_client, stub_binary, pool) as host,
        proxy_of(host) as proxy,
    ):
        program = await host.create()
        listeners.take(a)
        watch = Placements(host, program.id)
        await host.registry.start(program.id)
        ready = await watch.until(State.READY)
        watch.close()
        # A container was made for a, Docker refused to start it there, and the next went to b.
        assert watch.addresses == [f"127.0.0.1:{a}", f"127.0.0.1:{b}"]
        assert port_of(ready) == b
        assert State.ERROR not in watch.states
        (container,) = containers_of(host.docker, program.id)
        assert container.id == ready.container_id
        notes = [
            line.text
            async for line in host.registry.logs(
                program.id, None, frozenset({LogStream.HOST}), False
            )
        ]
        assert f"port {a} was taken; trying another" in notes
        assert pool.held == {b}
        assert await status_through_the_proxy(host, proxy, ready) == 200


async def test_when_every_port_is_taken_the_start_fails_saying_so(
    tmp_path: Path, docker_client: docker.DockerClient, stub_binary: bytes, listeners: Listeners
) -> None:
    """Docker refusing port after port is bounded: the start gives up, naming why."""
    (a,) = free_ports(1)
    pool = PortPool(range(a, a + 1), is_free=lambda _: True)
    async with ports_host(tmp_path, docker_client, stub_binary, pool) as host:
        program = await host.create()
        listeners.take(a)
        await host.registry.start(program.id)
        with pytest.raises(FailedPrecondition, match=f"{PORT_ATTEMPTS} WatcherAPI ports in a row"):
            await host.registry.wait(program.id, State.READY, 60)
        # Failed first, removed second: the last container goes just after.
        await eventually(
            lambda: (containers_of(host.docker, program.id), pool.held),
            lambda seen: seen == ([], frozenset()),
            within=10,
            what="the last container removed and its port given back",
        )


async def test_after_a_host_restart_an_adopted_containers_port_stays_its_own(
    tmp_path: Path, docker_client: docker.DockerClient, stub_binary: bytes
) -> None:
    """The runtime learns from Docker where the containers it adopts publish: nobody else
    is placed there, even when the OS check would say otherwise."""
    a, b = free_ports(2)
    data_dir = tmp_path / "data"
    config = HostConfig(
        data_dir=data_dir,
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        no_auth=True,
        policy=SLOW_BACKOFF,
        docker=DockerSettings(ready_timeout=30, stop_grace=2),
        port_pool=PortPool(range(a, b + 1)),
    )
    first_id = ""
    try:
        async with running_host(config) as (registry, _):
            first = await registry.create(USER, stub_dockerfile(), {"watcher-stub": stub_binary})
            await registry.start(first.id)
            ready = await registry.wait(first.id, State.READY, 60)
            assert port_of(ready) == a
        # The Host is gone; its program runs on. The next Host's check is made to lie:
        # only what it learnt from Docker keeps a for the program that publishes it.
        pool = PortPool(range(a, b + 1), is_free=lambda _: True)
        async with open_host(data_dir, docker_client, stub_binary, ports=pool) as host:
            host.created.append(first.id)
            assert pool.held == {a}
            adopted = await host.registry.wait(first.id, State.READY, 10)
            assert (adopted.container_id, adopted.proxy_target) == (
                ready.container_id,
                ready.proxy_target,
            )
            second = await host.create()
            watch = Placements(host, second.id)
            await host.registry.start(second.id)
            placed = await watch.until(State.READY)
            watch.close()
            assert watch.addresses == [f"127.0.0.1:{b}"], "it was placed on the adopted port"
            assert port_of(placed) == b
            assert (await host.probe(adopted, "/watcher/status"))["state"] == "Ready"
            for program_id in (first.id, second.id):
                await host.delete(program_id)
            assert pool.held == frozenset()
    finally:
        for container in containers_of(docker_client, first_id) if first_id else []:
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)


async def test_a_container_removed_behind_the_hosts_back_gives_its_port_back(
    tmp_path: Path, docker_client: docker.DockerClient, stub_binary: bytes
) -> None:
    a, b = free_ports(2)
    pool = PortPool(range(a, b + 1))
    async with ports_host(tmp_path, docker_client, stub_binary, pool) as host:
        program = await host.ready()
        assert pool.held == {port_of(program)}
        (container,) = containers_of(host.docker, program.id)
        await asyncio.to_thread(container.remove, force=True)  # `docker rm -f`, not the Host
        await host.registry.wait(program.id, State.BACKOFF, 30)
        await eventually(
            lambda: (host.registry.get(program.id).container_id, pool.held),
            lambda seen: seen == (None, frozenset()),
            within=10,
            what="the vanished container's port given back",
        )
        again = await host.registry.wait(program.id, State.READY, 30)
        assert pool.held == {port_of(again)}
