"""Supervisors and the registry over the fake runtime: ordering, races, revisions."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hershy.adapters.docker.port_pool import PortPool
from hershy.adapters.fake_runtime import FakeBehaviour, FakeEffectHandler
from hershy.adapters.log_files import FileLogStore
from hershy.adapters.memory_event_log import MemoryEventLog
from hershy.adapters.source_files import MemorySourceStore
from hershy.domain.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RevisionTooOld,
)
from hershy.domain.model import BackoffPolicy, State
from hershy.service.ports import TimerHandle
from hershy.service.registry import Registry
from hershy.service.watch import Change, ChangeKind, Closed, Resync, WatchHub
from tests.manual_clock import ManualClock, settle

FAST = BackoffPolicy(initial=0.05, factor=2, cap=0.4, reset_after=60)
DOCKERFILE = "FROM scratch\n"


class TestClock:
    """Real time: the event loop's clock and timers (tests that step time use ManualClock)."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_later(self, seconds: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(seconds, callback)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class SequentialIds:
    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def new_program_id(self) -> str:
        return f"prog-{next(self._ids)}"

    def new_token(self) -> tuple[str, str]:
        number = next(self._ids)
        return f"tok-{number}", f"hershy_test-secret-{number}"


def make_registry(
    behaviour: FakeBehaviour | None = None,
    *,
    hub: WatchHub | None = None,
    ports: PortPool | None = None,
    clock: ManualClock | None = None,
) -> tuple[Registry, FakeEffectHandler]:
    """With `clock`, time moves only when the test moves it (the fake's delays too);
    without, the event loop's real time."""
    sources = MemorySourceStore()
    logs = FileLogStore(Path(tempfile.mkdtemp(prefix="hershy-logs-")))
    handler = FakeEffectHandler(sources, logs, behaviour, ports, timers=clock)
    time = clock or TestClock()
    registry = Registry(
        handler=handler,
        sources=sources,
        logs=logs,
        event_log=MemoryEventLog(),
        clock=time,
        timers=time,
        ids=SequentialIds(),
        hub=hub,
        policy=FAST,
    )
    return registry, handler


@pytest.fixture
async def host() -> AsyncIterator[tuple[Registry, FakeEffectHandler]]:
    registry, handler = make_registry(FakeBehaviour(build_delay=0.01, ready_delay=0.01))
    async with registry:
        yield registry, handler


async def ready_program(registry: Registry, source: bytes = b"x") -> str:
    program = await registry.create("alice", DOCKERFILE, {"main.txt": source})
    await registry.start(program.id)
    await registry.wait(program.id, State.READY, 5)
    return program.id


async def test_stop_during_a_slow_build_ends_stopped_with_nothing_left() -> None:
    clock = ManualClock()
    registry, handler = make_registry(FakeBehaviour(build_delay=30), clock=clock)
    async with registry:
        program = await registry.create("alice", DOCKERFILE, {})
        await registry.start(program.id)
        await clock.advance(29)  # the build is well under way
        stopping = await registry.stop(program.id)  # answered at once: the build is not waited for
        assert stopping.state is State.STOPPING
        stopped = await clock.run(registry.wait(program.id, State.STOPPED, 2))
        assert stopped.container_id is None
        assert handler.world.containers == {}
        assert handler.builds_run == 0  # the build was cancelled, not finished


async def test_stop_during_a_slow_start_removes_the_container() -> None:
    clock = ManualClock()
    registry, handler = make_registry(FakeBehaviour(ready_delay=30), clock=clock)
    async with registry:
        program = await registry.create("alice", DOCKERFILE, {})
        await registry.start(program.id)
        await clock.advance(29)  # the container exists; it is not ready yet
        assert registry.get(program.id).container_id
        assert registry.get(program.id).state is State.STARTING
        assert handler.world.containers_of(program.id)
        await registry.stop(program.id)
        await clock.run(registry.wait(program.id, State.STOPPED, 2))
        assert handler.world.containers_of(program.id) == []


async def test_a_crash_restarts_with_growing_delays_and_a_visible_count() -> None:
    clock = ManualClock()
    registry, handler = make_registry(
        FakeBehaviour(build_delay=0.01, ready_delay=0.01), clock=clock
    )
    async with registry:
        program_id = await clock.run(ready_program(registry))
        gaps = []
        for expected_count, delay in ((1, 0.05), (2, 0.1), (3, 0.2)):
            handler.crash(program_id, exit_code=3)
            await settle()
            backoff = registry.get(program_id)
            assert backoff.state is State.BACKOFF
            assert backoff.restart_count == expected_count
            assert backoff.last_exit_code == 3
            assert backoff.next_restart_at is not None
            gaps.append(backoff.next_restart_at - backoff.updated_at)
            # Not a moment before its time...
            await clock.advance(delay - 0.001)
            assert registry.get(program_id).state is State.BACKOFF
            # ...and then at once (the fake's start takes its 10 ms).
            await clock.advance(0.002)
            assert registry.get(program_id).state is State.STARTING
            await clock.advance(0.01)
            assert registry.get(program_id).state is State.READY
        assert gaps == pytest.approx([0.05, 0.1, 0.2])
        assert len(handler.world.containers_of(program_id)) == 1


async def test_stop_wins_over_a_pending_automatic_restart() -> None:
    clock = ManualClock()
    registry, handler = make_registry(
        FakeBehaviour(build_delay=0.01, ready_delay=0.01), clock=clock
    )
    async with registry:
        program_id = await clock.run(ready_program(registry))
        handler.crash(program_id)
        await clock.run(registry.wait(program_id, State.BACKOFF, 2))
        await registry.stop(program_id)
        await clock.run(registry.wait(program_id, State.STOPPED, 2))
        await clock.advance(FAST.cap * 10)  # well past the restart delay
        assert registry.get(program_id).state is State.STOPPED
        assert handler.world.containers_of(program_id) == []


async def test_a_restart_storm_ends_with_exactly_one_container() -> None:
    clock = ManualClock()
    registry, handler = make_registry(
        FakeBehaviour(build_delay=0.01, ready_delay=0.01), clock=clock
    )
    async with registry:
        program_id = await clock.run(ready_program(registry))
        results = await clock.run(
            asyncio.gather(
                *(registry.restart(program_id) for _ in range(50)), return_exceptions=True
            )
        )
        assert all(not isinstance(result, BaseException) for result in results), results
        ready = await clock.run(registry.wait(program_id, State.READY, 5))
        await clock.advance(60)  # nothing left to happen: it stays as it is
        assert registry.get(program_id).state is State.READY
        assert handler.world.containers_of(program_id) == [ready.container_id]
        assert handler.builds_run == 1  # the image was reused every time


async def test_a_failed_build_is_error_with_the_reason_and_start_retries() -> None:
    registry, _ = make_registry(FakeBehaviour(failing_builds=1, failure_reason="no such file"))
    async with registry:
        program = await registry.create("alice", DOCKERFILE, {})
        await registry.start(program.id)
        with pytest.raises(FailedPrecondition, match="no such file") as failure:
            await registry.wait(program.id, State.READY, 2)
        assert failure.value.state == "ERROR"
        assert registry.get(program.id).error == "build failed: no such file"
        await registry.start(program.id)
        await registry.wait(program.id, State.READY, 2)


async def test_requests_the_state_cannot_take_are_refused_naming_it(
    host: tuple[Registry, FakeEffectHandler],
) -> None:
    registry, _ = host
    program_id = await ready_program(registry)
    with pytest.raises(FailedPrecondition, match="READY") as refusal:
        await registry.start(program_id)
    assert refusal.value.state == "READY"


async def test_delete_removes_everything_and_the_program_never_comes_back(
    host: tuple[Registry, FakeEffectHandler],
) -> None:
    registry, handler = host
    program_id = await ready_program(registry)
    watch = registry.watch(program_id, None)
    waiter = asyncio.create_task(registry.wait(program_id, State.DELETED, 2))
    await settle()
    await registry.delete(program_id)
    final = await waiter
    assert final.state is State.DELETED
    assert final.container_id is None
    kinds = []
    while True:
        item = await asyncio.wait_for(watch.subscription.next(), 2)
        assert isinstance(item, Change)
        kinds.append(item.kind)
        if item.kind is ChangeKind.DELETED:
            assert item.program.state is State.DELETED
            break
    assert handler.world.containers_of(program_id) == []
    with pytest.raises(NotFound):
        registry.get(program_id)
    with pytest.raises(NotFound):
        await registry.start(program_id)
    with pytest.raises(NotFound):
        await registry.source(program_id)


async def test_wait_times_out_naming_the_target_and_the_current_state() -> None:
    clock = ManualClock()
    registry, _ = make_registry(clock=clock)
    async with registry:
        program = await registry.create("alice", DOCKERFILE, {})
        waiter = asyncio.ensure_future(registry.wait(program.id, State.READY, 0.1))
        await clock.advance(0.099)
        assert not waiter.done(), "a wait ends at its deadline, not before"
        await clock.advance(0.001)
        with pytest.raises(DeadlineExceeded, match=r"READY within 0.1 s \(it is CREATED\)"):
            await waiter
        with pytest.raises(InvalidArgument, match="timeout"):
            await registry.wait(program.id, State.READY, 0)


async def test_wait_for_deleted_returns_the_final_program(
    host: tuple[Registry, FakeEffectHandler],
) -> None:
    registry, _ = host
    program = await registry.create("alice", DOCKERFILE, {})
    waiter = asyncio.create_task(registry.wait(program.id, State.READY, 2))
    await settle()
    await registry.delete(program.id)
    with pytest.raises(NotFound, match="deleted"):
        await waiter


async def test_ports_are_unique_and_given_back_when_a_program_is_deleted() -> None:
    # The OS's view of the ports is not this test's business: every port counts as bindable.
    registry, handler = make_registry(ports=PortPool(range(19001, 19003), is_free=lambda _: True))
    async with registry:
        created = await registry.create("alice", DOCKERFILE, {})
        assert created.proxy_target == "", "a program is placed when it starts, not at Create"
        first = registry.get(await ready_program(registry, b"1"))
        second = registry.get(await ready_program(registry, b"2"))
        assert {first.proxy_target, second.proxy_target} == {"127.0.0.1:19001", "127.0.0.1:19002"}
        third = await registry.create("alice", DOCKERFILE, {"main.txt": b"3"})
        await registry.start(third.id)
        with pytest.raises(FailedPrecondition, match="19001-19002"):
            await registry.wait(third.id, State.READY, 2)
        waiter = asyncio.create_task(registry.wait(first.id, State.DELETED, 2))
        await settle()
        await registry.delete(first.id)
        await waiter
        assert handler.world.ports.held == {int(second.proxy_target.rpartition(":")[2])}
        await registry.start(third.id)
        again = await registry.wait(third.id, State.READY, 2)
        assert again.proxy_target == first.proxy_target


async def test_a_stopped_program_gives_its_port_back_and_a_start_places_it_again() -> None:
    ports = PortPool(range(19001, 19004), is_free=lambda _: True)
    registry, handler = make_registry(ports=ports)
    async with registry:
        program_id = await ready_program(registry)
        placed = registry.get(program_id).proxy_target
        await registry.stop(program_id)
        stopped = await registry.wait(program_id, State.STOPPED, 2)
        assert ports.held == frozenset()
        assert stopped.proxy_target == placed, "where it last ran stays on record"
        await registry.start(program_id)
        again = await registry.wait(program_id, State.READY, 2)
        assert again.proxy_target != placed, "the pool goes round: a fresh port"
        assert ports.held == {int(again.proxy_target.rpartition(":")[2])}
        handler.crash(program_id)
        await registry.wait(program_id, State.BACKOFF, 2)
        restarted = await registry.wait(program_id, State.READY, 2)
        assert restarted.proxy_target not in ("", again.proxy_target)
        assert len(ports.held) == 1


async def test_a_slow_subscriber_is_told_to_resync_and_slows_nobody() -> None:
    hub = WatchHub(subscriber_capacity=5)
    registry, _ = make_registry(hub=hub)
    async with registry:
        slow = registry.watch("", None).subscription
        fast = registry.watch("", None).subscription
        seen: list[int] = []

        async def drain() -> None:
            while len(seen) < 20:
                item = await fast.next()
                assert isinstance(item, Change)
                seen.append(item.revision)

        reader = asyncio.create_task(drain())
        for _ in range(20):
            await registry.create("alice", DOCKERFILE, {})
            await settle()
        await asyncio.wait_for(reader, 2)
        assert seen == sorted(seen)
        assert len(seen) == 20
        assert await slow.next() is Resync.RESYNC
        snapshot = registry.snapshot(slow)
        assert len(snapshot) == 20


async def test_resume_replays_changes_after_a_revision_or_refuses_clearly() -> None:
    registry, _ = make_registry(hub=WatchHub(history=5))
    async with registry:
        for _ in range(8):
            await registry.create("alice", DOCKERFILE, {})
        start = registry.watch("", resume_revision=6)
        assert [change.revision for change in start.replay] == [7, 8]
        assert start.snapshot is None
        with pytest.raises(RevisionTooOld, match="too old"):
            registry.watch("", resume_revision=2)
        with pytest.raises(RevisionTooOld, match="ahead"):
            registry.watch("", resume_revision=99)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from(["start", "stop", "restart", "delete"])),
        max_size=30,
    )
)
def test_revisions_strictly_increase_across_programs(requests: list[tuple[int, str]]) -> None:
    async def scenario() -> None:
        clock = ManualClock()
        registry, _ = make_registry(clock=clock)
        async with registry:
            subscription = registry.watch("", None).subscription
            ids = [(await registry.create("alice", DOCKERFILE, {})).id for _ in range(3)]
            for index, kind in requests:
                with contextlib.suppress(FailedPrecondition, NotFound):
                    await getattr(registry, kind)(ids[index])
            await clock.advance(60)  # every effect done, every backoff fired
            subscription.close()  # what it holds is delivered, then CLOSED: no waiting
            revisions = []
            while (item := await subscription.next()) is not Closed.CLOSED:
                assert isinstance(item, Change)
                revisions.append(item.revision)
            assert revisions == list(range(1, len(revisions) + 1))
            for program_id in ids:
                with contextlib.suppress(NotFound):
                    assert registry.get(program_id).revision <= revisions[-1]

    asyncio.run(scenario())


async def test_stop_all_brings_every_running_program_to_rest() -> None:
    registry, handler = make_registry(FakeBehaviour(build_delay=30))
    async with registry:
        ready = await registry.create("alice", DOCKERFILE, {"a": b"1"})
        handler.behaviour.build_delay = 0
        await registry.start(ready.id)
        await registry.wait(ready.id, State.READY, 2)
        handler.behaviour.build_delay = 30
        building = await registry.create("alice", DOCKERFILE, {"b": b"2"})
        await registry.start(building.id)
        idle = await registry.create("alice", DOCKERFILE, {"c": b"3"})
        await registry.stop_all(seconds=2)
        assert registry.get(ready.id).state is State.STOPPED
        assert registry.get(building.id).state is State.STOPPED
        assert registry.get(idle.id).state is State.CREATED
        assert handler.world.containers == {}


def sample(registry: Registry, name: str, **labels: str) -> float:
    value = registry.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


async def test_metrics_move_with_what_happens(host: tuple[Registry, FakeEffectHandler]) -> None:
    registry, handler = host
    program_id = await ready_program(registry)
    text = registry.metrics.exposition().decode()
    assert 'hershy_programs{state="ready"} 1.0' in text
    transitions = "hershy_transitions_total"
    assert sample(registry, transitions, from_state="starting", to_state="ready") == 1
    assert sample(registry, "hershy_build_duration_seconds_count", outcome="built") == 1
    assert sample(registry, "hershy_start_duration_seconds_count", outcome="ready") == 1
    # The start took at least the fake ready delay (0.01 s), counted from entering STARTING.
    assert sample(registry, "hershy_start_duration_seconds_sum", outcome="ready") >= 0.01
    handler.crash(program_id, exit_code=9)
    await registry.wait(program_id, State.BACKOFF, 2)
    await registry.wait(program_id, State.READY, 2)
    assert sample(registry, "hershy_crashes_total") == 1
    assert sample(registry, "hershy_restarts_total") == 1
    watch = registry.watch("", None)
    assert sample(registry, "hershy_watch_subscribers") == 1
    watch.subscription.unsubscribe()
    assert sample(registry, "hershy_watch_subscribers") == 0
