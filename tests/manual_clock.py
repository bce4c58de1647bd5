"""A clock that moves only when a test moves it: the `Clock` and `Timers` ports, stepped.

As etcd-io/raft's tests call `Tick()`, a test here calls `advance(seconds)`:
every timer due by then fires, in time order, and the event loop is run
until idle after each, so what the firing set off has happened when
`advance` returns. "Nothing happens within 10 s" is then checked by
`advance(10)` and looking, not by sleeping and hoping the machine was fast.

`run(awaitable)` waits for something that needs time to pass (a fake build
of 10 ms, a backoff): whenever the loop is idle and the awaitable not done,
time jumps to the next timer. Nothing left to fire while it is still not done
is a deadlock, reported at once instead of a test that hangs.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from hershy.service.ports import TimerHandle

T = TypeVar("T")

#: Loop iterations with nothing ready before the loop counts as idle.
_IDLE_ROUNDS = 3
#: Real seconds `run` gives work off the loop (threads: log reads, source checks)
#: to come back before it calls a wait with nothing left to fire a deadlock.
_THREAD_GRACE_SECONDS = 5.0


@dataclass(order=True)
class _Timer:
    at: float
    sequence: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


async def settle(max_rounds: int = 100_000) -> None:
    """Run the event loop until nothing on it is ready to run (every task waits).

    Reads asyncio's ready queue (a private attribute): a test helper, never
    used by the Host.
    """
    loop = asyncio.get_running_loop()
    ready = loop._ready  # type: ignore[attr-defined]
    idle = 0
    for _ in range(max_rounds):
        await asyncio.sleep(0)
        idle = idle + 1 if not ready else 0
        if idle >= _IDLE_ROUNDS:
            return
    raise AssertionError(f"the event loop was still busy after {max_rounds} rounds")


class ManualClock:
    """Unix-like time that starts at `start` and moves only by `advance` (or `run`)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._timers: list[_Timer] = []
        self._sequence = itertools.count()

    # --- the ports ----------------------------------------------------------------------------

    def now(self) -> float:
        return self._now

    def call_later(self, seconds: float, callback: Callable[[], None]) -> TimerHandle:
        if seconds <= 0:  # due now: no need to wait for the test to move time
            return asyncio.get_running_loop().call_soon(callback)
        timer = _Timer(self._now + max(0.0, seconds), next(self._sequence), callback)
        heapq.heappush(self._timers, timer)
        return timer

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        woken = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not woken.done():
                woken.set_result(None)

        timer = self.call_later(seconds, wake)
        try:
            await woken
        finally:
            timer.cancel()

    # --- for tests ----------------------------------------------------------------------------

    @property
    def next_deadline(self) -> float | None:
        """When the next timer that is still wanted fires; None if none is."""
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0].at if self._timers else None

    @property
    def pending(self) -> int:
        """How many timers are still wanted."""
        return sum(1 for timer in self._timers if not timer.cancelled)

    async def advance(self, seconds: float) -> None:
        """Move time on by `seconds`, firing what falls due on the way, in order."""
        assert seconds >= 0, "time does not go back"
        target = self._now + seconds
        await settle()
        while (due := self.next_deadline) is not None and due <= target:
            self._fire_next()
            await settle()
        self._now = target
        await settle()

    async def run(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable`, moving time to the next timer whenever nothing else can happen."""
        task = asyncio.ensure_future(awaitable)
        try:
            while True:
                await settle()
                if task.done():
                    return task.result()
                if self.next_deadline is None:
                    # Maybe a thread is still at work: give it real time, then call it stuck.
                    await asyncio.wait({task}, timeout=_THREAD_GRACE_SECONDS)
                    if task.done():
                        return task.result()
                    if self.next_deadline is None:
                        raise AssertionError("deadlock: not done, and no timer left to fire")
                    continue
                self._fire_next()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def _fire_next(self) -> None:
        timer = heapq.heappop(self._timers)
        self._now = max(self._now, timer.at)
        timer.callback()
