"""Copying what Pods print into the programs' logs, from the API server: each line once, in order.

As on Docker (`adapters/docker/logs.py`), every line carries the kubelet's
timestamp as its mark; a copy that is cut (the API server restarted, the Host
restarted) begins again at the last second the log has and skips the lines
it already holds (same stamp, counted), so nothing is doubled, and nothing is
lost as long as the kubelet still keeps the lines. The log API merges stdout
and stderr (splitting them is an alpha feature): every line is stdout.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient

from hershy.adapters.docker.logs import LOG_DRAIN_SECONDS, docker_time_ns
from hershy.domain.model import LogLine, LogStream
from hershy.service.ports import LogStore

log = logging.getLogger(__name__)

MARK_ID_LENGTH = 12
RETRY_SECONDS = 0.5

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None] | None"]
#: Whether a Pod's container is over (ended, or the Pod gone): its copy may end too.
Over = Callable[[str], bool]


class PodOutput:
    def __init__(
        self, client: Callable[[], AsyncClient], namespace: str, logs: LogStore, spawn: Spawn
    ) -> None:
        self._client = client
        self._namespace = namespace
        self.logs = logs
        self._spawn = spawn
        self._copies: dict[str, asyncio.Task[None]] = {}

    def follow(
        self, program_id: str, run: int, uid: str, name: str, over: Over, *, resume: bool = False
    ) -> None:
        if uid in self._copies:
            return
        copy = self._spawn(self.copy(program_id, run, uid, name, over, resume))
        if copy is None:
            return
        self._copies[uid] = copy
        copy.add_done_callback(lambda _: self._copies.pop(uid, None))

    async def drained(self, uid: str) -> None:
        copy = self._copies.get(uid)
        if copy is not None and not copy.done():
            await asyncio.wait({copy}, timeout=LOG_DRAIN_SECONDS)

    def cancel(self, uid: str) -> None:
        copy = self._copies.pop(uid, None)
        if copy is not None:
            copy.cancel()

    async def copy(
        self, program_id: str, run: int, uid: str, name: str, over: Over, resume: bool
    ) -> None:
        prefix = f"{uid[:MARK_ID_LENGTH]}@"
        after_ns, seen_at_after = 0, 0
        if resume:
            last = await asyncio.to_thread(self.logs.last_mark, program_id, prefix)
            if last is not None:
                after_ns, seen_at_after = int(last[0].removeprefix(prefix)), last[1]
        while True:
            since = None
            if after_ns:
                since = max(1, math.ceil(time.time() - after_ns / 1e9) + 1)
            skip = seen_at_after
            try:
                lines = self._client().log(
                    name,
                    namespace=self._namespace,
                    follow=True,
                    timestamps=True,
                    since=since,
                    newlines=False,
                )
                async for stamped in lines:
                    stamp, _, text = stamped.partition(" ")
                    at_ns = docker_time_ns(stamp)
                    if at_ns is None:
                        self.logs.write(
                            program_id, LogLine(time.time(), LogStream.STDOUT, run, stamped)
                        )
                        continue
                    if at_ns < after_ns:
                        continue
                    if at_ns == after_ns and skip > 0:
                        skip -= 1
                        continue
                    if at_ns == after_ns:
                        seen_at_after += 1
                    else:
                        after_ns, seen_at_after, skip = at_ns, 1, 0
                    self.logs.write(
                        program_id,
                        LogLine(at_ns / 1e9, LogStream.STDOUT, run, text, f"{prefix}{at_ns}"),
                    )
            except ApiError as error:
                # 400 while the container is being created; 404 once the Pod is gone.
                if error.status.code == 404:
                    return
            except (httpx2.HTTPError, OSError) as error:
                log.debug("program %s: log stream of %s cut: %s", program_id, name, error)
            except RuntimeError as error:
                # lightkube 1.0's async log() reads an error answer (400 while the
                # container is created, 404 once the Pod is gone) with a sync read,
                # which raises this: the request failed; asked again below.
                log.debug("program %s: log request of %s failed: %s", program_id, name, error)
            if over(uid):
                return
            await asyncio.sleep(RETRY_SECONDS)
