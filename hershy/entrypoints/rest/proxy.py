"""The reverse proxy `/programs/{id}/proxy/*` and `/programs/{id}/watcher/*`.

`/programs/{id}/proxy/<any path>` forwards `/<any path>` (the original's
prefix: `proxy_url` points there, so `${proxy_url}/watcher/status` works);
`/programs/{id}/watcher/...` forwards `/watcher/...`. Either goes to one place
only: the program's WatcherAPI, at the address its runtime reported, and only
if the runtime says that address is one it hands out (`watcher_endpoint`, the
runtime port's rule: the Docker runtime's are loopback WatcherAPI ports).
Nothing the client sends
(the Host header, an absolute request target, dot segments, encoded slashes)
takes part in choosing where a request goes; the path is checked on its raw,
still-encoded form, because that is what the program's server will decode.

A proxied response or WebSocket lasts as long as the token it was opened
with: when the core revokes the token (it tells the shim at once, and the
proxy also asks the core again every few seconds, in case a word was missed)
the connection is cut, with nothing more passed on.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import aiohttp
import grpc
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from hershy.domain.auth import ADMIN_USER
from hershy.domain.validation import cut
from hershy.entrypoints.rest.auth import Metadata, Principals, credentials, token_key
from hershy.entrypoints.rest.cache import ProgramCache, Target
from hershy.entrypoints.rest.errors import ApiError, bad_request, state_label
from hershy.entrypoints.rest.shapes import not_ready, program_name
from hershy.service.ports import WatcherEndpoint
from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from hershy.v1 import token_pb2
from hershy.v1 import token_pb2_grpc as token_grpc

log = logging.getLogger(__name__)

#: Where the proxy connects for a program's address (the runtime's `watcher_endpoint`):
#: None for an address the runtime never hands out, which the proxy refuses, so even a
#: corrupted registry cannot turn it into a way to reach the Host's own services.
EndpointOf = Callable[[str], WatcherEndpoint | None]

#: The proxy routes, matched on the raw request target.
_ROUTE = re.compile(
    r"/programs/(?P<id>[^/?#]*)"
    r"(?:(?P<alias>/proxy)(?P<any>/[^?#]*)?|(?P<path>/watcher(?:/[^?#]*)?))"
    r"(?:\?(?P<query>[^#]*))?(?:#.*)?"
)
#: `http://authority` at the start of an absolute-form request target.
_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")

#: RFC 9110 7.6.1: headers for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: Also dropped from requests: set by the proxy itself (a client must not forge them),
#: or answered by the proxy already (Expect: 100-continue).
_REQUEST_ONLY = frozenset(
    {
        "host",
        "expect",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-prefix",
        "x-real-ip",
    }
)
#: A WebSocket handshake is made anew by the proxy's client, with its own key.
_WEBSOCKET_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)
#: Statuses whose responses have no body (as HEAD's have none).
_NO_BODY_STATUSES = frozenset({204, 304})
#: Headers aiohttp's client would add by itself; forward only what the client sent.
_SKIP_AUTO_HEADERS = ("Accept-Encoding", "User-Agent", "Content-Type")
#: How much of a body is read at a time, each way (the stream pauses at twice this).
READ_BUFFER_BYTES = 256 * 1024
#: The largest WebSocket message relayed (either way).
MAX_WEBSOCKET_MESSAGE = 16 * 1024 * 1024
#: Close codes that must not be sent in a close frame (RFC 6455 7.4.1).
_RESERVED_CLOSE_CODES = frozenset({1005, 1006, 1015})


#: The close code of a WebSocket cut because its token was revoked (policy violation).
REVOKED_CLOSE_CODE = aiohttp.WSCloseCode.POLICY_VIOLATION
#: How often the proxy asks the core whether the tokens of open streams still hold.
RECHECK_SECONDS = 1.0


@dataclass(eq=False)
class OpenStream:
    """A proxied response or WebSocket in progress, and how to cut it."""

    #: The caller's credentials, kept only while the request runs (to ask the core again).
    metadata: Metadata
    #: The token's key (auth.token_key).
    key: str
    cut: Callable[[], None]
    revoked: bool = field(default=False)

    def revoke(self) -> None:
        if not self.revoked:
            self.revoked = True
            self.cut()


@dataclass(frozen=True, slots=True)
class ProxyRoute:
    program_id: str
    #: What the proxy strips: `/programs/{id}` (or `/programs/{id}/proxy`).
    prefix: str
    #: The program's path (`/watcher...`, or any under `/proxy`), still percent-encoded.
    path: str
    query: str


def parse_route(raw_target: str) -> ProxyRoute:
    """The program and the upstream path of a raw request target, or 400/404."""
    absolute = _ABSOLUTE_FORM.match(raw_target)
    if absolute:  # `GET http://elsewhere/programs/...`: the authority is ignored
        raw_target = raw_target[absolute.end() :] or "/"
    match = _ROUTE.fullmatch(raw_target)
    if match is None:
        raise ApiError(404, "NOT_FOUND", "no such route: see /openapi.json")
    program_id = match["id"]
    program_name(program_id)  # 400 unless a well-formed id (no escapes, no dots)
    path = match["path"] if match["alias"] is None else (match["any"] or "/")
    for segment in path.split("/"):
        lowered = segment.lower()
        if "%2f" in lowered or "%5c" in lowered or "\\" in segment:
            raise bad_request("path", "must not contain encoded slashes or backslashes")
        if "%00" in lowered:
            raise bad_request("path", "must not contain NUL")
        if unquote(segment) in (".", ".."):
            raise bad_request("path", "must not contain '.' or '..' segments")
    prefix = f"/programs/{program_id}" + (match["alias"] or "")
    return ProxyRoute(program_id, prefix, path, match["query"] or "")


def target_endpoint(target: Target, endpoint_of: EndpointOf) -> WatcherEndpoint:
    """Where the program's WatcherAPI is; 502 when the runtime does not own the address."""
    endpoint = endpoint_of(target.proxy_target)
    if endpoint is None:
        log.error("refusing to proxy to %r: not a WatcherAPI address", target.proxy_target)
        raise ApiError(502, "BAD_PROXY_TARGET", "the program has no valid WatcherAPI address")
    return endpoint


def _is_websocket(request: web.Request) -> bool:
    return (
        request.method == "GET"
        and request.headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in request.headers.get("Connection", "").lower()
    )


def _connection_listed(headers: Any) -> set[str]:
    """Header names a Connection header marks as hop-by-hop too."""
    names: set[str] = set()
    for value in headers.getall("Connection", ()):
        names.update(name.strip().lower() for name in value.split(","))
    return names


class WatcherProxy:
    def __init__(
        self,
        cache: ProgramCache,
        stub: pb_grpc.ProgramServiceAsyncStub,
        principals: Principals | None,
        endpoint_of: EndpointOf,
    ) -> None:
        """`principals`: None when the Host runs without tokens (--no-auth)."""
        self._endpoint_of = endpoint_of
        self._cache = cache
        self._stub = stub
        self._principals = principals
        # The token is the Host's, spent on getting here: the program never sees it.
        self._drop = HOP_BY_HOP | _REQUEST_ONLY | frozenset({"authorization"} if principals else ())
        self._session: aiohttp.ClientSession | None = None
        self._websockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
        #: Open streams by their token's key (auth.token_key).
        self._open: dict[str, set[OpenStream]] = {}

    def revoked(self, key: str) -> None:
        """The token with this key was revoked: cut every stream it opened, now."""
        if self._principals is not None:
            self._principals.forget(key)
        for stream in self._open.pop(key, set()):
            stream.revoke()

    @property
    def open_streams(self) -> int:
        return sum(map(len, self._open.values()))

    @property
    def request_drop(self) -> frozenset[str]:
        """The request headers never forwarded (lower case)."""
        return self._drop

    def _opened(self, request: web.Request, cut: Callable[[], None]) -> OpenStream:
        metadata = credentials(request) if self._principals is not None else ()
        return self._register(metadata, cut)

    def opened_with(self, authorization: str, cut: Callable[[], None]) -> OpenStream:
        """A stream opened with this Authorization value ("": none, or no tokens)."""
        metadata = (("authorization", authorization),) if self._principals and authorization else ()
        return self._register(metadata, cut)

    def _register(self, metadata: Metadata, cut: Callable[[], None]) -> OpenStream:
        stream = OpenStream(metadata, token_key(metadata) if metadata else "", cut)
        if metadata:
            self._open.setdefault(stream.key, set()).add(stream)
        return stream

    def closed(self, stream: OpenStream) -> None:
        self._closed(stream)

    def _closed(self, stream: OpenStream) -> None:
        streams = self._open.get(stream.key)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._open[stream.key]

    async def recheck_forever(
        self, tokens: token_grpc.TokenServiceAsyncStub, every: float = RECHECK_SECONDS
    ) -> None:
        """The backstop: ask the core whether each open stream's token still holds."""
        while True:
            await asyncio.sleep(every)
            for key, streams in list(self._open.items()):
                if not streams:
                    continue
                metadata = next(iter(streams)).metadata
                try:
                    await tokens.GetCurrentToken(
                        token_pb2.GetCurrentTokenRequest(), metadata=metadata, timeout=5
                    )
                except grpc.aio.AioRpcError as error:
                    # Only a refusal ends streams: a core that is down proves nothing.
                    if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                        log.info("ending %d proxied streams: their token was revoked", len(streams))
                        self.revoked(key)

    async def start(self, read_timeout: float) -> None:
        self._session = aiohttp.ClientSession(
            # Bodies pass through as the program sent them, compressed or not.
            auto_decompress=False,
            # No total: a healthy long stream (logs, SSE, a WebSocket) may last for hours.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=read_timeout),
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            # One session serves every user: it must never keep one's cookies for another.
            cookie_jar=aiohttp.DummyCookieJar(),
            # HTTP_PROXY and friends must not redirect traffic meant for a program.
            trust_env=False,
            # Bigger reads, fewer trips through the event loop for big bodies.
            read_bufsize=READ_BUFFER_BYTES,
            # Forward only what the client sent (set once here: per request it costs).
            skip_auto_headers=_SKIP_AUTO_HEADERS,
        )

    async def close_websockets(self) -> None:
        """On shutdown: WebSockets never end by themselves, so they are told to (1001)."""
        for websocket in list(self._websockets):
            await websocket.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"Host shutdown")

    async def close(self) -> None:
        """Once no request runs any more."""
        await self.close_websockets()
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        route = parse_route(request.raw_path)
        target = await self._ready_target(request, route.program_id)
        endpoint = target_endpoint(target, self._endpoint_of)
        url = URL.build(
            scheme="http",
            host=endpoint.host,
            port=endpoint.port,
            path=route.path,
            query_string=route.query,
            encoded=True,
        )
        if _is_websocket(request):
            return await self._websocket(request, route, url)
        return await self._http(request, route, url)

    async def _ready_target(self, request: web.Request, program_id: str) -> Target:
        """The program's target if it is Ready and the caller's: from the cache, if it can.

        The core is asked (GetProgram) only when the cache does not say "Ready
        and yours": the cache trails the core by a moment, so a program that
        just became Ready is confirmed instead of refused. GetProgram runs with
        the caller's token, and the core answers 404 for a program the caller
        may not see, as for one that does not exist.
        """
        principal = await self._principals.resolve(request) if self._principals else None
        target = self._cache.get(program_id)
        if target is None or (principal is not None and not principal.sees(target.user_id)):
            # Not an id the caller may reach: the caller's own program of that name, if any
            # (the core's resolver in the same order; without tokens the caller is the admin).
            target = self._cache.named(principal.user_id if principal else ADMIN_USER, program_id)
        if (
            target is None
            or target.state != pb.STATE_READY
            or (principal is not None and not principal.sees(target.user_id))
        ):
            program = await self._stub.GetProgram(
                pb.GetProgramRequest(name=program_name(program_id)),
                metadata=credentials(request),
                timeout=10,
            )
            target = self._cache.observe(program)
        if target.state != pb.STATE_READY:
            raise not_ready(state_label(target.state))
        return target

    def _upstream_headers(
        self, request: web.Request, route: ProxyRoute, drop: frozenset[str]
    ) -> CIMultiDict[str]:
        listed = _connection_listed(request.headers)
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in request.headers.items():
            lowered = name.lower()
            if lowered not in drop and lowered not in listed:
                headers.add(name, value)
        headers["X-Forwarded-For"] = request.remote or ""
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = request.headers.get("Host", request.host)
        headers["X-Forwarded-Prefix"] = route.prefix
        return headers

    async def _http(self, request: web.Request, route: ProxyRoute, url: URL) -> web.StreamResponse:
        assert self._session is not None, "start() first"
        headers = self._upstream_headers(request, route, self._drop)
        try:
            upstream = await self._session.request(
                request.method,
                url,
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
            )
        except aiohttp.SocketTimeoutError:
            raise ApiError(
                504, "WATCHER_TIMEOUT", "the program's WatcherAPI did not answer in time"
            ) from None
        except (
            aiohttp.ClientConnectionError,
            aiohttp.ClientPayloadError,
            # A malformed answer: a huge header, too many, Content-Length with
            # Transfer-Encoding, no HTTP at all. The program's fault, not the Host's.
            aiohttp.ClientResponseError,
        ) as error:
            raise _unreachable(error) from None
        transport = request.transport

        def cut() -> None:
            # The client's side first, so not one more byte reaches it; then the
            # program's, so a silent upstream does not hold the connection.
            if transport is not None:
                transport.close()
            upstream.close()

        stream = self._opened(request, cut)
        try:
            return await self._relay_response(request, route, url, upstream, stream)
        finally:
            self._closed(stream)

    async def _relay_response(
        self,
        request: web.Request,
        route: ProxyRoute,
        url: URL,
        upstream: aiohttp.ClientResponse,
        stream: OpenStream,
    ) -> web.StreamResponse:
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            if upstream.content_length:
                # A body of known length: the headers go out with its first bytes, in one
                # send (as aiohttp's own Response does). A stream of unknown length gets
                # its headers at once: its first bytes may be a long time coming.
                response._send_headers_immediately = False
            listed = _connection_listed(upstream.headers)
            for name, value in upstream.headers.items():
                lowered = name.lower()
                if lowered not in HOP_BY_HOP and lowered not in listed:
                    response.headers.add(name, value)
            if "Location" in response.headers:
                response.headers["Location"] = _rewrite_location(
                    response.headers["Location"], route, url
                )
            await response.prepare(request)
            if request.method == "HEAD" or upstream.status in _NO_BODY_STATUSES:
                await response.write_eof()
                return response
            try:
                await _copy_body(upstream, response)
            except ConnectionResetError:
                pass  # the client went away; leaving the block drops the upstream connection
            except _UpstreamBrokeOff:
                if stream.revoked:
                    log.info("program %s: proxied response cut: token revoked", route.program_id)
                    return response
                # The status is sent already: cut the connection so the client
                # sees a truncated body instead of a complete-looking one.
                log.info("program %s: WatcherAPI broke off a response", route.program_id)
                if request.transport is not None:
                    request.transport.close()
            return response

    async def _websocket(
        self, request: web.Request, route: ProxyRoute, url: URL
    ) -> web.StreamResponse:
        assert self._session is not None, "start() first"
        headers = self._upstream_headers(request, route, self._drop | _WEBSOCKET_HANDSHAKE)
        protocols = [
            protocol.strip()
            for protocol in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if protocol.strip()
        ]
        try:
            upstream = await self._session.ws_connect(
                url,
                headers=headers,
                protocols=protocols,
                max_msg_size=MAX_WEBSOCKET_MESSAGE,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
            )
        except aiohttp.WSServerHandshakeError as error:
            raise ApiError(
                502,
                "WATCHER_REFUSED_WEBSOCKET",
                f"the program's WatcherAPI refused the WebSocket upgrade ({error.status})",
            ) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientResponseError, TimeoutError) as error:
            raise _unreachable(error) from None
        async with upstream:
            downstream = web.WebSocketResponse(
                protocols=(upstream.protocol,) if upstream.protocol else (),
                max_msg_size=MAX_WEBSOCKET_MESSAGE,
            )
            await downstream.prepare(request)
            self._websockets.add(downstream)
            revoked = asyncio.Event()
            stream = self._opened(request, revoked.set)
            try:
                await _relay(downstream, upstream, revoked)
            finally:
                self._closed(stream)
        return downstream


class _UpstreamBrokeOff(Exception):
    """The WatcherAPI's response ended before its end."""


async def _copy_body(upstream: aiohttp.ClientResponse, response: web.StreamResponse) -> None:
    """Chunks as they come; upstream failures raise _UpstreamBrokeOff, client ones pass through."""
    while True:
        try:
            chunk = await upstream.content.readany()
        except (aiohttp.ClientError, OSError) as error:  # includes timeouts and resets
            raise _UpstreamBrokeOff from error
        if not chunk:
            break
        await response.write(chunk)
    await response.write_eof()


async def _pipe(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    revoked: asyncio.Event,
) -> None:
    """Messages from one side to the other until the source closes (pings answer themselves)."""
    async for message in source:
        if revoked.is_set():
            return  # not one message more on a revoked token's connection
        if message.type == aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)


async def _relay(
    downstream: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    revoked: asyncio.Event,
) -> None:
    """Both directions at once; when one side closes, the other is closed with its code.

    When the token is revoked both sides are closed, the client's with 1008.
    """
    to_upstream = asyncio.ensure_future(_pipe(downstream, upstream, revoked))
    to_downstream = asyncio.ensure_future(_pipe(upstream, downstream, revoked))
    revocation = asyncio.ensure_future(revoked.wait())
    try:
        done, _ = await asyncio.wait(
            (to_upstream, to_downstream, revocation), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in (to_upstream, to_downstream, revocation):
            task.cancel()
        await asyncio.gather(to_upstream, to_downstream, revocation, return_exceptions=True)
    if revoked.is_set():
        await downstream.close(code=REVOKED_CLOSE_CODE, message=b"token revoked")
        await upstream.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        return
    closed, other = (downstream, upstream) if to_upstream in done else (upstream, downstream)
    code = closed.close_code
    if code is None or code in _RESERVED_CLOSE_CODES:
        code = aiohttp.WSCloseCode.INTERNAL_ERROR if closed is upstream else 1000
    await other.close(code=code)


def _rewrite_location(location: str, route: ProxyRoute, url: URL) -> str:
    """A redirect to the program's own paths, made to point through the proxy."""
    origin = f"http://{url.raw_authority}"
    if location.startswith(origin + "/"):
        location = location[len(origin) :]
    if location.startswith("/") and not location.startswith("//"):
        return route.prefix + location
    return location


def _unreachable(error: Exception) -> ApiError:
    # One line, bounded: the text may quote whatever bytes the program sent.
    log.info("WatcherAPI unreachable: %s: %s", type(error).__name__, cut(str(error), 200))
    return ApiError(502, "WATCHER_UNREACHABLE", "the program's WatcherAPI does not answer")
