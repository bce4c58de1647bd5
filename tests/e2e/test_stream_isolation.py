"""End-to-end attacks on streams, with two users and the admin on a Host with tokens on.

A stream checks who may see what when it opens, resumed or not, and on every
message; revoking the token it was opened with ends it within 5 s (in fact at
once) with nothing sent after the revocation: gRPC streams end with
UNAUTHENTICATED, the REST shim's SSE and log follows with an error event or
line, proxied responses and WebSockets are cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web

from hershy.entrypoints.rest import RestConfig, RestServer
from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from tests.e2e.rest_support import (
    RestHost,
    client_session,
    running_rest_server,
    target_port,
)
from tests.e2e.test_rest_auth import (
    User,
    call,
    make_user,
    program_on_a_free_port,
    ready_program_of,
    revoke,
)

Session = aiohttp.ClientSession
Kind = pb.WatchProgramsResponse
#: The brief's bound on how long a revoked token's stream may live on.
REVOKED_STREAM_SECONDS = 5.0


@pytest.fixture(scope="module")
def rest_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestHost]:
    with running_rest_server(tmp_path_factory.mktemp("hershy-streams"), auth=True) as host:
        yield host


@pytest.fixture
async def http() -> AsyncIterator[Session]:
    async with client_session() as session:
        yield session


@pytest.fixture
async def stub(rest_host: RestHost) -> AsyncIterator[pb_grpc.ProgramServiceAsyncStub]:
    async with grpc.aio.insecure_channel(rest_host.grpc_address) as channel:
        yield pb_grpc.ProgramServiceStub(channel)


def metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def admin_headers(host: RestHost) -> dict[str, str]:
    return {"Authorization": f"Bearer {host.admin_token}"}


async def watch_error(call_: Any) -> grpc.aio.AioRpcError:
    """The error a stream ends with (it must fail before sending anything)."""
    try:
        async with asyncio.timeout(5):
            async for message in call_:
                pytest.fail(f"the stream sent {message} instead of failing")
    except grpc.aio.AioRpcError as error:
        return error
    pytest.fail("the stream ended without an error")


async def messages_within(call_: Any, seconds: float) -> list[Any]:
    """What a stream sends within `seconds` (then it is cancelled)."""
    got: list[Any] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while (message := await call_.read()) is not grpc.aio.EOF:
                got.append(message)
    call_.cancel()
    return got


async def read_to_the_end(call_: Any, got: list[Any]) -> None:
    """Everything a stream still sends into `got`, until it ends (raises what it fails with)."""
    async with asyncio.timeout(REVOKED_STREAM_SECONDS):
        while (message := await call_.read()) is not grpc.aio.EOF:
            got.append(message)


async def until_synced(call_: Any) -> list[pb.WatchProgramsResponse]:
    seen = []
    async with asyncio.timeout(5):
        while True:
            message = await call_.read()
            assert message is not grpc.aio.EOF
            seen.append(message)
            if message.type == Kind.TYPE_SYNCED:
                return seen


# --- ownership ---------------------------------------------------------------------


async def test_resuming_a_watch_of_another_users_program_is_not_found(
    rest_host: RestHost, http: Session, stub: pb_grpc.ProgramServiceAsyncStub
) -> None:
    """The attack: resume a Watch (gRPC, or SSE with resume_revision / Last-Event-ID) on
    another user's program id; it used to stream every change of it."""
    alice, bob = await make_user(rest_host, "alice"), await make_user(rest_host, "bob")
    bobs = await ready_program_of(http, rest_host, bob)
    missing = "p-000000000000"  # well-formed, never existed
    for resume in (0, int(bobs["revision"]) - 1, int(bobs["revision"])):
        error = await watch_error(
            stub.WatchPrograms(
                pb.WatchProgramsRequest(
                    name=f"programs/{bobs['program_id']}", resume_revision=resume
                ),
                metadata=metadata(alice.token),
            )
        )
        never = await watch_error(
            stub.WatchPrograms(
                pb.WatchProgramsRequest(name=f"programs/{missing}", resume_revision=resume),
                metadata=metadata(alice.token),
            )
        )
        assert error.code() == never.code() == grpc.StatusCode.NOT_FOUND
        # The same words as for an id that never existed: no hint that it does.
        assert error.details() == (never.details() or "").replace(missing, bobs["program_id"])
        for where in (f"?resume_revision={resume}", ""):
            url = f"{rest_host.url}/programs/{bobs['program_id']}/events{where}"
            headers = (
                {**alice.headers, "Last-Event-ID": str(resume)} if not where else alice.headers
            )
            status, body, _ = await call(http, "GET", url, headers)
            assert status == 404, body
            assert body["error"] == "PROGRAM_NOT_FOUND"
    # Deleted, it stays Bob's: Alice still gets NOT_FOUND, Bob follows it to its end.
    status, gone, _ = await call(
        http, "DELETE", f"{rest_host.url}/programs/{bobs['program_id']}", bob.headers
    )
    assert status == 200, gone
    request = pb.WatchProgramsRequest(
        name=f"programs/{bobs['program_id']}", resume_revision=int(bobs["revision"])
    )
    error = await watch_error(stub.WatchPrograms(request, metadata=metadata(alice.token)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    own = await messages_within(stub.WatchPrograms(request, metadata=metadata(bob.token)), 1.0)
    assert own
    assert own[-1].type == Kind.TYPE_DELETED
    assert all(m.program.user_id == bob.user_id for m in own)


async def test_a_users_resumed_watch_of_everything_never_carries_anothers_change(
    rest_host: RestHost, http: Session, stub: pb_grpc.ProgramServiceAsyncStub
) -> None:
    """The attack: resume the unscoped Watch from revision 0 to replay the whole history."""
    alice, bob = await make_user(rest_host, "alice"), await make_user(rest_host, "bob")
    bobs = await ready_program_of(http, rest_host, bob)
    alices = await ready_program_of(http, rest_host, alice)
    replay = await messages_within(
        stub.WatchPrograms(
            pb.WatchProgramsRequest(resume_revision=0), metadata=metadata(alice.token)
        ),
        1.0,
    )
    assert {m.program.id for m in replay} == {alices["program_id"]}
    # The SSE replay too (Last-Event-ID: 0).
    headers = {**alice.headers, "Last-Event-ID": "0"}
    async with http.get(f"{rest_host.url}/events", headers=headers) as response:
        assert response.status == 200
        text = b""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                while alices["program_id"].encode() not in text or b"Ready" not in text:
                    text += await response.content.readany()
    assert alices["program_id"].encode() in text
    assert bobs["program_id"].encode() not in text
    assert bob.user_id.encode() not in text


# --- revocation: gRPC streams --------------------------------------------------------


async def test_revoking_a_token_ends_its_grpc_watch_and_log_follow_at_once(
    rest_host: RestHost, http: Session, stub: pb_grpc.ProgramServiceAsyncStub
) -> None:
    alice = await make_user(rest_host, "alice")
    program = await ready_program_of(http, rest_host, alice)
    name = f"programs/{program['program_id']}"
    watch_all = stub.WatchPrograms(pb.WatchProgramsRequest(), metadata=metadata(alice.token))
    watch_one = stub.WatchPrograms(
        pb.WatchProgramsRequest(name=name, resume_revision=int(program["revision"])),
        metadata=metadata(alice.token),
    )
    follow = stub.ReadProgramLogs(
        pb.ReadProgramLogsRequest(name=name, follow=True, tail=0), metadata=metadata(alice.token)
    )
    await until_synced(watch_all)
    await watch_one.initial_metadata()
    await follow.initial_metadata()
    await revoke(rest_host, alice)
    revoked_at = time.monotonic()
    # The admin makes changes (and log lines) after the revocation: none may reach Alice.
    status, _, _ = await call(
        http,
        "POST",
        f"{rest_host.url}/programs/{program['program_id']}/stop",
        admin_headers(rest_host),
    )
    assert status == 200
    for stream in (watch_all, watch_one, follow):
        after: list[Any] = []
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await read_to_the_end(stream, after)
        assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in (ended.value.details() or "")
        assert after == [], f"sent after the revocation: {after}"
    assert time.monotonic() - revoked_at < REVOKED_STREAM_SECONDS


async def test_revoking_one_token_leaves_other_tokens_streams_running(
    rest_host: RestHost, http: Session, stub: pb_grpc.ProgramServiceAsyncStub
) -> None:
    alice, bob = await make_user(rest_host, "alice"), await make_user(rest_host, "bob")
    program = await ready_program_of(http, rest_host, bob)
    alices = stub.WatchPrograms(pb.WatchProgramsRequest(), metadata=metadata(alice.token))
    bobs = stub.WatchPrograms(pb.WatchProgramsRequest(), metadata=metadata(bob.token))
    await until_synced(alices)
    await until_synced(bobs)
    await revoke(rest_host, alice)
    status, _, _ = await call(
        http, "POST", f"{rest_host.url}/programs/{program['program_id']}/stop", bob.headers
    )
    assert status == 200
    got = await messages_within(bobs, 1.0)
    assert any(m.program.state == pb.STATE_STOPPED for m in got)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await read_to_the_end(alices, [])
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- revocation: the REST shim's streams ---------------------------------------------


async def test_revoking_a_token_ends_its_sse_and_log_follow_with_an_error(
    rest_host: RestHost, http: Session
) -> None:
    alice = await make_user(rest_host, "alice")
    program = await ready_program_of(http, rest_host, alice)
    base = f"{rest_host.url}/programs/{program['program_id']}"
    async with (
        http.get(f"{rest_host.url}/events", headers=alice.headers) as events,
        http.get(f"{base}/logs?follow=1&tail=0", headers=alice.headers) as logs,
    ):
        assert events.status == logs.status == 200
        text = b""
        async with asyncio.timeout(5):
            while b"event: synced" not in text:
                text += await events.content.readany()
        await revoke(rest_host, alice)
        status, _, _ = await call(http, "POST", f"{base}/stop", admin_headers(rest_host))
        assert status == 200
        async with asyncio.timeout(REVOKED_STREAM_SECONDS):
            after_events = (await events.content.read()).decode()
            after_logs = (await logs.content.read()).decode()
    assert "event: updated" not in after_events, after_events
    assert "event: error" in after_events
    error = json.loads(after_events.split("event: error\ndata: ", 1)[1].split("\n", 1)[0])
    assert error["error"] == "UNAUTHENTICATED"
    lines = [json.loads(line) for line in after_logs.splitlines()]
    assert lines
    assert lines[-1]["error"] == "UNAUTHENTICATED", lines
    assert len(lines) == 1, f"log lines after the revocation: {lines}"


# --- revocation: proxied streams -----------------------------------------------------


@dataclass
class TickingWatcher:
    """A WatcherAPI that streams ticks (HTTP and WebSocket), noting when each was sent."""

    port: int
    every: float = 0.05
    sent: dict[str, float] = field(default_factory=dict)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/watcher/ticks", self.ticks)
        app.router.add_get("/watcher/ws", self.websocket)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def ticks(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for i in range(10_000):
                tick = f"http-{i}"
                self.sent[tick] = time.monotonic()
                await response.write(f"{tick}\n".encode())
                await asyncio.sleep(self.every)
        except (ConnectionResetError, RuntimeError):
            pass
        finally:
            self.ended.set()
        return response

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            for i in range(10_000):
                if ws.closed:
                    break
                tick = f"ws-{i}"
                self.sent[tick] = time.monotonic()
                await ws.send_str(tick)
                await asyncio.sleep(self.every)
        except (ConnectionResetError, RuntimeError):
            pass
        finally:
            self.ended.set()
        return ws


@contextlib.asynccontextmanager
async def ticking(port: int) -> AsyncIterator[TickingWatcher]:
    watcher = TickingWatcher(port)
    await watcher.start()
    try:
        yield watcher
    finally:
        await watcher.stop()


async def proxied_streams_end_on_revocation(
    host: RestHost, http: Session, shim_url: str, alice: User, *, websocket: bool
) -> tuple[TickingWatcher, float, list[tuple[str, float]], object]:
    """Open a proxied tick stream as Alice, revoke her token; what arrived, and how it ended."""
    program = await program_on_a_free_port(http, host, alice)
    url = f"{shim_url}/programs/{program['program_id']}/watcher"
    async with ticking(target_port(program)) as watcher:
        got: list[tuple[str, float]] = []
        if websocket:
            ws = await http.ws_connect(
                f"{url}/ws".replace("http://", "ws://"), headers=alice.headers
            )
            got.append(((await ws.receive_str()), time.monotonic()))
            await revoke(host, alice)
            revoked = time.monotonic()
            async with asyncio.timeout(REVOKED_STREAM_SECONDS):
                async for message in ws:
                    got.append((message.data, time.monotonic()))
            ending: object = ws.close_code
        else:
            async with http.get(f"{url}/ticks", headers=alice.headers) as response:
                assert response.status == 200
                got.append(((await response.content.readline()).decode().strip(), time.monotonic()))
                await revoke(host, alice)
                revoked = time.monotonic()
                ending = "eof"
                try:
                    async with asyncio.timeout(REVOKED_STREAM_SECONDS):
                        while line := await response.content.readline():
                            got.append((line.decode().strip(), time.monotonic()))
                except aiohttp.ClientPayloadError as error:
                    ending = error  # cut: never a complete-looking end
        async with asyncio.timeout(REVOKED_STREAM_SECONDS):
            await watcher.ended.wait()  # the program's side was closed too
        return watcher, revoked, got, ending


@pytest.mark.parametrize("websocket", [False, True], ids=["http", "websocket"])
async def test_revoking_a_token_cuts_its_proxied_streams_at_once(
    rest_host: RestHost, http: Session, websocket: bool
) -> None:
    alice = await make_user(rest_host, "alice")
    watcher, revoked, got, ending = await proxied_streams_end_on_revocation(
        rest_host, http, rest_host.url, alice, websocket=websocket
    )
    late = [tick for tick, _ in got if tick and watcher.sent.get(tick, 0.0) > revoked]
    assert late == [], f"sent by the program after the revocation, and delivered: {late}"
    if websocket:
        assert ending == aiohttp.WSCloseCode.POLICY_VIOLATION
    else:
        assert isinstance(ending, aiohttp.ClientPayloadError), ending
    # The proxy is shut too, at once: no waiting out the token cache.
    status, body, _ = await call(
        http, "GET", f"{rest_host.url}/programs/p-000000000000/watcher/status", alice.headers
    )
    assert status == 401, body


async def test_a_shim_not_told_of_revocations_cuts_proxied_streams_by_asking_again(
    rest_host: RestHost, http: Session
) -> None:
    """The backstop: a shim that runs without the core's word (no `revocations`) finds the
    revocation by asking the core again about its open streams' tokens."""
    server = RestServer(
        RestConfig(
            grpc_address=rest_host.grpc_address,
            http_address="127.0.0.1:0",
            service_token=rest_host.admin_token,
            revocation_check_seconds=0.5,
        )
    )
    await server.start()
    try:
        alice = await make_user(rest_host, "alice")
        started = time.monotonic()
        _, revoked, _, ending = await proxied_streams_end_on_revocation(
            rest_host, http, f"http://{server.address}", alice, websocket=False
        )
        assert isinstance(ending, aiohttp.ClientPayloadError), ending
        assert time.monotonic() - revoked < REVOKED_STREAM_SECONDS
        assert revoked > started
    finally:
        await server.stop()
