"""The Docker Engine API's streaming endpoints, asynchronously, over the daemon's Unix socket.

The docker SDK answers the request/response calls (create, start, inspect,
remove). Its streams, though, block a thread each and cannot be cancelled
from outside; these do, with asyncio: cancelling the task that reads a build
closes the connection, and dockerd then cancels the build and kills the
container of the step that was running.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

DEFAULT_SOCKET = "/var/run/docker.sock"
#: The oldest API this code speaks: Docker 20.10 (Debian bookworm's docker.io).
API_VERSION = "1.41"
_STDOUT, _STDERR = 1, 2


class EngineError(Exception):
    """The daemon answered with an error."""


class Engine:
    def __init__(self, socket_path: str = DEFAULT_SOCKET) -> None:
        self._socket_path = socket_path
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self._socket_path, limit=0),
                base_url="http://docker",
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def build(
        self, context_tar: bytes, params: Mapping[str, str]
    ) -> AsyncIterator[dict[str, Any]]:
        """The build's progress messages (`stream`, `error`, `aux`), as the daemon sends them."""
        async with self._client().post(
            f"/v{API_VERSION}/build",
            params=dict(params),
            data=context_tar,
            headers={"Content-Type": "application/x-tar"},
        ) as response:
            await _raise_for_status(response)
            async for message in _json_lines(response):
                yield message

    async def events(
        self, filters: Mapping[str, list[str]], since: float | None
    ) -> AsyncIterator[dict[str, Any]]:
        """Daemon events matching `filters`, from `since` (Unix time) on, until cancelled."""
        params = {"filters": json.dumps(filters)}
        if since is not None:
            params["since"] = f"{since:.9f}"
        async with self._client().get(f"/v{API_VERSION}/events", params=params) as response:
            await _raise_for_status(response)
            async for message in _json_lines(response):
                yield message

    async def logs(
        self, container_id: str, since: float | str = 0, *, timestamps: bool = False
    ) -> AsyncIterator[tuple[str, str]]:
        """(`stdout`|`stderr`, line) pairs of a container's output, following it until it ends.

        `since` is Unix time; as a string (`seconds.nanoseconds`) it is passed exactly.
        With `timestamps`, each line starts with Docker's RFC 3339 time (ns) and a space.
        """
        params = {
            "stdout": "1",
            "stderr": "1",
            "follow": "1",
            "since": since if isinstance(since, str) else f"{since:.9f}",
            "timestamps": "1" if timestamps else "0",
        }
        async with self._client().get(
            f"/v{API_VERSION}/containers/{container_id}/logs", params=params
        ) as response:
            await _raise_for_status(response)
            partial = {_STDOUT: b"", _STDERR: b""}
            while True:
                # Multiplexed stream: an 8-byte header (stream, 0, 0, 0, size) per frame.
                try:
                    header = await response.content.readexactly(8)
                except Exception:  # the stream ended (container gone, daemon away)
                    break
                kind, size = struct.unpack(">BxxxL", header)
                payload = await response.content.readexactly(size)
                if kind not in partial:
                    continue
                *lines, partial[kind] = (partial[kind] + payload).split(b"\n")
                name = "stdout" if kind == _STDOUT else "stderr"
                for raw in lines:
                    yield name, raw.decode("utf-8", errors="replace").rstrip("\r")
            for kind, rest in partial.items():
                if rest:
                    yield (
                        "stdout" if kind == _STDOUT else "stderr",
                        rest.decode("utf-8", errors="replace"),
                    )


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    if response.status >= 400:
        body = await response.text()
        try:
            message = json.loads(body).get("message", body)
        except ValueError:
            message = body
        raise EngineError(f"Docker answered {response.status}: {message.strip()}")


async def _json_lines(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if buffer.strip():
        yield json.loads(buffer)
