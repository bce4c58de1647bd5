"""The real clock, timers and id generator."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable

from hershy.domain.auth import TOKEN_PREFIX


class SystemClock:
    """Unix time, and waits on the running event loop's timer (the `Clock` and `Timers` ports)."""

    def now(self) -> float:
        return time.time()

    def call_later(self, seconds: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, seconds), callback)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class RandomIds:
    def new_program_id(self) -> str:
        return "prog-" + secrets.token_hex(6)

    def new_token(self) -> tuple[str, str]:
        return "tok-" + secrets.token_hex(6), TOKEN_PREFIX + secrets.token_urlsafe(32)
