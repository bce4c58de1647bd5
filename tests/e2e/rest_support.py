"""Helpers for the REST and proxy end-to-end tests.

`hershy serve --runtime fake` runs as a subprocess with the REST shim on a
free port; the tests talk to it over real HTTP. In fake mode nothing listens
on a program's WatcherAPI port, so proxy tests start a `FakeWatcher` there:
a real aiohttp server that plays the program.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import hashlib
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.e2e.conftest import ServerProcess, start_server

DOCKERFILE = 'FROM scratch\nCOPY . /app\nCMD ["/app/run"]\n'
STARTUP_TIMEOUT = 20.0


@dataclass
class RestHost:
    """A running `hershy serve` with its REST shim."""

    server: ServerProcess
    http_address: str
    #: With tokens on: the admin's.
    admin_token: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.http_address}"

    @property
    def grpc_address(self) -> str:
        return self.server.address


def wait_until_http_ready(host: RestHost, timeout: float = STARTUP_TIMEOUT) -> None:
    """Poll /readyz until it answers 200 (the shim is up and its proxy cache synced)."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if host.server.process.poll() is not None:
            pytest.fail(f"hershy serve exited before serving REST; stderr:\n{host.server.stderr()}")
        try:
            status, _ = http_get(host.http_address, "/readyz")
        except OSError as error:
            last = str(error)
        else:
            if status == 200:
                return
            last = f"HTTP {status}"
        time.sleep(0.05)
    host.server.kill()
    pytest.fail(f"REST shim not ready within {timeout} s ({last}); stderr:\n{host.server.stderr()}")


def http_get(address: str, path: str) -> tuple[int, bytes]:
    """A tiny blocking HTTP/1.1 GET, for fixtures that run outside an event loop."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=2) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def start_rest_server(base: Path, *, auth: bool = False) -> RestHost:
    """`hershy serve --runtime fake` on free ports, once both APIs answer.

    Without `auth`, with --no-auth (tokens have tests of their own); with it,
    the admin's token is in `RestHost.admin_token`.
    """
    token_file = base / "admin-token"
    options = ("--admin-token-file", str(token_file)) if auth else ()
    server = start_server(base, *options)
    host = RestHost(server, server.http_address)
    try:
        wait_until_http_ready(host)
    except BaseException:
        server.kill()
        raise
    if auth:
        host.admin_token = token_file.read_text().strip()
    return host


@contextlib.contextmanager
def running_rest_server(base: Path, *, auth: bool = False) -> Iterator[RestHost]:
    """A server for the block; on exit it must shut down cleanly on SIGTERM."""
    host = start_rest_server(base, auth=auth)
    try:
        yield host
    finally:
        try:
            if host.server.process.poll() is None:
                host.server.stop_and_check()
        finally:
            host.server.kill()


def client_session() -> aiohttp.ClientSession:
    """A client that shows bodies as sent (no decompression) and never hangs a test for long."""
    return aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=30))


def new_user(prefix: str = "user") -> str:
    """A user id no other test uses, so list filters see only this test's programs."""
    return f"{prefix}-{secrets.token_hex(4)}"


async def create_program(
    http: aiohttp.ClientSession,
    host: RestHost,
    user_id: str = "alice",
    files: dict[str, str] | None = None,
) -> dict[str, Any]:
    body = {"user_id": user_id, "dockerfile": DOCKERFILE, "src_files": files or {"run": "hi\n"}}
    async with http.post(f"{host.url}/programs", json=body) as response:
        answer: dict[str, Any] = await response.json()
        assert response.status == 201, answer
        return answer


async def post_action(
    http: aiohttp.ClientSession, host: RestHost, program_id: str, action: str
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{host.url}/programs/{program_id}/{action}") as response:
        return response.status, await response.json()


async def wait_state(
    http: aiohttp.ClientSession, host: RestHost, program_id: str, state: str, seconds: float = 5
) -> dict[str, Any]:
    url = f"{host.url}/programs/{program_id}/wait"
    async with http.get(url, params={"state": state, "timeout": str(seconds)}) as response:
        answer: dict[str, Any] = await response.json()
        assert response.status == 200, answer
        return answer


async def ready_program(
    http: aiohttp.ClientSession, host: RestHost, user_id: str = "alice"
) -> dict[str, Any]:
    program = await create_program(http, host, user_id)
    status, answer = await post_action(http, host, program["program_id"], "start")
    assert status == 200, answer
    return await wait_state(http, host, program["program_id"], "ready")


def target_port(program: dict[str, Any]) -> int:
    return int(program["proxy_target"].rsplit(":", 1)[1])


def port_is_free(port: int) -> bool:
    """Whether nothing on this machine holds the port now (other Hosts may)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --- a program's WatcherAPI, played by a real HTTP server ------------------------


@dataclass
class Seen:
    """One request as the fake WatcherAPI received it."""

    method: str
    raw_path: str
    headers: dict[str, str]
    header_names: list[str]
    body: bytes


@dataclass
class FakeWatcher:
    """An aiohttp server on a program's WatcherAPI port, recording what reaches it."""

    port: int
    seen: list[Seen] = field(default_factory=list)
    #: Set by the test to let /watcher/stream send its second chunk.
    release: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set by /watcher/upload when the first chunk of a body arrived.
    first_chunk: asyncio.Event = field(default_factory=asyncio.Event)
    #: Close codes the WebSocket echo saw, as its connections end.
    ws_closed: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)
    runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("GET", "/watcher/status", self.status)
        app.router.add_route("GET", "/watcher/stream", self.stream)
        app.router.add_route("GET", "/watcher/ticks", self.ticks)
        app.router.add_route("GET", "/watcher/slow", self.slow)
        app.router.add_route("POST", "/watcher/upload", self.upload)
        app.router.add_get("/watcher/big", self.big)  # and HEAD
        app.router.add_route("GET", "/watcher/gzip", self.gzip)
        app.router.add_route("GET", "/watcher/hop", self.hop)
        app.router.add_route("GET", "/watcher/redirect", self.redirect)
        app.router.add_route("GET", "/watcher/ws", self.websocket)
        app.router.add_route("GET", "/watcher/truncated", self.truncated)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        return app

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Stop listening (again: a no-op), so the port is free and nothing answers on it."""
        runner, self.runner = self.runner, None
        if runner is not None:
            await runner.cleanup()

    def _record(self, request: web.Request, body: bytes = b"") -> None:
        self.seen.append(
            Seen(
                request.method,
                request.raw_path,
                {name.lower(): value for name, value in request.headers.items()},
                [name.lower() for name in request.headers],
                body,
            )
        )

    async def status(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.json_response({"state": "Running", "isRunning": True, "watcherID": "fake"})

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._record(request, body)
        return web.json_response(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": {name.lower(): value for name, value in request.headers.items()},
                "body": body.decode(errors="replace"),
            }
        )

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """One chunk, then the next only once the test has seen the first (so: not buffered)."""
        self._record(request)
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(b"first\n")
        await asyncio.wait_for(self.release.wait(), 10)
        await response.write(b"second\n")
        await response.write_eof()
        return response

    async def ticks(self, request: web.Request) -> web.StreamResponse:
        """`count` chunks, `every` seconds apart: a healthy long stream."""
        self._record(request)
        count, every = int(request.query["count"]), float(request.query["every"])
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(count):
            await response.write(f"tick {i}\n".encode())
            await asyncio.sleep(every)
        await response.write_eof()
        return response

    async def slow(self, request: web.Request) -> web.Response:
        """Headers only after `delay` seconds."""
        self._record(request)
        await asyncio.sleep(float(request.query["delay"]))
        return web.Response(text="late")

    async def upload(self, request: web.Request) -> web.Response:
        """Reads the body as it streams; tells the test when the first chunk came."""
        self._record(request)
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            if size == 0:
                self.first_chunk.set()
            size += len(chunk)
            digest.update(chunk)
        return web.json_response(
            {
                "size": size,
                "sha256": digest.hexdigest(),
                "content_length": request.headers.get("Content-Length"),
                "transfer_encoding": request.headers.get("Transfer-Encoding"),
            }
        )

    async def big(self, request: web.Request) -> web.Response:
        self._record(request)
        size = int(request.query.get("size", str(1024 * 1024)))
        return web.Response(body=_pattern(size), content_type="application/octet-stream")

    async def gzip(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.Response(
            body=gzip.compress(b"compressed hello " * 100),
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
        )

    async def hop(self, request: web.Request) -> web.Response:
        """Hop-by-hop headers the proxy must not pass on, and ones it must."""
        self._record(request)
        response = web.Response(text="hop")
        response.headers["Connection"] = "X-Private"
        response.headers["X-Private"] = "secret"
        response.headers["Keep-Alive"] = "timeout=99"
        response.headers["Proxy-Authenticate"] = "Basic"
        response.headers["Trailer"] = "X-Checksum"
        response.headers["X-End-To-End"] = "kept"
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        return response

    async def redirect(self, request: web.Request) -> web.Response:
        self._record(request)
        raise web.HTTPFound(location=request.query.get("to", "/watcher/status"))

    async def truncated(self, request: web.Request) -> web.StreamResponse:
        """Promises 1000 bytes, sends 10, then drops the connection."""
        self._record(request)
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"0123456789")
        assert request.transport is not None
        request.transport.close()
        return response

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        """Echo; `close:<code>` makes it close with that code; the subprotocol is `echo.v1`."""
        self._record(request)
        ws = web.WebSocketResponse(protocols=("echo.v1",))
        await ws.prepare(request)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                if message.data.startswith("close:"):
                    await ws.close(code=int(message.data.split(":")[1]))
                    break
                await ws.send_str(f"echo: {message.data}")
            elif message.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        self.ws_closed.put_nowait(ws.close_code)
        return ws


def _pattern(size: int) -> bytes:
    block = bytes(range(256))
    return (block * (size // 256 + 1))[:size]


def pattern(size: int) -> bytes:
    """Deterministic non-text bytes of a given size."""
    return _pattern(size)


@contextlib.asynccontextmanager
async def fake_watcher(port: int) -> AsyncIterator[FakeWatcher]:
    watcher = FakeWatcher(port)
    await watcher.start()
    try:
        yield watcher
    finally:
        await watcher.stop()


@contextlib.asynccontextmanager
async def program_with_watcher(
    http: aiohttp.ClientSession,
    host: RestHost,
    ready: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> AsyncIterator[tuple[dict[str, Any], FakeWatcher]]:
    """A Ready program (made by `ready`; by default a new user's) with a FakeWatcher on
    its WatcherAPI port.

    The runtime placed it on a port nothing held when it started; something may
    bind it before the watcher does (other Hosts on this machine): then the
    program is left alone and the next one is tried.
    """
    for _ in range(50):
        program = await (ready() if ready else ready_program(http, host, new_user()))
        watcher = FakeWatcher(target_port(program))
        try:
            await watcher.start()
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            await watcher.stop()
            continue
        try:
            yield program, watcher
        finally:
            await watcher.stop()
        return
    pytest.fail("no free WatcherAPI port in 50 programs")


async def raw_request(address: str, request: bytes, seconds: float = 10) -> tuple[int, bytes]:
    """Send bytes exactly as given (no client normalising the path); the status and the body."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), seconds)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return status, body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


def raw_get(target: str, host_header: str, extra: str = "") -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\n{extra}Connection: close\r\n\r\n"
    ).encode()


def json_body(body: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(body)
    return data
