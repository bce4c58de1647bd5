"""The proxy's hot path: a plain GET/HEAD to a Ready program, answered without aiohttp's layers.

aiohttp's server and client cost about ten times nginx's CPU per proxied small
request here (benchmarks/proxy_bench.py prints the profile with --profile):
its request, response and client objects, not the proxy's own work. So the
REST port's connections start with `FrontProtocol`. It reads each request's
head and serves it itself only when every answer is already known and the
request is of the simplest kind:

- GET or HEAD, HTTP/1.1, no body (neither Content-Length nor
  Transfer-Encoding), no Upgrade, no Expect, no `Connection: close`, a head of
  at most MAX_HEAD_BYTES in strict CRLF form with well-formed header names,
  one Host and at most one Authorization;
- a proxy route `parse_route` accepts (the same function, on the same raw
  target);
- the caller's token known and fresh in `Principals` (no core call needed),
  the program Ready and the caller's in the `ProgramCache`, and its address
  one the runtime hands out (`watcher_endpoint`).

Anything else, the connection is handed, with every byte read so far, to
aiohttp's own handler, for good: the 400s, 401s, 404s, 502s, 503s, uploads,
WebSockets and odd requests are answered by exactly the code that answered
them before. What the fast path does is what `WatcherProxy._http` does, in
the same order and with the same rules: the headers it drops and sets
(`proxy.HOP_BY_HOP`, the Connection-listed ones, X-Forwarded-*), the
program's response parsed by aiohttp's own client parser (llhttp: the same
limits, the same refusals of malformed answers), hop-by-hop response headers
dropped and Location rewritten, 502/504 as the same JSON errors, a response
cut short passed on cut short, and the stream registered as open under its
token, so a revocation cuts it at once.

Connections to programs are kept alive in an `UpstreamPool`: per program
address, at most IDLE_PER_PROGRAM idle ones (a tenant cannot hoard the
Host's sockets), dropped when the program's address changes or it stops
being Ready (the next request finds the cache says so and is handed over).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_exceptions import HttpProcessingError

from hershy.domain.auth import ADMIN_USER
from hershy.entrypoints.rest.auth import Principals, token_key
from hershy.entrypoints.rest.cache import ProgramCache
from hershy.entrypoints.rest.errors import ApiError
from hershy.entrypoints.rest.proxy import (
    _NO_BODY_STATUSES,
    HOP_BY_HOP,
    READ_BUFFER_BYTES,
    EndpointOf,
    OpenStream,
    ProxyRoute,
    WatcherProxy,
    parse_route,
    target_endpoint,
)
from hershy.service.ports import WatcherEndpoint
from hershy.v1 import program_pb2 as pb

log = logging.getLogger(__name__)

#: A longer request head goes to aiohttp (which allows 8190 bytes a line).
MAX_HEAD_BYTES = 8 * 1024
#: A request with more headers goes to aiohttp (which refuses past 128).
MAX_HEADERS = 100
#: Idle keep-alive connections kept per program address, at most (nginx's `keepalive 32`).
IDLE_PER_PROGRAM = 32
#: Idle keep-alive connections kept to all programs together, at most.
IDLE_TOTAL = 1024
#: How long a client's idle keep-alive connection stays open (aiohttp's default).
CLIENT_KEEPALIVE_SECONDS = 75.0
#: How long an idle connection to a program is kept.
UPSTREAM_KEEPALIVE_SECONDS = 30.0
#: Connecting to a program: as the aiohttp client's sock_connect.
CONNECT_SECONDS = 5.0
#: Pause sending more of a body while the client has this much unsent.
WRITE_HIGH_WATER = 2 * READ_BUFFER_BYTES

#: A header line in strict form: a token, a colon, a value of visible chars, spaces, tabs.
_HEADER_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e]*")
#: The request line the fast path takes: GET or HEAD of an origin-form target made only of
#: RFC 3986's path and query characters (no fragment, nothing a parser might read otherwise),
#: HTTP/1.1.
_REQUEST_LINE = re.compile(rb"(GET|HEAD) (/programs/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*) HTTP/1\.1")
#: Headers that mean the request is not one the fast path takes.
_HAND_OVER_HEADERS = frozenset({"content-length", "transfer-encoding", "upgrade", "expect"})


@dataclass(frozen=True, slots=True)
class Plan:
    """A request the fast path will serve: where it goes and what to send."""

    method: str
    route: ProxyRoute
    endpoint: WatcherEndpoint
    #: The request head for the program, ready to send.
    upstream_head: bytes
    #: The caller's Authorization value ("" without tokens), for the open-stream registry.
    authorization: str


@dataclass(frozen=True, slots=True)
class UnknownToken:
    """A request the fast path could serve once the core said who its token stands for."""

    authorization: str


class FastPath:
    """Decides which requests it serves, and serves them."""

    def __init__(
        self,
        proxy: WatcherProxy,
        cache: ProgramCache,
        principals: Principals | None,
        endpoint_of: EndpointOf,
        read_timeout: float,
        record: Callable[[int, float], None],
    ) -> None:
        self._proxy = proxy
        self._cache = cache
        self._principals = principals
        self._endpoint_of = endpoint_of
        self._read_timeout = read_timeout
        self.record = record
        self._drop = proxy.request_drop
        self.pool = UpstreamPool()
        #: Requests the fast path answered itself (the rest went to aiohttp's handler).
        self.served = 0

    def plan(self, head: bytes, peer: str) -> Plan | ApiError | UnknownToken | None:
        """The plan for a request head; an error to answer; a token to learn first (then
        plan again); or None: aiohttp answers it."""
        lines = head.split(b"\r\n")
        request_line = _REQUEST_LINE.fullmatch(lines[0])
        if request_line is None or len(lines) > MAX_HEADERS + 1:
            return None
        headers: list[tuple[str, str]] = []
        host = authorization = None
        listed: set[str] = set()
        for line in lines[1:]:
            if _HEADER_LINE.fullmatch(line) is None:
                return None  # obs-fold, bare CR or LF, non-ASCII, a bad name: aiohttp's call
            name, _, value = line.decode("ascii").partition(":")
            value = value.strip(" \t")
            lowered = name.lower()
            if lowered in _HAND_OVER_HEADERS:
                return None
            if lowered == "host":
                if host is not None:
                    return None
                host = value
            elif lowered == "authorization":
                if authorization is not None:
                    return None
                authorization = value
            elif lowered == "connection":
                tokens = {token.strip().lower() for token in value.split(",")}
                if "close" in tokens or "upgrade" in tokens:
                    return None
                listed |= tokens
            headers.append((name, value))
        if host is None:
            return None
        try:
            route = parse_route(request_line[2].decode("ascii"))
        except ApiError:
            return None
        principal = None
        if self._principals is not None:
            if authorization is None or not authorization.isprintable():
                return None
            principal = self._principals.cached(token_key((("authorization", authorization),)))
            if principal is None:
                return UnknownToken(authorization)
        target = self._cache.get(route.program_id)
        if target is None or (principal is not None and not principal.sees(target.user_id)):
            owner = principal.user_id if principal else ADMIN_USER
            target = self._cache.named(owner, route.program_id)
        if (
            target is None
            or target.state != pb.STATE_READY
            or (principal is not None and not principal.sees(target.user_id))
        ):
            return None
        try:
            endpoint = target_endpoint(target, self._endpoint_of)  # the runtime is asked once
        except ApiError as error:
            return error
        method = request_line[1].decode("ascii")
        path = route.path + ("?" + route.query if route.query else "")
        out = [f"{method} {path} HTTP/1.1", f"Host: {_authority(endpoint)}"]
        out += [
            f"{name}: {value}"
            for name, value in headers
            if (lowered := name.lower()) not in self._drop and lowered not in listed
        ]
        out += [
            f"X-Forwarded-For: {peer}",
            "X-Forwarded-Proto: http",
            f"X-Forwarded-Host: {host}",
            f"X-Forwarded-Prefix: {route.prefix}",
            "\r\n",
        ]
        return Plan(method, route, endpoint, "\r\n".join(out).encode(), authorization or "")

    async def learn(self, token: UnknownToken) -> bool:
        """Asks the core who the token stands for (cached); False if it will not say."""
        assert self._principals is not None
        try:
            await self._principals.resolve_metadata((("authorization", token.authorization),))
        except Exception:  # refused, or the core is away: aiohttp's path answers as it would
            return False
        return True

    async def serve(self, plan: Plan, front: FrontProtocol) -> bool:
        """Answers one request; whether the client's connection may take another."""
        started = time.perf_counter()
        self.served += 1
        status = 500
        upstream: ResponseHandler | None = None
        reusable = False

        def cut() -> None:
            front.close()
            if upstream is not None:
                upstream.close()

        stream = self._proxy.opened_with(plan.authorization, cut)
        try:
            try:
                for attempt in (1, 2):
                    upstream, reused = await self.pool.acquire(plan.endpoint)
                    upstream.set_response_params(
                        skip_payload=plan.method == "HEAD",
                        read_until_eof=True,
                        auto_decompress=False,
                        read_timeout=self._read_timeout,
                        read_bufsize=READ_BUFFER_BYTES,
                    )
                    assert upstream.transport is not None
                    upstream.transport.write(plan.upstream_head)
                    upstream.start_timeout()
                    try:
                        message, payload = await upstream.read()
                        break
                    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                        # A kept-alive connection the program closed meanwhile: once more,
                        # on a new one (GET and HEAD are idempotent), as aiohttp's client.
                        upstream.close()
                        if not reused or attempt == 2 or stream.revoked:
                            raise
            except HttpProcessingError as error:  # a malformed answer: the program's fault
                status = 502
                front.send_error(_unreachable(error))
                return not stream.revoked
            except aiohttp.SocketTimeoutError:
                status = 504
                front.send_error(
                    ApiError(
                        504, "WATCHER_TIMEOUT", "the program's WatcherAPI did not answer in time"
                    )
                )
                return not stream.revoked
            except (OSError, TimeoutError, aiohttp.ClientError) as error:
                status = 502
                front.send_error(_unreachable(error))
                return not stream.revoked
            status = message.code
            reusable = await self._relay(plan, front, message, payload, stream)
            return reusable
        finally:
            self._proxy.closed(stream)
            if upstream is not None:
                if reusable and not upstream.should_close and not stream.revoked:
                    self.pool.release(plan.endpoint, upstream)
                else:
                    upstream.close()
            self.record(status, time.perf_counter() - started)

    async def _relay(
        self,
        plan: Plan,
        front: FrontProtocol,
        message: Any,
        payload: aiohttp.StreamReader,
        stream: OpenStream,
    ) -> bool:
        """The program's response to the client; whether both connections may be reused."""
        listed: set[str] = set()
        for value in message.headers.getall("Connection", ()):
            listed.update(name.strip().lower() for name in value.split(","))
        out = [f"HTTP/1.1 {message.code} {message.reason}"]
        has_date = has_server = has_type = False
        length: int | None = None
        for name, value in message.headers.items():
            lowered = name.lower()
            if lowered in HOP_BY_HOP or lowered in listed:
                continue
            if lowered == "location":
                value = _rewrite_location(value, plan.route, plan.endpoint)
            elif lowered == "content-length":
                length = int(value)
            elif lowered == "date":
                has_date = True
            elif lowered == "server":
                has_server = True
            elif lowered == "content-type":
                has_type = True
            out.append(f"{name}: {value}")
        no_body = plan.method == "HEAD" or message.code in _NO_BODY_STATUSES
        chunked = length is None and not no_body
        if chunked:
            out.append("Transfer-Encoding: chunked")
        if not no_body and length != 0 and not has_type:
            out.append("Content-Type: application/octet-stream")  # as aiohttp's prepare()
        if not has_date:
            out.append(f"Date: {rfc822_formatted_time()}")
        if not has_server:
            out.append(f"Server: {SERVER_SOFTWARE}")
        out.append("\r\n")
        head = "\r\n".join(out).encode("utf-8", "surrogateescape")
        if no_body:
            front.write(head)
            return True
        pending = head  # sent with the first bytes of the body, in one send
        try:
            while True:
                try:
                    chunk = await payload.readany()
                except (aiohttp.ClientError, OSError):  # timeouts and resets included
                    if stream.revoked:
                        log.info(
                            "program %s: proxied response cut: token revoked",
                            plan.route.program_id,
                        )
                    else:
                        log.info(
                            "program %s: WatcherAPI broke off a response", plan.route.program_id
                        )
                    if pending:
                        front.write(pending)
                    front.close()  # truncated: the client must not see it as complete
                    return False
                if not chunk:
                    break
                if chunked:
                    chunk = b"%x\r\n%b\r\n" % (len(chunk), chunk)
                front.write(pending + chunk if pending else chunk)
                pending = b""
                await front.drained()
            tail = b"0\r\n\r\n" if chunked else b""
            if pending or tail:
                front.write(pending + tail)
        except ConnectionResetError:
            return False
        return not payload.exception()


def _authority(endpoint: WatcherEndpoint) -> str:
    # What the aiohttp client sends as Host: the port left out when it is 80.
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    return host if endpoint.port == 80 else f"{host}:{endpoint.port}"


def _rewrite_location(location: str, route: ProxyRoute, endpoint: WatcherEndpoint) -> str:
    origin = f"http://{_authority(endpoint)}"
    if location.startswith(origin + "/"):
        location = location[len(origin) :]
    if location.startswith("/") and not location.startswith("//"):
        return route.prefix + location
    return location


def _unreachable(error: BaseException) -> ApiError:
    from hershy.entrypoints.rest.proxy import _unreachable as unreachable

    return unreachable(error if isinstance(error, Exception) else Exception(str(error)))


class UpstreamPool:
    """Idle keep-alive connections to programs, at most IDLE_PER_PROGRAM per address."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[tuple[float, ResponseHandler]]] = {}
        self._idle_count = 0
        #: Connections made so far (the rest of the requests reused one).
        self.opened = 0

    async def acquire(self, endpoint: WatcherEndpoint) -> tuple[ResponseHandler, bool]:
        """A connection to the program, and whether it was kept alive from before."""
        key = (endpoint.host, endpoint.port)
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            since, protocol = idle.pop()
            self._idle_count -= 1
            if protocol.is_connected() and now - since < UPSTREAM_KEEPALIVE_SECONDS:
                return protocol, True
            protocol.close()
        loop = asyncio.get_running_loop()
        self.opened += 1
        async with asyncio.timeout(CONNECT_SECONDS):
            _, protocol = await loop.create_connection(
                lambda: ResponseHandler(loop), endpoint.host, endpoint.port
            )
        return protocol, False

    def release(self, endpoint: WatcherEndpoint, protocol: ResponseHandler) -> None:
        idle = self._idle.setdefault((endpoint.host, endpoint.port), [])
        full = len(idle) >= IDLE_PER_PROGRAM or self._idle_count >= IDLE_TOTAL
        if full or not protocol.is_connected():
            protocol.close()
            return
        idle.append((time.monotonic(), protocol))
        self._idle_count += 1

    def close(self) -> None:
        for idle in self._idle.values():
            for _, protocol in idle:
                protocol.close()
        self._idle.clear()
        self._idle_count = 0


class FrontProtocol(asyncio.Protocol):
    """A client connection: proxied requests served here until one is not, then aiohttp's."""

    def __init__(self, fast: FastPath, server: web.Server, fronts: weakref.WeakSet[Any]) -> None:
        self._fast = fast
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._task: asyncio.Task[None] | None = None
        self._peer = ""
        self._paused_reading = False
        self._writable: asyncio.Future[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        #: The current request's token was learned already (asked once, not twice).
        self._learned = False
        fronts.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport instances, but are ones).
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else ""
        self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._task is None:
            self._next()
        elif len(self._buffer) > MAX_HEAD_BYTES and not self._paused_reading:
            assert self._transport is not None
            self._transport.pause_reading()  # a pipelining client waits for its answer
            self._paused_reading = True

    def _next(self) -> None:
        if not self._buffer:
            self._arm_idle_timer()
            return
        end = self._buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES + 4)
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                self._hand_over()
            return
        plan = self._fast.plan(self._buffer[:end], self._peer)
        if plan is None:
            self._hand_over()
            return
        if isinstance(plan, UnknownToken):
            if self._learned:  # asked already for this request: aiohttp's turn
                self._hand_over()
                return
            self._task = asyncio.get_running_loop().create_task(self._learn(plan))
            return
        self._learned = False
        self._buffer = self._buffer[end + 4 :]
        if isinstance(plan, ApiError):
            self.send_error(plan)
            self._fast.record(plan.status, 0.0)
            self._next()
            return
        self._task = asyncio.get_running_loop().create_task(self._serve(plan))

    async def _learn(self, token: UnknownToken) -> None:
        known = await self._fast.learn(token)
        self._task = None
        if self._transport is None or self._transport.is_closing():
            return
        if not known:
            self._hand_over()
            return
        self._learned = True
        self._next()

    async def _serve(self, plan: Plan) -> None:
        try:
            keep = await self._fast.serve(plan, self)
        except Exception:
            log.exception("proxying %s failed", plan.route.path)
            keep = False
        self._task = None
        if not keep or self._transport is None or self._transport.is_closing():
            self.close()
            return
        if self._paused_reading:
            self._paused_reading = False
            self._transport.resume_reading()
        self._next()

    def _hand_over(self) -> None:
        """This connection is aiohttp's from now on, with what it sent so far."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        handler = self._server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._paused_reading:
            self._paused_reading = False
            transport.resume_reading()
        buffered, self._buffer = self._buffer, b""
        self._transport = None
        if buffered:
            handler.data_received(buffered)

    def _arm_idle_timer(self) -> None:
        # One timer per connection, moved on lazily: not a new one per request.
        self._idle_since = time.monotonic()
        if self._idle_timer is None:
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(CLIENT_KEEPALIVE_SECONDS, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self._task is not None:  # busy: look again a full period later
            self._arm_idle_timer()
            return
        left = self._idle_since + CLIENT_KEEPALIVE_SECONDS - time.monotonic()
        if left <= 0:
            self.close()
        else:
            self._idle_timer = asyncio.get_running_loop().call_later(left, self._idle_check)

    @property
    def busy(self) -> asyncio.Task[None] | None:
        """The request being answered, if any."""
        return self._task

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def send_error(self, error: ApiError) -> None:
        body = json.dumps(error.body(), separators=(",", ":")).encode()
        head = (
            f"HTTP/1.1 {error.status} {_REASONS.get(error.status, 'Error')}\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nDate: {rfc822_formatted_time()}\r\n"
            f"Server: {SERVER_SOFTWARE}\r\n\r\n"
        )
        self.write(head.encode() + body)

    async def drained(self) -> None:
        if self._writable is not None:
            await self._writable

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None:
            if not self._writable.done():
                self._writable.set_result(None)
            self._writable = None

    def close(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._transport = None
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(ConnectionResetError("the client went away"))
            self._writable.exception()  # retrieved here if nobody waits for it
        if self._task is not None:
            self._task.cancel()


_REASONS = {502: "Bad Gateway", 504: "Gateway Timeout"}
