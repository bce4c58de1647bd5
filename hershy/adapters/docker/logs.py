"""Copying what containers print into the programs' logs: each line once, in order.

Every line copied carries its Docker timestamp as its mark (in the same
write), so a copy begun again after a Host restart, asked for the lines since
the last mark, skips exactly the ones the log already has. A container's
death is reported, and a container removed, only once the copy of its last
lines has ended (a bounded wait).
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from hershy.adapters.docker.engine import Engine, EngineError
from hershy.domain.model import LogLine, LogStream
from hershy.service.ports import LogStore

log = logging.getLogger(__name__)

#: How long a container's death waits for the copy of its last lines before it is reported
#: (and a removal before it removes): a copy ends within ms of the death, unless it is
#: back-filling what was written while the Host was down.
LOG_DRAIN_SECONDS = 10.0
#: Container id characters in a log line's mark: unique enough within one program.
MARK_ID_LENGTH = 12

#: Runs a copy as a task its owner cancels when it closes; None when it is not open.
Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None] | None"]


class ContainerOutput:
    """The copies of containers' stdout and stderr, one task per running container."""

    def __init__(self, logs: LogStore, engine: Callable[[], Engine], spawn: Spawn) -> None:
        """`engine`: the runtime's Engine (asked each time: tests swap it)."""
        self.logs = logs
        self._engine = engine
        self._spawn = spawn
        self._followed: set[str] = set()
        #: The task copying each container's output, while it runs.
        self._copies: dict[str, asyncio.Task[None]] = {}

    def follow(self, program_id: str, run: int, container_id: str, *, resume: bool = False) -> None:
        """Copy a container's output into the program's log until it ends.

        `resume`: the container may have been copied before (a Host restart): go on
        after the last line the log has of it. Otherwise it is new: from its start.
        """
        if container_id in self._followed:
            return
        copy = self._spawn(self.copy(program_id, run, container_id, resume))
        if copy is None:
            return
        self._followed.add(container_id)
        self._copies[container_id] = copy
        copy.add_done_callback(lambda _: self._copies.pop(container_id, None))

    def forget(self, container_id: str) -> None:
        """The container is gone: a new copy may begin should it come back (it cannot)."""
        self._followed.discard(container_id)

    async def drained(self, container_id: str) -> None:
        """Wait (a bounded time) until the copy of a container's output has ended."""
        copy = self._copies.get(container_id)
        if copy is not None and not copy.done():
            await asyncio.wait({copy}, timeout=LOG_DRAIN_SECONDS)

    async def copy(self, program_id: str, run: int, container_id: str, resume: bool) -> None:
        """Copy the container's lines (after the last one the log has, with `resume`)."""
        streams = {"stdout": LogStream.STDOUT, "stderr": LogStream.STDERR}
        prefix = f"{container_id[:MARK_ID_LENGTH]}@"
        after_ns, seen_at_after = 0, 0
        if resume:
            last = await asyncio.to_thread(self.logs.last_mark, program_id, prefix)
            if last is not None:
                after_ns, seen_at_after = int(last[0].removeprefix(prefix)), last[1]
        since = f"{after_ns // 10**9}.{after_ns % 10**9:09d}"
        try:
            async for stream, stamped in self._engine().logs(container_id, since, timestamps=True):
                stamp, _, text = stamped.partition(" ")
                at_ns = docker_time_ns(stamp)
                if at_ns is None:  # not stamped (the rest of an over-long line): as it is
                    self.logs.write(program_id, LogLine(time.time(), streams[stream], run, stamped))
                    continue
                if at_ns < after_ns:
                    continue
                if at_ns == after_ns and seen_at_after > 0:
                    seen_at_after -= 1  # copied before the restart
                    continue
                after_ns = at_ns
                self.logs.write(
                    program_id,
                    LogLine(at_ns / 1e9, streams[stream], run, text, f"{prefix}{at_ns}"),
                )
        except (EngineError, aiohttp.ClientError) as error:
            log.debug("program %s: log stream of %s ended: %s", program_id, container_id, error)
        finally:
            self._followed.discard(container_id)


def docker_time_ns(stamp: str) -> int | None:
    """Docker's RFC 3339 UTC time with nanoseconds (`2026-12-01T15:41:56.123456789Z`) as
    ns since the epoch; None if it is not one."""
    if not stamp.endswith("Z") or "T" not in stamp:
        return None
    whole, _, fraction = stamp[:-1].partition(".")
    try:
        seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
        nanos = int(fraction.ljust(9, "0")[:9]) if fraction else 0
    except ValueError:
        return None
    return seconds * 10**9 + nanos
