"""End-to-end: the WatcherAPI reverse proxy of a real `hershy serve --runtime fake`.

In fake mode no container listens on a program's WatcherAPI port, so each test
starts a FakeWatcher there: a real HTTP server playing the program. Requests go
through the shim over real HTTP (raw sockets where a client library would
normalise the path the test means to send).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import grpc
import pytest
from yarl import URL

from hershy.entrypoints.rest import RestConfig, RestServer
from hershy.entrypoints.rest.cache import ProgramCache
from hershy.v1 import program_pb2 as pb
from tests.e2e.conftest import free_port
from tests.e2e.rest_support import (
    FakeWatcher,
    RestHost,
    create_program,
    fake_watcher,
    json_body,
    new_user,
    pattern,
    post_action,
    program_with_watcher,
    raw_get,
    raw_request,
    running_rest_server,
    target_port,
    wait_state,
)

Session = aiohttp.ClientSession
HOP_BY_HOP = ("connection", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization")


@pytest.fixture(scope="module")
def rest_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestHost]:
    with running_rest_server(tmp_path_factory.mktemp("hershy-proxy")) as host:
        yield host


@contextlib.asynccontextmanager
async def watched_program(
    http: Session, host: RestHost
) -> AsyncIterator[tuple[dict[str, Any], FakeWatcher, str]]:
    """A Ready program, its FakeWatcher, and the proxy's base URL for it."""
    async with program_with_watcher(http, host) as (program, watcher):
        yield program, watcher, f"{host.url}/programs/{program['program_id']}/watcher"


def assert_error(status: int, body: dict[str, Any], code: int, error: str) -> None:
    assert status == code, body
    assert body["code"] == code
    assert body["error"] == error, body
    assert body["message"]


# --- passing requests through ---------------------------------------------------------


@pytest.mark.parametrize("prefix", ["watcher", "proxy/watcher"])
async def test_status_through_the_route_and_its_alias(
    rest_host: RestHost, http: Session, prefix: str
) -> None:
    async with watched_program(http, rest_host) as (program, watcher, _):
        url = f"{rest_host.url}/programs/{program['program_id']}/{prefix}/status"
        async with http.get(url) as response:
            assert response.status == 200
            assert await response.json() == {
                "state": "Running",
                "isRunning": True,
                "watcherID": "fake",
            }
        (seen,) = watcher.seen
        assert seen.raw_path == "/watcher/status"
        alias = "/proxy" if prefix.startswith("proxy") else ""
        assert seen.headers["x-forwarded-prefix"] == f"/programs/{program['program_id']}{alias}"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_any_method_path_query_and_body_pass_through(
    rest_host: RestHost, http: Session, method: str
) -> None:
    async with watched_program(http, rest_host) as (_, watcher, base):
        body = b'{"content": "buy"}' if method not in ("GET", "OPTIONS") else b""
        # encoded=True: the test client must not normalise what the proxy should keep.
        url = URL(f"{base}/message/a%20b/c?x=1&y=%2F+z&x=2", encoded=True)
        async with http.request(method, url, data=body or None) as response:
            assert response.status == 200
            echo = await response.json()
        assert echo["method"] == method
        # The path and query arrive as sent, still encoded.
        assert echo["raw_path"] == "/watcher/message/a%20b/c?x=1&y=%2F+z&x=2"
        assert echo["body"] == body.decode()
        if body:
            assert echo["headers"]["content-length"] == str(len(body))
        assert len(watcher.seen) == 1


async def test_head_answers_headers_only(rest_host: RestHost, http: Session) -> None:
    async with watched_program(http, rest_host) as (_, watcher, base):
        async with http.head(f"{base}/big") as response:
            assert response.status == 200
            assert response.headers["Content-Length"] == str(1024 * 1024)
            assert await response.read() == b""
        assert watcher.seen[0].method == "HEAD"


async def test_headers_hop_by_hop_stripped_forwarded_set(
    rest_host: RestHost, http: Session
) -> None:
    async with watched_program(http, rest_host) as (_, watcher, base):
        headers = {
            "Authorization": "Bearer t0k3n",
            "Cookie": "session=abc",
            "X-Custom": "kept",
            "X-Listed": "dropped: named in Connection",
            "Connection": "keep-alive, X-Listed",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Trailer": "X-Sum",
            "Proxy-Authorization": "Basic c2VjcmV0",
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Host": "forged.example",
            "Forwarded": "for=6.6.6.6",
            "Host": "hershy.example:9000",
        }
        async with http.get(f"{base}/echo", headers=headers) as response:
            echo = await response.json()
        seen = echo["headers"]
        assert seen["authorization"] == "Bearer t0k3n"
        assert seen["cookie"] == "session=abc"
        assert seen["x-custom"] == "kept"
        for name in (*HOP_BY_HOP, "x-listed", "forwarded"):
            if name == "connection":
                assert seen.get(name, "keep-alive").lower() in ("keep-alive", "close")
            else:
                assert name not in seen, name
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-forwarded-host"] == "hershy.example:9000"
        # The program is called on its own address, whatever the client's Host said.
        assert seen["host"] == f"127.0.0.1:{watcher.port}"
        # And from the program to the client:
        async with http.get(f"{base}/hop") as response:
            assert response.status == 200
            for name in ("x-private", "keep-alive", "proxy-authenticate", "trailer"):
                assert name not in response.headers, name
            assert response.headers["X-End-To-End"] == "kept"
            assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]


async def test_redirects_point_through_the_proxy(rest_host: RestHost, http: Session) -> None:
    async with watched_program(http, rest_host) as (program, _, base):
        prefix = f"/programs/{program['program_id']}"
        for target, expected in [
            ("/watcher/status", f"{prefix}/watcher/status"),
            (f"http://127.0.0.1:{target_port(program)}/watcher/x", f"{prefix}/watcher/x"),
            ("https://elsewhere.example/", "https://elsewhere.example/"),
        ]:
            async with http.get(
                f"{base}/redirect", params={"to": target}, allow_redirects=False
            ) as response:
                assert response.status == 302
                assert response.headers["Location"] == expected


async def test_compressed_bodies_pass_untouched(rest_host: RestHost, http: Session) -> None:
    async with watched_program(http, rest_host) as (_, _, base):
        async with http.get(f"{base}/gzip", headers={"Accept-Encoding": "gzip"}) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            raw = await response.read()
        assert gzip.decompress(raw) == b"compressed hello " * 100


# --- streaming ------------------------------------------------------------------------


async def test_responses_stream(rest_host: RestHost, http: Session) -> None:
    """The first chunk reaches the client while the program still holds the second back."""
    async with (
        watched_program(http, rest_host) as (_, watcher, base),
        http.get(f"{base}/stream") as response,
    ):
        async with asyncio.timeout(5):
            assert await response.content.readline() == b"first\n"
        watcher.release.set()
        async with asyncio.timeout(5):
            assert await response.content.read() == b"second\n"


async def test_request_bodies_stream(rest_host: RestHost, http: Session) -> None:
    """The program reads the first chunk while the client has not sent the second yet."""
    async with watched_program(http, rest_host) as (_, watcher, base):
        second = pattern(1 << 20)

        async def body() -> AsyncIterator[bytes]:
            yield b"first chunk"
            async with asyncio.timeout(5):
                await watcher.first_chunk.wait()
            yield second

        async with http.post(f"{base}/upload", data=body()) as response:
            answer = await response.json()
        assert answer["size"] == len(b"first chunk") + len(second)
        assert answer["sha256"] == hashlib.sha256(b"first chunk" + second).hexdigest()
        assert answer["transfer_encoding"] == "chunked"


async def test_large_bodies_both_ways(rest_host: RestHost, http: Session) -> None:
    async with watched_program(http, rest_host) as (_, _, base):
        data = pattern(16 << 20)
        async with http.post(f"{base}/upload", data=data) as response:
            answer = await response.json()
        assert answer == {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "content_length": str(len(data)),
            "transfer_encoding": None,
        }
        async with http.get(f"{base}/big", params={"size": str(16 << 20)}) as response:
            assert await response.read() == data


async def test_a_response_cut_short_reaches_the_client_cut_short(
    rest_host: RestHost, http: Session
) -> None:
    async with (
        watched_program(http, rest_host) as (_, _, base),
        http.get(f"{base}/truncated") as response,
    ):
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_long_streams_have_no_total_timeout_but_silence_has_one(
    rest_host: RestHost, http: Session
) -> None:
    """A shim of our own with a 0.5 s read timeout, on the shared Host's core."""
    server = RestServer(
        RestConfig(
            grpc_address=rest_host.grpc_address,
            http_address="127.0.0.1:0",
            auth_enabled=False,
            proxy_read_timeout=0.5,
        )
    )
    await server.start()
    try:
        async with watched_program(http, rest_host) as (program, _, _):
            base = f"http://{server.address}/programs/{program['program_id']}/watcher"
            # 8 chunks 0.2 s apart: 1.6 s in all, much longer than the read timeout.
            async with http.get(f"{base}/ticks", params={"count": "8", "every": "0.2"}) as ok:
                assert (await ok.read()).count(b"tick") == 8
            # A program that goes silent mid-stream is cut off (truncated, not "complete").
            async with http.get(f"{base}/ticks", params={"count": "2", "every": "1.5"}) as cut:
                with pytest.raises(aiohttp.ClientPayloadError):
                    await cut.read()
            # A program that does not even send headers: 504.
            async with http.get(f"{base}/slow", params={"delay": "1.5"}) as slow:
                assert_error(slow.status, await slow.json(), 504, "WATCHER_TIMEOUT")
    finally:
        await server.stop()


# --- WebSocket ----------------------------------------------------------------------------


async def test_websocket_echo_both_ways(rest_host: RestHost, http: Session) -> None:
    async with watched_program(http, rest_host) as (program, watcher, base):
        ws_url = base.replace("http://", "ws://") + "/ws"
        async with http.ws_connect(ws_url, protocols=("echo.v1", "other")) as ws:
            assert ws.protocol == "echo.v1"
            await ws.send_str("hello")
            assert (await ws.receive(timeout=5)).data == "echo: hello"
            await ws.send_bytes(b"\x00\x01\x02")
            assert (await ws.receive(timeout=5)).data == b"\x02\x01\x00"
            large = "z" * (1 << 20)
            await ws.send_str(large)
            assert (await ws.receive(timeout=5)).data == f"echo: {large}"
            # The program closes with a code: the client sees that code.
            await ws.send_str("close:4002")
            closing = await ws.receive(timeout=5)
            assert closing.type == aiohttp.WSMsgType.CLOSE
            assert closing.data == 4002
        # The client closes with a code: the program sees it.
        async with http.ws_connect(ws_url) as ws:
            await ws.send_str("ping")
            assert (await ws.receive(timeout=5)).data == "echo: ping"
            await ws.close(code=4001)
        async with asyncio.timeout(5):
            await watcher.ws_closed.get()  # the connection the program closed itself
            assert await watcher.ws_closed.get() == 4001
        upgrade = watcher.seen[-1]
        assert upgrade.raw_path == "/watcher/ws"
        assert upgrade.headers["x-forwarded-prefix"] == f"/programs/{program['program_id']}"


async def test_websocket_to_a_program_that_refuses_the_upgrade_is_502(
    rest_host: RestHost, http: Session
) -> None:
    async with watched_program(http, rest_host) as (_, _, base):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(base.replace("http://", "ws://") + "/status")
        assert refused.value.status == 502


# --- not ready, not there, not answering -------------------------------------------------


async def test_503_while_the_program_is_not_ready(rest_host: RestHost, http: Session) -> None:
    program = await create_program(http, rest_host, new_user())
    assert program["proxy_target"] == "", "not placed anywhere before it first runs"
    program_id = program["program_id"]
    base = f"{rest_host.url}/programs/{program_id}/watcher"
    async with http.get(f"{base}/status") as response:
        body = await response.json()
        assert_error(response.status, body, 503, "PROGRAM_NOT_READY")
        assert body["state"] == "Created"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(base.replace("http://", "ws://") + "/ws")
    assert refused.value.status == 503
    # Ready: through. Stopped again: 503 at once, naming the state.
    await post_action(http, rest_host, program_id, "start")
    ready = await wait_state(http, rest_host, program_id, "ready")
    async with fake_watcher(target_port(ready)) as watcher:
        async with http.get(f"{base}/status") as response:
            assert response.status == 200
        await post_action(http, rest_host, program_id, "stop")
        await wait_state(http, rest_host, program_id, "stopped")
        async with http.get(f"{base}/status") as response:
            body = await response.json()
            assert_error(response.status, body, 503, "PROGRAM_NOT_READY")
            assert body["state"] == "Stopped"
        # Only the one request made while Ready reached the program.
        assert [seen.raw_path for seen in watcher.seen] == ["/watcher/status"]


async def test_502_when_the_watcher_does_not_answer(rest_host: RestHost, http: Session) -> None:
    async with program_with_watcher(http, rest_host) as (program, watcher):
        await watcher.stop()  # a port known to be free: nothing listens on it now
    base = f"{rest_host.url}/programs/{program['program_id']}/watcher"
    async with http.get(f"{base}/status") as response:
        assert_error(response.status, await response.json(), 502, "WATCHER_UNREACHABLE")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(base.replace("http://", "ws://") + "/ws")
    assert refused.value.status == 502

    # Something listens, but hangs up without a word.
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", target_port(program))
    try:
        async with http.get(f"{base}/status") as response:
            assert_error(response.status, await response.json(), 502, "WATCHER_UNREACHABLE")
    finally:
        server.close()
        await server.wait_closed()


async def test_unknown_and_malformed_programs(rest_host: RestHost, http: Session) -> None:
    async with http.get(f"{rest_host.url}/programs/prog-000000000000/watcher/status") as response:
        assert_error(response.status, await response.json(), 404, "PROGRAM_NOT_FOUND")
    async with http.get(f"{rest_host.url}/programs/NOT_AN_ID/watcher/status") as response:
        assert_error(response.status, await response.json(), 400, "INVALID_ARGUMENT")


# --- no way out ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def escape_setup(
    http: Session, host: RestHost
) -> AsyncIterator[tuple[dict[str, Any], FakeWatcher, FakeWatcher]]:
    """A program's watcher, and a decoy on another port that nothing may reach."""
    async with (
        watched_program(http, host) as (program, watcher, _),
        fake_watcher(free_port()) as decoy,
    ):
        yield program, watcher, decoy


@pytest.mark.parametrize(
    "suffix",
    [
        "/../../../healthz",
        "/status/../../../../programs",
        "/./status",
        "/%2e%2e/%2e%2e/healthz",
        "/.%2E/x",
        "/%2E./x",
        "/a%2fb",
        "/a%2F..%2F..%2Fhealthz",
        "/a%5cb",
        "/a\\..\\b",
        "/a%00b",
    ],
)
async def test_dot_segments_and_encoded_slashes_are_refused(
    rest_host: RestHost, http: Session, suffix: str
) -> None:
    async with escape_setup(http, rest_host) as (program, watcher, decoy):
        target = f"/programs/{program['program_id']}/watcher{suffix}"
        status, body = await raw_request(
            rest_host.http_address, raw_get(target, rest_host.http_address)
        )
        assert_error(status, json_body(body), 400, "INVALID_ARGUMENT")
        assert json_body(body)["field"] == "path"
        assert watcher.seen == []
        assert decoy.seen == []


async def test_absolute_urls_and_host_headers_do_not_choose_the_destination(
    rest_host: RestHost, http: Session
) -> None:
    async with escape_setup(http, rest_host) as (program, watcher, decoy):
        decoy_address = f"127.0.0.1:{decoy.port}"
        path = f"/programs/{program['program_id']}/watcher/echo"
        attempts = [
            # An absolute-form target naming the decoy: its authority is ignored.
            raw_get(f"http://{decoy_address}{path}", decoy_address),
            # A Host header naming the decoy (or the Host's gRPC port).
            raw_get(path, decoy_address),
            raw_get(path, rest_host.grpc_address),
            # Authorities smuggled into the path stay a path on the program's server.
            raw_get(f"{path}//{decoy_address}/x", decoy_address),
            raw_get(f"{path}/http://{decoy_address}/x", decoy_address),
            raw_get(f"{path}/@{decoy_address}/x", decoy_address),
        ]
        for attempt in attempts:
            status, _ = await raw_request(rest_host.http_address, attempt)
            assert status == 200, attempt
        assert decoy.seen == []
        assert [seen.headers["host"] for seen in watcher.seen] == [
            f"127.0.0.1:{watcher.port}"
        ] * len(attempts)
        assert [seen.raw_path for seen in watcher.seen] == [
            "/watcher/echo",
            "/watcher/echo",
            "/watcher/echo",
            f"/watcher/echo//{decoy_address}/x",
            f"/watcher/echo/http://{decoy_address}/x",
            f"/watcher/echo/@{decoy_address}/x",
        ]


@pytest.mark.parametrize(
    "request_line",
    [
        "GET http://{decoy}/ HTTP/1.1",
        "GET http://{decoy}/watcher/status HTTP/1.1",
        "CONNECT {decoy} HTTP/1.1",
        "GET /programs/{id}%2F..%2F..%2Fhealthz/watcher/status HTTP/1.1",
        "GET /programs/{id}/watcher@{decoy}/status HTTP/1.1",
        "GET /programs/{id}/watcherx/status HTTP/1.1",
        "GET /programs/..%2F{id}/watcher/status HTTP/1.1",
        "GET //{decoy}/watcher/status HTTP/1.1",
    ],
)
async def test_other_targets_never_reach_a_watcher(
    rest_host: RestHost, http: Session, request_line: str
) -> None:
    async with escape_setup(http, rest_host) as (program, watcher, decoy):
        line = request_line.format(decoy=f"127.0.0.1:{decoy.port}", id=program["program_id"])
        request = f"{line}\r\nHost: 127.0.0.1:{decoy.port}\r\nConnection: close\r\n\r\n"
        status, body = await raw_request(rest_host.http_address, request.encode())
        assert 400 <= status < 500, (status, body)
        if body.startswith(b"{"):
            assert json.loads(body)["code"] == status
        assert watcher.seen == []
        assert decoy.seen == []


# --- the proxy's view of programs -----------------------------------------------------------


class ScriptedWatch:
    """A stand-in for the core's WatchPrograms: each call streams what the test puts in."""

    def __init__(self) -> None:
        self.streams: list[asyncio.Queue[pb.WatchProgramsResponse | grpc.aio.AioRpcError]] = []
        self.opened = asyncio.Event()

    def WatchPrograms(  # noqa: N802 (the gRPC method's name)
        self, request: pb.WatchProgramsRequest, metadata: Any = ()
    ) -> AsyncIterator[pb.WatchProgramsResponse]:
        queue: asyncio.Queue[pb.WatchProgramsResponse | grpc.aio.AioRpcError] = asyncio.Queue()
        self.streams.append(queue)
        self.opened.set()

        async def stream() -> AsyncIterator[pb.WatchProgramsResponse]:
            while True:
                item = await queue.get()
                if isinstance(item, grpc.aio.AioRpcError):
                    raise item
                yield item

        return stream()


def watch_message(
    kind: pb.WatchProgramsResponse.Type.ValueType,
    program_id: str = "",
    state: pb.State.ValueType = pb.STATE_READY,
    revision: int = 0,
) -> pb.WatchProgramsResponse:
    message = pb.WatchProgramsResponse(type=kind, revision=revision)
    if program_id:
        message.program.CopyFrom(
            pb.Program(
                id=program_id,
                state=state,
                proxy_target="127.0.0.1:19001",
                user_id="alice",
                revision=revision,
            )
        )
    return message


async def test_the_cache_follows_snapshots_changes_resyncs_and_reconnects() -> None:
    Kind = pb.WatchProgramsResponse  # noqa: N806
    watch = ScriptedWatch()
    cache = ProgramCache(watch)  # type: ignore[arg-type]
    task = asyncio.create_task(cache.run())

    async def until(condition: Any) -> None:
        """The cache changes inside its own task, with no event to wait on: poll, bounded."""
        for _ in range(1000):
            if condition():
                return
            await asyncio.sleep(0.005)
        pytest.fail("the cache never got there")

    try:
        await until(lambda: watch.streams)
        first = watch.streams[0]
        first.put_nowait(watch_message(Kind.TYPE_SNAPSHOT, "prog-a", pb.STATE_READY, 1))
        first.put_nowait(watch_message(Kind.TYPE_SNAPSHOT, "prog-b", pb.STATE_STOPPED, 2))
        await asyncio.sleep(0.05)
        assert cache.get("prog-a") is None  # not synced yet: nothing is trusted
        first.put_nowait(watch_message(Kind.TYPE_SYNCED, revision=2))
        await until(lambda: cache.synced)
        target = cache.get("prog-a")
        assert target is not None
        assert (target.state, target.user_id) == (pb.STATE_READY, "alice")
        # Changes.
        first.put_nowait(watch_message(Kind.TYPE_UPDATED, "prog-a", pb.STATE_STOPPING, 3))
        first.put_nowait(watch_message(Kind.TYPE_DELETED, "prog-b", pb.STATE_DELETED, 4))
        first.put_nowait(watch_message(Kind.TYPE_CREATED, "prog-c", pb.STATE_CREATED, 5))
        await until(lambda: cache.get("prog-c") is not None)
        assert cache.get("prog-b") is None
        stopping = cache.get("prog-a")
        assert stopping is not None
        assert stopping.state == pb.STATE_STOPPING
        # A resync: the old view serves until the fresh snapshot is complete.
        first.put_nowait(watch_message(Kind.TYPE_RESYNC))
        first.put_nowait(watch_message(Kind.TYPE_SNAPSHOT, "prog-c", pb.STATE_READY, 9))
        await asyncio.sleep(0.05)
        assert cache.get("prog-a") is not None
        first.put_nowait(watch_message(Kind.TYPE_SYNCED, revision=9))
        await until(lambda: cache.get("prog-a") is None)
        ready = cache.get("prog-c")
        assert ready is not None
        assert ready.state == pb.STATE_READY
        # The stream breaks: nothing is trusted until a new one has synced.
        first.put_nowait(
            grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata()
            )
        )
        await until(lambda: not cache.synced)
        assert cache.get("prog-c") is None
        await until(lambda: len(watch.streams) == 2)
        second = watch.streams[1]
        second.put_nowait(watch_message(Kind.TYPE_SNAPSHOT, "prog-d", pb.STATE_READY, 10))
        second.put_nowait(watch_message(Kind.TYPE_SYNCED, revision=10))
        await until(lambda: cache.synced)
        assert cache.get("prog-d") is not None
        assert cache.get("prog-c") is None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
