"""The proxy's fast path (rest/fastpath.py): what it serves itself, and what it must not.

A shim of our own, in this process (so the test can count what the fast path
answered), on a real `hershy serve --runtime fake` core; a FakeWatcher plays
the program. Requests go over raw sockets where the test means exact bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from hershy.entrypoints.rest import RestConfig, RestServer
from hershy.entrypoints.rest.fastpath import IDLE_PER_PROGRAM, UpstreamPool
from hershy.service.ports import WatcherEndpoint
from hershy.v1 import program_pb2 as pb
from tests.e2e.conftest import free_port
from tests.e2e.rest_support import (
    RestHost,
    client_session,
    fake_watcher,
    program_with_watcher,
    running_rest_server,
)


@pytest.fixture(scope="module")
def rest_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestHost]:
    with running_rest_server(tmp_path_factory.mktemp("hershy-proxy-fastpath")) as host:
        yield host


@asynccontextmanager
async def shim(host: RestHost) -> AsyncIterator[RestServer]:
    server = RestServer(
        RestConfig(grpc_address=host.grpc_address, http_address="127.0.0.1:0", auth_enabled=False)
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def known_ready(server: RestServer, program_id: str) -> None:
    """Until the shim's cache has seen the program Ready (it trails the core a moment)."""
    assert server._api is not None
    cache = server._api.cache
    async with asyncio.timeout(10):
        while True:  # the cache has no per-program event to wait on
            target = cache.get(program_id)
            if target is not None and target.state == pb.STATE_READY:
                return
            await asyncio.sleep(0.01)


def served(server: RestServer) -> int:
    assert server._api is not None
    return server._api.fast.served


async def read_responses(reader: asyncio.StreamReader, count: int) -> list[tuple[int, bytes]]:
    """`count` HTTP/1.1 responses of known length, in order, from one connection."""
    answers = []
    for _ in range(count):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split(" ")[1])
        length = next(
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length")
        )
        answers.append((status, await asyncio.wait_for(reader.readexactly(length), 10)))
    return answers


async def test_plain_gets_are_served_by_the_fast_path_on_kept_alive_connections(
    rest_host: RestHost, http: aiohttp.ClientSession
) -> None:
    async with (
        shim(rest_host) as server,
        program_with_watcher(http, rest_host) as (program, watcher),
    ):
        await known_ready(server, program["program_id"])
        base = f"http://{server.address}/programs/{program['program_id']}/watcher"
        async with client_session() as client:
            for _ in range(5):
                async with client.get(f"{base}/status") as response:
                    assert response.status == 200
                    assert (await response.json())["watcherID"] == "fake"
            async with client.head(f"{base}/big") as response:
                assert response.status == 200
                assert await response.read() == b""
        assert served(server) == 6
        assert server._api is not None
        assert server._api.fast.pool.opened == 1  # one connection to the program, kept alive
        assert [seen.method for seen in watcher.seen] == ["GET"] * 5 + ["HEAD"]
        # What the program was sent is what the aiohttp path sends (test_proxy.py).
        headers = watcher.seen[0].headers
        assert headers["host"] == f"127.0.0.1:{watcher.port}"
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert headers["x-forwarded-prefix"] == f"/programs/{program['program_id']}"


async def test_a_request_it_does_not_take_hands_the_connection_to_aiohttp_in_order(
    rest_host: RestHost, http: aiohttp.ClientSession
) -> None:
    """Pipelined: a GET (fast), a POST with a body (aiohttp's), a GET (aiohttp's now)."""
    async with (
        shim(rest_host) as server,
        program_with_watcher(http, rest_host) as (program, watcher),
    ):
        await known_ready(server, program["program_id"])
        prefix = f"/programs/{program['program_id']}/watcher"
        host, _, port = server.address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(
                f"GET {prefix}/status HTTP/1.1\r\nHost: h\r\n\r\n"
                f"POST {prefix}/echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
                f"GET {prefix}/status HTTP/1.1\r\nHost: h\r\n\r\n".encode()
            )
            answers = await read_responses(reader, 3)
        finally:
            writer.close()
        assert [status for status, _ in answers] == [200, 200, 200]
        assert b'"watcherID":"fake"' in answers[0][1].replace(b" ", b"")
        assert b"hello" in answers[1][1]
        assert served(server) == 1
        assert [(seen.method, seen.body) for seen in watcher.seen] == [
            ("GET", b""),
            ("POST", b"hello"),
            ("GET", b""),
        ]


@pytest.mark.parametrize(
    "smuggled",
    [
        "Content-Length: {n}\r\n",
        "Transfer-Encoding: chunked\r\n",
        "Content-Length: {n}\r\nTransfer-Encoding: chunked\r\n",
        "X-Folded: a\r\n b\r\n",
    ],
)
async def test_a_body_or_an_odd_head_is_never_read_as_a_request_of_its_own(
    rest_host: RestHost, http: aiohttp.ClientSession, smuggled: str
) -> None:
    """A GET carrying a second request in its body: the fast path does not take it (aiohttp
    decides, as before), and the program never sees the inner request as a request."""
    async with (
        shim(rest_host) as server,
        program_with_watcher(http, rest_host) as (program, watcher),
    ):
        prefix = f"/programs/{program['program_id']}/watcher"
        await known_ready(server, program["program_id"])
        inner = f"GET {prefix}/smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
        body = inner if "chunked" not in smuggled else f"{len(inner):x}\r\n{inner}\r\n0\r\n\r\n"
        head = smuggled.format(n=len(body))
        host, _, port = server.address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            request = f"GET {prefix}/echo HTTP/1.1\r\nHost: h\r\n{head}Connection: close\r\n\r\n"
            writer.write((request + body).encode())
            await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        assert served(server) == 0
        assert all("smuggled" not in seen.raw_path for seen in watcher.seen)


async def test_502_and_504_from_the_fast_path_are_the_proxys_errors(
    rest_host: RestHost, http: aiohttp.ClientSession
) -> None:
    async with shim(rest_host) as server, program_with_watcher(http, rest_host) as (program, w):
        await known_ready(server, program["program_id"])
        base = f"http://{server.address}/programs/{program['program_id']}/watcher"
        await w.stop()  # nothing answers on the program's port any more
        async with client_session() as client, client.get(f"{base}/status") as response:
            body = await response.json()
        assert response.status == 502, body
        assert body["error"] == "WATCHER_UNREACHABLE"
        assert served(server) == 1


async def test_idle_connections_to_programs_are_bounded_per_program() -> None:
    """However many requests ran at once, at most IDLE_PER_PROGRAM connections stay open."""
    port = free_port()
    async with fake_watcher(port):
        pool = UpstreamPool()
        endpoint = WatcherEndpoint("127.0.0.1", port)
        connections = [(await pool.acquire(endpoint))[0] for _ in range(IDLE_PER_PROGRAM + 8)]
        for connection in connections:
            pool.release(endpoint, connection)
        open_ones = [c for c in connections if c.is_connected()]
        assert len(open_ones) == IDLE_PER_PROGRAM
        again, reused = await pool.acquire(endpoint)
        assert reused
        assert again in open_ones
        pool.release(endpoint, again)
        pool.close()
        assert not any(c.is_connected() for c in connections)


async def test_a_stopped_host_closes_the_fast_paths_connections(
    rest_host: RestHost, http: aiohttp.ClientSession
) -> None:
    async with program_with_watcher(http, rest_host) as (program, _watcher):
        async with shim(rest_host) as server:
            await known_ready(server, program["program_id"])
            prefix = f"/programs/{program['program_id']}/watcher"
            host, _, port = server.address.rpartition(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"GET {prefix}/status HTTP/1.1\r\nHost: h\r\n\r\n".encode())
            [(status, _)] = await read_responses(reader, 1)
            assert status == 200
        # The shim stopped: its kept-alive client connection was closed, not left open.
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
