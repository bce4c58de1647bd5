"""A measuring stick, not a proxy to ship: the least a Python HTTP/1.1 forwarder can cost here.

    python3 benchmarks/raw_forwarder.py LISTEN_PORT BACKEND_PORT

proxy_bench.py runs it as its "raw" path, to answer "if aiohttp cannot get
there, what can": asyncio Protocols on uvloop (when installed), requests
parsed by aiohttp's llhttp parser (C), one keep-alive connection to the program
per client connection (reused while the client's stays open), the hop-by-hop
headers dropped and X-Forwarded-* set as the real proxy does, responses
framed by Content-Length and passed on as they arrive (no copy into a
response object). What it leaves out, that the real proxy must do: the route
and token checks (a dict lookup each, cached), chunked and close-delimited
responses, request bodies, WebSocket, timeouts, revocation cuts, metrics. So
its CPU per request is a floor for any asyncio design, not a figure for one.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiohttp.http_parser import HttpRequestParser

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"authorization",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-forwarded-prefix",
    }
)


class Upstream(asyncio.Protocol):
    """The program's side: passes each response to the client as it arrives."""

    def __init__(self, downstream: Downstream) -> None:
        self.downstream = downstream
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.remaining = -1  # body bytes still to pass on; -1 while reading the head

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        out = self.downstream.transport
        if self.remaining < 0:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.buffer[: end + 4], self.buffer[end + 4 :]
            self.buffer = b""
            lines = head.split(b"\r\n")
            kept = [lines[0]]
            length = 0
            for line in lines[1:-2]:
                name, _, value = line.partition(b":")
                lowered = name.lower()
                if lowered == b"content-length":
                    length = int(value)
                if lowered not in HOP_BY_HOP:
                    kept.append(line)
            kept.append(b"\r\n")
            out.write(b"\r\n".join(kept))
            self.remaining = length
        if data:
            self.remaining -= len(data)
            out.write(data)
        if self.remaining == 0:
            self.remaining = -1
            self.downstream.response_done()

    def connection_lost(self, exc: Exception | None) -> None:
        self.downstream.upstream = None
        if self.downstream.transport is not None:
            self.downstream.transport.close()


class Downstream(asyncio.Protocol):
    """The client's side: parses requests (llhttp) and sends them on."""

    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.transport: Any = None
        self.upstream: Upstream | None = None
        self.queue: list[bytes] = []
        self.busy = False
        self.connecting: asyncio.Future[None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        loop = asyncio.get_running_loop()
        self.parser = HttpRequestParser(self, loop, 2**16)  # type: ignore[arg-type]
        self.peer = transport.get_extra_info("peername")[0].encode()

    def data_received(self, data: bytes) -> None:
        messages, _, _ = self.parser.feed_data(data)
        for message, _payload in messages:
            head = [f"{message.method} {message.path} HTTP/1.1".encode()]
            for name, value in message.raw_headers:
                if name.lower() not in HOP_BY_HOP:
                    head.append(name + b": " + value)
            head.append(b"Host: 127.0.0.1:%d" % self.backend_port)
            head.append(b"X-Forwarded-For: " + self.peer)
            head.append(b"X-Forwarded-Proto: http")
            head.append(b"\r\n")
            self.queue.append(b"\r\n".join(head))
        self.pump()

    def pump(self) -> None:
        if self.busy or not self.queue:
            return
        self.busy = True
        request = self.queue.pop(0)
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.write(request)
            return
        self.connecting = asyncio.ensure_future(self.connect(request))

    async def connect(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, self.upstream = await loop.create_connection(
            lambda: Upstream(self), "127.0.0.1", self.backend_port
        )
        assert self.upstream.transport is not None
        self.upstream.transport.write(request)

    def response_done(self) -> None:
        self.busy = False
        self.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def serve(port: int, backend_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Downstream(backend_port), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    port, backend_port = int(sys.argv[1]), int(sys.argv[2])
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(port, backend_port))
    else:
        uvloop.run(serve(port, backend_port))


if __name__ == "__main__":
    main()
