"""Deadlines on the handed-in timers (`ports.Timers`), so a manual clock drives them too."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from hershy.service.ports import Timers


@contextlib.asynccontextmanager
async def deadline(timers: Timers, seconds: float) -> AsyncIterator[None]:
    """`asyncio.timeout(seconds)`, timed by `timers`: raises TimeoutError once they fire."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(None) as scope:
        # Firing moves asyncio's own deadline to now: it cancels the body and raises as usual.
        handle = timers.call_later(seconds, lambda: scope.reschedule(loop.time()))
        try:
            yield
        finally:
            handle.cancel()
