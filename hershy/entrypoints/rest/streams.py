"""gRPC server streams as HTTP streams: Watch as Server-Sent Events, logs as NDJSON.

An HTTP status can only be chosen before the first byte of the body, so a
stream is answered once its first message arrives, or the call fails (then
with the mapped error status), or a short grace passes with neither: the
core refuses a bad Watch or log request at once, so silence means accepted.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import grpc
from aiohttp import web

from hershy.entrypoints.rest.errors import dumps, from_rpc_error

Message = TypeVar("Message")

#: How long a stream may stay silent before it counts as accepted.
ACCEPT_GRACE_SECONDS = 0.2


class Tick(enum.Enum):
    """No message within the wait: time for a heartbeat."""

    TICK = "tick"


class End(enum.Enum):
    """The stream is over: the core ended it, or the shim is shutting down."""

    END = "end"


class StreamPump(Generic[Message]):
    """Reads a gRPC server stream one message at a time, racing timeouts and shutdown."""

    def __init__(
        self, call: grpc.aio.UnaryStreamCall[Any, Message], closing: asyncio.Event
    ) -> None:
        self._call = call
        self._read: asyncio.Future[Any] | None = None
        self._closing = asyncio.ensure_future(closing.wait())

    async def next(self, wait: float | None) -> Message | Tick | End:
        """The next message, TICK after `wait` seconds without one, or END.

        Raises grpc.aio.AioRpcError when the call fails.
        """
        if self._read is None:
            self._read = asyncio.ensure_future(self._call.read())
        done, _ = await asyncio.wait(
            (self._read, self._closing), timeout=wait, return_when=asyncio.FIRST_COMPLETED
        )
        if self._read in done:
            read, self._read = self._read, None
            message = read.result()
            return End.END if message is grpc.aio.EOF else message
        if self._closing in done:
            return End.END
        return Tick.TICK

    async def first(self) -> Message | Tick | End:
        """The first message, within the grace (TICK: accepted but silent so far).

        Raises ApiError, mapped from the call's status, when the core refused it.
        """
        try:
            return await self.next(ACCEPT_GRACE_SECONDS)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, out_of_range_status=410) from None

    def close(self) -> None:
        self._closing.cancel()
        if self._read is not None:
            self._read.cancel()
        self._call.cancel()


def _error_json(error: grpc.aio.AioRpcError) -> str:
    return dumps(from_rpc_error(error, out_of_range_status=410).body())


async def pump_sse(
    request: web.Request,
    pump: StreamPump[Message],
    render: Callable[[Message], str],
    heartbeat: float,
) -> web.StreamResponse:
    """Answer with a `text/event-stream` of rendered messages, with comment heartbeats."""
    first = await pump.first()
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            # Tell buffering reverse proxies (nginx) to pass events on at once.
            "X-Accel-Buffering": "no",
        }
    )

    def failure(error: grpc.aio.AioRpcError) -> bytes:
        return f"event: error\ndata: {_error_json(error)}\n\n".encode()

    return await _pump(
        request, response, pump, first, lambda item: render(item).encode(), heartbeat, failure
    )


async def pump_ndjson(
    request: web.Request, pump: StreamPump[Message], render: Callable[[Message], str]
) -> web.StreamResponse:
    """Answer with one JSON object per line, as they come; no heartbeats."""
    first = await pump.first()
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})

    def failure(error: grpc.aio.AioRpcError) -> bytes:
        # Too late for a status: the last line says what went wrong.
        return _error_json(error).encode() + b"\n"

    return await _pump(
        request,
        response,
        pump,
        first,
        lambda item: render(item).encode() + b"\n",
        None,
        failure,
    )


async def _pump(
    request: web.Request,
    response: web.StreamResponse,
    pump: StreamPump[Message],
    item: Message | Tick | End,
    encode: Callable[[Message], bytes],
    heartbeat: float | None,
    failure: Callable[[grpc.aio.AioRpcError], bytes],
) -> web.StreamResponse:
    await response.prepare(request)
    try:
        while item is not End.END:
            if item is Tick.TICK:
                if heartbeat is not None:
                    await response.write(b": heartbeat\n\n")
            else:
                await response.write(encode(item))
            try:
                item = await pump.next(heartbeat)
            except grpc.aio.AioRpcError as error:
                await response.write(failure(error))
                break
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away: nothing more to send
    return response


def sse_event(kind: str, data: dict[str, Any], event_id: int | None = None) -> str:
    lines = [] if event_id is None else [f"id: {event_id}"]
    lines += [f"event: {kind}", f"data: {dumps(data)}", "", ""]
    return "\n".join(lines)
