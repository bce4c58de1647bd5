"""End-to-end on `hershy serve --runtime fake`: the runtime places a program at every start.

The fake runtime hands out ports like the Docker one: from the WatcherAPI
range, each checked free with the OS right then. Here plain listeners take the
port a program had and the next ones in line (while it is STOPPED, in BACKOFF,
or between Create and its first start): the next start goes elsewhere, says so
in the program and in a Watch, reaches READY, and the proxy forwards to the
new place (where a FakeWatcher plays the program).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from tests.e2e.conftest import CHANNEL_OPTIONS, start_server
from tests.e2e.rest_support import (
    RestHost,
    create_program,
    fake_watcher,
    new_user,
    post_action,
    ready_program,
    running_rest_server,
    target_port,
    wait_state,
    wait_until_http_ready,
)

#: How many ports after a program's own the tests take: more than the runtime would skip.
AHEAD = 4


@pytest.fixture(scope="module")
def rest_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestHost]:
    with running_rest_server(tmp_path_factory.mktemp("hershy-ports")) as host:
        yield host


@contextlib.contextmanager
def listening(ports: range) -> Iterator[set[int]]:
    """Plain listeners on 127.0.0.1 on each of `ports` nobody else holds: the ones taken."""
    with contextlib.ExitStack() as stack:
        taken = set()
        for port in ports:
            listener = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind(("127.0.0.1", port))
            except OSError:
                continue  # someone else's already: the runtime skips it anyway
            listener.listen()
            taken.add(port)
        yield taken


async def placements(host: RestHost, program_id: str, after: int) -> list[str]:
    """The addresses a Watch of the program reported after revision `after`, until READY."""
    async with grpc.aio.insecure_channel(host.server.address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.ProgramServiceStub(channel)
        request = pb.WatchProgramsRequest(name=f"programs/{program_id}", resume_revision=after)
        addresses = []
        async for message in stub.WatchPrograms(request, timeout=10):
            if message.event.WhichOneof("kind") == "container_created":
                assert message.program.proxy_target == message.event.container_created.address
                addresses.append(message.event.container_created.address)
            assert message.program.state != pb.STATE_ERROR, message.program.error_message
            if message.program.state == pb.STATE_READY:
                return addresses
    raise AssertionError("the Watch ended before the program was READY")


async def reaches(http: aiohttp.ClientSession, host: RestHost, program: dict[str, Any]) -> None:
    """The proxy forwards to where the program is now (a FakeWatcher there), nowhere else."""
    async with fake_watcher(target_port(program)) as watcher:
        url = f"{host.url}/programs/{program['program_id']}/watcher/status"
        async with http.get(url) as response:
            assert response.status == 200, await response.text()
        assert [seen.raw_path for seen in watcher.seen] == ["/watcher/status"]


async def test_a_port_taken_while_stopped_is_left_for_another(
    rest_host: RestHost, http: aiohttp.ClientSession
) -> None:
    program = await ready_program(http, rest_host, new_user("ports"))
    program_id, first = program["program_id"], target_port(program)
    await post_action(http, rest_host, program_id, "stop")
    stopped = await wait_state(http, rest_host, program_id, "stopped")
    assert target_port(stopped) == first, "where it last ran stays on record"
    with listening(range(first, first + AHEAD + 1)) as taken:
        # (Another Host on this machine may hold some already; then it is theirs that is taken.)
        assert taken, "every port in question is someone else's already"
        status, _ = await post_action(http, rest_host, program_id, "start")
        assert status == 200
        ready = await wait_state(http, rest_host, program_id, "ready")
        moved = target_port(ready)
        assert moved not in taken
        assert await placements(rest_host, program_id, stopped["revision"]) == [
            ready["proxy_target"]
        ]
    await reaches(http, rest_host, ready)


async def test_a_port_taken_between_create_and_the_first_start(
    rest_host: RestHost, http: aiohttp.ClientSession
) -> None:
    # Where the runtime is in its round of the range: just after this program's port.
    placed = target_port(await ready_program(http, rest_host, new_user("ports")))
    program = await create_program(http, rest_host, new_user("ports"))
    assert program["proxy_target"] == ""
    with listening(range(placed + 1, placed + 1 + AHEAD)) as taken:
        assert taken, "every next port is someone else's already"
        await post_action(http, rest_host, program["program_id"], "start")
        ready = await wait_state(http, rest_host, program["program_id"], "ready")
        assert target_port(ready) not in taken | {placed}
        assert await placements(rest_host, program["program_id"], program["revision"]) == [
            ready["proxy_target"]
        ]
    await reaches(http, rest_host, ready)


async def test_a_port_taken_while_in_backoff_is_left_for_another(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """The fake's containers do not outlive its Host: after a restart a READY program has
    crashed, waits in BACKOFF, and restarts on its own, somewhere free."""
    options = ("--no-auth", "--backoff", "1", "2")
    server = start_server(tmp_path, *options)
    try:
        host = RestHost(server, server.http_address)
        wait_until_http_ready(host)
        program = await ready_program(http, host, new_user("ports"))
        server.stop_and_check()
    finally:
        server.kill()
    first = target_port(program)
    with listening(range(first, first + AHEAD + 1)) as taken:
        assert taken, "every port in question is someone else's already"
        again = start_server(
            tmp_path, *options, grpc_address=server.address, http_address=server.http_address
        )
        try:
            host = RestHost(again, again.http_address)
            wait_until_http_ready(host)
            addresses = await placements(host, program["program_id"], program["revision"])
            ready = await wait_state(http, host, program["program_id"], "ready")
            assert ready["restart_count"] == 1, "it came back by the automatic restart"
            assert target_port(ready) not in taken
            assert addresses == [ready["proxy_target"]]
            await reaches(http, host, ready)
            again.stop_and_check()
        finally:
            again.kill()
