"""The Timers port: the manual clock tests step, the real one, and deadlines on either."""

from __future__ import annotations

import asyncio

import pytest

from hershy.adapters.system import SystemClock
from hershy.service.deadlines import deadline
from tests.manual_clock import ManualClock, settle


async def test_a_manual_timer_fires_at_its_time_and_not_before() -> None:
    clock = ManualClock(start=100.0)
    fired: list[float] = []
    clock.call_later(5, lambda: fired.append(clock.now()))
    clock.call_later(2, lambda: fired.append(clock.now()))
    await clock.advance(1.999)
    assert fired == []
    await clock.advance(0.001)
    assert fired == [102.0]
    await clock.advance(10)
    assert fired == [102.0, 105.0], "in time order, each at its own time"
    assert clock.now() == 112.0
    assert clock.pending == 0


async def test_a_cancelled_timer_never_fires_and_a_cancelled_sleep_leaves_none() -> None:
    clock = ManualClock()
    fired: list[str] = []
    clock.call_later(1, lambda: fired.append("cancelled")).cancel()
    sleeper = asyncio.ensure_future(clock.sleep(3))
    await settle()
    assert clock.pending == 1
    sleeper.cancel()
    await asyncio.gather(sleeper, return_exceptions=True)
    assert clock.pending == 0
    await clock.advance(60)
    assert fired == []


async def test_run_jumps_to_each_timer_and_reports_a_deadlock() -> None:
    clock = ManualClock()

    async def two_naps() -> float:
        await clock.sleep(10)
        await clock.sleep(20)
        return clock.now()

    start = clock.now()
    assert await clock.run(two_naps()) == start + 30
    never = asyncio.Event()
    with pytest.raises(AssertionError, match="deadlock"):
        await clock.run(never.wait())


async def test_a_deadline_cuts_the_body_exactly_when_the_timers_say() -> None:
    clock = ManualClock()
    never = asyncio.Event()

    async def waits() -> None:
        async with deadline(clock, 5):
            await never.wait()

    task = asyncio.ensure_future(waits())
    await clock.advance(4.999)
    assert not task.done()
    await clock.advance(0.001)
    assert task.done()
    with pytest.raises(TimeoutError):
        task.result()


async def test_a_body_done_in_time_leaves_no_timer_behind() -> None:
    clock = ManualClock()

    async def nap_within_the_deadline() -> None:
        async with deadline(clock, 5):
            await clock.sleep(1)

    await clock.run(nap_within_the_deadline())
    assert clock.pending == 0
    await clock.advance(10)  # the deadline's timer is gone: nothing fires into the void


async def test_the_system_clock_sleeps_and_times_out_on_the_event_loop() -> None:
    clock = SystemClock()
    loop = asyncio.get_running_loop()
    before = loop.time()
    await clock.sleep(0.01)
    assert loop.time() - before >= 0.01
    with pytest.raises(TimeoutError):
        async with deadline(clock, 0.01):
            await asyncio.Event().wait()
    fired = asyncio.Event()
    clock.call_later(0, fired.set)
    await asyncio.wait_for(fired.wait(), 1)
