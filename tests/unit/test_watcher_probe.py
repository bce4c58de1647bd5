"""The liveness prober and one probe, against real WatcherAPIs on loopback; and the
service over the fake runtime's scripted WatcherAPI (issue #14)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from hershy.adapters.fake_runtime import FakeBehaviour
from hershy.adapters.watcher_probe import (
    MAX_DETAIL_CHARS,
    LivenessProber,
    ProberSettings,
    probe_once,
)
from hershy.domain import events as ev
from hershy.domain.model import Health, ReadinessCheck, RestartMode, RestartPolicy, State
from hershy.service.watch import Change
from tests.unit.test_supervisor import DOCKERFILE, make_registry, sample

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Outbox:
    events: list[ev.WatcherProbed] = field(default_factory=list)

    def now(self) -> float:
        return time.time()

    def emit(self, event: ev.EffectResult) -> None:
        assert isinstance(event, ev.WatcherProbed)
        self.events.append(event)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_one_probe_reads_the_state_and_the_programs_words(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    async def status(_: web.Request) -> web.Response:
        return web.json_response({"state": "Crashed", "error": "x" * 1000, "deep": {"phase": "up"}})

    address = await serve(status)
    async with aiohttp.ClientSession() as session:
        answer = await probe_once(session, address, ReadinessCheck(), 2)
        assert (answer.answered, answer.state) == (True, "Crashed")
        assert answer.detail == "x" * MAX_DETAIL_CHARS
        nested = await probe_once(session, address, ReadinessCheck(field="deep.phase"), 2)
        assert nested.state == "up"
        missing = await probe_once(session, address, ReadinessCheck(field="nope"), 2)
        assert not missing.answered
        assert "no 'nope'" in missing.detail


@pytest.mark.parametrize(
    ("reply", "detail"),
    [
        (web.Response(status=503, text="starting"), "it answered 503"),
        (web.Response(text="<html>not json"), "its answer is not JSON"),
        (web.Response(status=302, headers={"Location": "http://10.0.0.1/"}), "it answered 302"),
        (web.json_response(["state"]), "its answer has no 'state'"),
        (web.json_response({"state": {"nested": 1}}), "its answer has no 'state'"),
    ],
)
async def test_bad_or_hostile_answers_are_no_answer_saying_why(
    serve: Callable[[Handler], Awaitable[str]], reply: web.Response, detail: str
) -> None:
    async def status(_: web.Request) -> web.Response:
        return reply

    address = await serve(status)
    async with aiohttp.ClientSession() as session:
        answer = await probe_once(session, address, ReadinessCheck(), 2)
    assert not answer.answered
    assert answer.detail == detail


async def test_a_huge_answer_is_not_read_whole(serve: Callable[[Handler], Awaitable[str]]) -> None:
    async def status(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"state": "Ready", "pad": "' + b"a" * (1 << 20))
        return response

    address = await serve(status)
    async with aiohttp.ClientSession() as session:
        answer = await probe_once(session, address, ReadinessCheck(), 2)
    assert not answer.answered  # cut at 64 KiB: not JSON any more


async def test_nothing_listening_and_a_hanging_program_are_no_answer(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    async def hang(_: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response()

    address = await serve(hang)
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        slow = await probe_once(session, address, ReadinessCheck(), 0.3)
        assert time.monotonic() - started < 2
        assert not slow.answered
        refused = await probe_once(session, "127.0.0.1:1", ReadinessCheck(), 1)
        assert not refused.answered


async def test_the_prober_reports_changes_only_and_every_bad_answer(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    state = {"now": "Ready"}

    async def status(_: web.Request) -> web.Response:
        if state["now"] == "down":
            return web.Response(status=500)
        return web.json_response({"state": state["now"]})

    address = await serve(status)
    outbox = Outbox()
    prober = LivenessProber(ProberSettings(interval=0.05, jitter=0.2, bad_interval=0.05))
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(prober.run(session))
        prober.watch("c1", "p1", 3, address, ReadinessCheck(), outbox)
        await asyncio.sleep(0.6)
        assert [(e.run, e.state) for e in outbox.events] == [(3, "Ready")]  # ~10 probes, 1 event
        state["now"] = "WaitRecover"
        await asyncio.sleep(0.4)
        assert [e.state for e in outbox.events] == ["Ready", "WaitRecover"]
        state["now"] = "down"
        await asyncio.sleep(0.4)
        bad = [e for e in outbox.events if not e.answered]
        assert len(bad) >= 3, outbox.events  # each bad answer: its grace is measured
        prober.forget("c1")
        count = len(outbox.events)
        await asyncio.sleep(0.3)
        assert len(outbox.events) <= count + 1  # at most the probe already under way
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_probes_in_flight_stay_within_the_bound_and_spread_out(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    arrivals: list[float] = []

    async def slow(_: web.Request) -> web.Response:
        arrivals.append(time.monotonic())
        await asyncio.sleep(0.2)
        return web.json_response({"state": "Ready"})

    address = await serve(slow)
    prober = LivenessProber(ProberSettings(interval=1.0, concurrency=3, timeout=2))
    outbox = Outbox()
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(prober.run(session))
        for index in range(30):
            prober.watch(f"c{index}", f"p{index}", 1, address, ReadinessCheck(), outbox)
        await asyncio.sleep(2.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert prober.peak_in_flight == 3
    assert len(outbox.events) == 30  # one each: the first answer
    # Not a storm: the first probes are spread over the interval, not all at once.
    first_round = sorted(arrivals)[:10]
    assert first_round[-1] - first_round[0] > 0.3


# --- the service over the fake runtime's scripted WatcherAPI ---------------------------


async def test_a_start_is_ready_only_after_the_scripted_initrun() -> None:
    behaviour = FakeBehaviour(
        start_answers=((True, "Ready", 0.05), (True, "InitRun", 0.6), (True, "Ready", 0.1))
    )
    registry, _ = make_registry(behaviour)
    async with registry:
        program = await registry.create("alice", DOCKERFILE, {"a": b"x"})
        subscription = registry.hub.subscribe(program.id, capacity=1000)
        started = asyncio.get_running_loop().time()
        await registry.start(program.id)
        ready = await registry.wait(program.id, State.READY, 10)
        assert asyncio.get_running_loop().time() - started >= 0.6
        seen = []
        while True:
            change = await subscription.next()
            assert isinstance(change, Change)
            seen.append((change.program.state, change.program.watcher_state))
            if change.program.state is State.READY:
                break
        subscription.unsubscribe()
        assert (State.STARTING, "InitRun") in seen
        assert ready.health is Health.HEALTHY
        assert ready.watcher_state == "Ready"
        assert sample(registry, "hershy_program_health", health="healthy") == 1
        assert sample(registry, "hershy_program_health", health="unhealthy") == 0
        registry.metrics.observe_probe(0.004, True)
        assert sample(registry, "hershy_probe_duration_seconds_count", outcome="answered") == 1


async def test_a_scripted_crash_during_the_start_fails_it_and_liveness_restarts() -> None:
    behaviour = FakeBehaviour(start_answers=((True, "WaitRecover", 0.1), (True, "Crashed", 0)))
    registry, fake = make_registry(behaviour)
    async with registry:
        program = await registry.create("alice", DOCKERFILE, {"a": b"x"})
        await registry.start(program.id)
        failed = await registry.wait(program.id, State.ERROR, 10)
        assert failed.error == 'start failed: the program reported "Crashed" while starting'
        assert fake.world.containers_of(program.id) == []
        # Now it starts well; after READY, Killed past the grace is a crash.
        behaviour.start_answers = ()
        quick = await registry.create(
            "alice",
            DOCKERFILE,
            {"a": b"y"},
            readiness=ReadinessCheck(liveness_grace_seconds=1.0),
            restart_policy=RestartPolicy(RestartMode.ON_FAILURE),
        )
        await registry.start(quick.id)
        await registry.wait(quick.id, State.READY, 10)
        fake.answer(quick.id, True, "Killed", "by the operator")
        await asyncio.sleep(0.2)
        assert registry.get(quick.id).health is Health.UNHEALTHY
        await asyncio.sleep(1.0)
        fake.answer(quick.id, True, "Killed", "by the operator")
        backoff = await registry.wait(quick.id, State.BACKOFF, 5)
        assert backoff.error is not None
        assert backoff.error.startswith('liveness: the program reported "Killed" (by the operator)')
        # A liveness crash counts as a crash.
        assert sample(registry, "hershy_crashes_total") == 1
