"""The runtime port's contract (`hershy.service.ports.ProgramRuntime`), checked on every adapter.

Each test runs once per runtime (the fake, and Docker with runsc), through
the port and a recording Outbox only. See conftest.py for what each runtime
does its own way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import cast

import aiohttp
import pytest

from hershy.domain import effects as fx
from hershy.domain import events as ev
from hershy.domain.model import LogLine, LogStream
from hershy.domain.validation import build_id
from tests.conformance.conftest import (
    RESOURCES,
    STEP_SECONDS,
    USER,
    Kind,
    RecordingOutbox,
    Subject,
    execute,
)


async def built(subject: Subject, kind: Kind = Kind.SERVES) -> tuple[str, fx.StartContainer]:
    """A program built; the effect that starts its first run."""
    program_id, build = await subject.program(kind)
    outbox = RecordingOutbox()
    await execute(subject.runtime, program_id, build, outbox)
    image = (await outbox.next(ev.BuildSucceeded)).image_id
    return program_id, fx.StartContainer(build.run, image, build.build_id, RESOURCES)


async def ready(subject: Subject) -> tuple[str, ev.ContainerCreated, RecordingOutbox]:
    """A program Ready; where it was created, and the outbox its start reported to."""
    program_id, start = await built(subject)
    outbox = RecordingOutbox()
    await execute(subject.runtime, program_id, start, outbox)
    created = await outbox.next(ev.ContainerCreated)
    await outbox.next(ev.ContainerReady)
    assert not outbox.of(ev.StartFailed), outbox.events
    return program_id, created, outbox


async def watcher_status(subject: Subject, address: str) -> int:
    """What `GET /watcher/status` answers at a program's address, asked where the runtime says."""
    endpoint = subject.runtime.watcher_endpoint(address)
    assert endpoint is not None, f"the runtime does not own the address it reported: {address!r}"
    url = f"http://{endpoint.host}:{endpoint.port}/watcher/status"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.get(url) as response,
    ):
        return response.status


async def answers(subject: Subject, address: str) -> bool:
    try:
        return await watcher_status(subject, address) == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


# --- lifetime and description ----------------------------------------------------------------


async def test_the_runtime_says_how_programs_run(subject: Subject) -> None:
    assert subject.runtime.runtime
    if subject.name == "docker":
        assert subject.runtime.runtime.startswith("runsc (gVisor, network=")


async def test_a_runtime_refuses_addresses_it_never_hands_out(subject: Subject) -> None:
    for address in ("", "127.0.0.1:9090", "127.0.0.1:9000", "10.0.0.1:19001", "example.org:80"):
        assert subject.runtime.watcher_endpoint(address) is None, address


# --- builds --------------------------------------------------------------------------------------


async def test_a_build_reports_its_image_with_the_effects_run(subject: Subject) -> None:
    program_id, build = await subject.program()
    outbox = RecordingOutbox()
    await execute(subject.runtime, program_id, replace_run(build, 7), outbox)
    succeeded = await outbox.next(ev.BuildSucceeded)
    assert succeeded.run == 7
    assert succeeded.image_id
    assert all(getattr(event, "run", 7) == 7 for event in outbox.events), outbox.events


async def test_a_failing_build_is_reported_and_leaves_no_image(subject: Subject) -> None:
    program_id, build = await subject.program(Kind.FAILING_BUILD)
    outbox = RecordingOutbox()
    await execute(subject.runtime, program_id, build, outbox)
    failed = await outbox.next(ev.BuildFailed)
    assert failed.run == build.run
    assert failed.reason
    assert not outbox.of(ev.BuildSucceeded)
    assert await subject.leftovers(program_id) == []


async def test_a_build_cancelled_midway_leaves_nothing_and_reports_nothing(
    subject: Subject,
) -> None:
    program_id, build = await subject.program(Kind.SLOW_BUILD)
    outbox = RecordingOutbox()
    building = asyncio.create_task(subject.runtime.execute(program_id, build, outbox))
    await log_lines(subject, program_id, {LogStream.BUILD})  # the build is under way
    assert not building.done(), outbox.events
    building.cancel()
    with pytest.raises(asyncio.CancelledError):
        await building
    assert not outbox.of(ev.BuildSucceeded)
    assert not outbox.of(ev.BuildFailed)
    assert await subject.leftovers(program_id) == []


# --- starts --------------------------------------------------------------------------------------


async def test_a_start_reports_where_the_program_is_then_ready_and_it_answers_there(
    subject: Subject,
) -> None:
    program_id, created, outbox = await ready(subject)
    assert created.run == 1
    assert created.container_id
    assert created.address
    assert outbox.events.index(created) < len(outbox.events) - 1  # Created before Ready
    assert await watcher_status(subject, created.address) == 200
    assert await subject.containers(program_id) == [created.container_id]


async def test_the_program_output_reaches_its_log_with_its_run(subject: Subject) -> None:
    program_id, created, _ = await ready(subject)
    lines = await log_lines(subject, program_id, {LogStream.STDOUT, LogStream.STDERR})
    assert {line.run for line in lines} == {created.run}


async def test_a_start_cancelled_midway_removes_its_container(subject: Subject) -> None:
    program_id, start = await built(subject, Kind.SLOW_START)
    outbox = RecordingOutbox()
    starting = asyncio.create_task(subject.runtime.execute(program_id, start, outbox))
    created = await outbox.next(ev.ContainerCreated)
    assert await subject.containers(program_id) == [created.container_id]
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert not outbox.of(ev.ContainerReady)
    assert await subject.containers(program_id) == []
    assert not await answers(subject, created.address)


async def test_a_start_that_never_becomes_ready_fails_after_removing_its_container(
    subject: Subject,
) -> None:
    program_id, start = await built(subject, Kind.NEVER_READY)
    outbox = RecordingOutbox()
    await execute(subject.runtime, program_id, start, outbox)
    created = await outbox.next(ev.ContainerCreated)
    failed = await outbox.next(ev.StartFailed)
    assert failed.run == start.run
    assert failed.reason
    assert not outbox.of(ev.ContainerReady)
    assert await subject.containers(program_id) == []
    assert not await answers(subject, created.address)


async def test_a_new_run_first_removes_what_an_older_run_left(subject: Subject) -> None:
    program_id, first, _ = await ready(subject)
    outbox = RecordingOutbox()
    await execute(subject.runtime, program_id, await rebuilt_start(subject, program_id, 2), outbox)
    second = await outbox.next(ev.ContainerCreated)
    await outbox.next(ev.ContainerReady)
    assert second.run == 2
    assert second.container_id != first.container_id
    assert await subject.containers(program_id) == [second.container_id]


# --- crashes and stops ---------------------------------------------------------------------------


async def test_a_crash_is_reported_once_with_its_exit_code_through_the_latest_outbox(
    subject: Subject,
) -> None:
    program_id, created, start_outbox = await ready(subject)
    # Another effect of the program, with another outbox: crashes are reported there now.
    latest = RecordingOutbox()
    await execute(subject.runtime, program_id, await same_build(subject, program_id, 1), latest)
    await latest.next(ev.BuildSucceeded)  # the image of the same inputs, reused
    latest_events = len(latest.events)
    code = await subject.crash(program_id)
    exited = await latest.next(ev.ContainerExited)
    assert (exited.run, exited.exit_code) == (created.run, code)
    assert exited.container_id in (None, created.container_id)
    # What the supervisor does next: remove the dead container. No second report of it.
    stop = fx.StopContainer(created.run, created.container_id)
    await execute(subject.runtime, program_id, stop, latest)
    await latest.next(ev.ContainerStopped)
    assert len(latest.of(ev.ContainerExited)) == 1, latest.events[latest_events:]
    assert not start_outbox.of(ev.ContainerExited)


async def test_stop_removes_the_container_and_is_idempotent(subject: Subject) -> None:
    program_id, created, _ = await ready(subject)
    for _ in range(2):
        outbox = RecordingOutbox()
        stop = fx.StopContainer(created.run, created.container_id)
        await execute(subject.runtime, program_id, stop, outbox)
        assert (await outbox.next(ev.ContainerStopped)).run == created.run
        assert not outbox.of(ev.StopFailed)
        assert await subject.containers(program_id) == []
    assert not await answers(subject, created.address)


async def test_stopping_a_program_that_never_ran_is_success(subject: Subject) -> None:
    program_id, _ = await subject.program()
    outbox = RecordingOutbox()
    await execute(subject.runtime, program_id, fx.StopContainer(3, None), outbox)
    assert (await outbox.next(ev.ContainerStopped)).run == 3


# --- teardown ------------------------------------------------------------------------------------


async def test_teardown_leaves_nothing_not_even_the_folder(subject: Subject) -> None:
    program_id, created, _ = await ready(subject)
    outbox = RecordingOutbox()
    teardown = fx.Teardown(created.run, created.container_id)
    await execute(subject.runtime, program_id, teardown, outbox)
    assert (await outbox.next(ev.TornDown)).run == created.run
    assert await subject.leftovers(program_id) == []
    assert not await subject.folder_left(program_id)
    assert not await answers(subject, created.address)
    # Idempotent too: a second teardown (a Host that died midway) finds nothing and succeeds.
    again = RecordingOutbox()
    await execute(subject.runtime, program_id, fx.Teardown(created.run, None), again)
    await again.next(ev.TornDown)


# --- a Host restart: adopt and reap -------------------------------------------------------------


async def test_after_a_host_restart_the_running_container_is_adopted_as_it_is(
    subject: Subject,
) -> None:
    program_id, created, _ = await ready(subject)
    await subject.restart_host()
    await subject.runtime.reap({program_id: created.run})
    adopted = RecordingOutbox()
    adopt = fx.AdoptContainer(created.run, created.container_id)
    await execute(subject.runtime, program_id, adopt, adopted)
    assert adopted.events == [], "a running container was adopted: nothing to report"
    assert await subject.containers(program_id) == [created.container_id]
    assert await watcher_status(subject, created.address) == 200
    # Its death is reported to the adopting effect's outbox.
    code = await subject.crash(program_id)
    exited = await adopted.next(ev.ContainerExited)
    assert (exited.run, exited.exit_code) == (created.run, code)


async def test_a_container_that_died_while_the_host_was_down_is_reported_on_adoption(
    subject: Subject,
) -> None:
    program_id, created, outbox = await ready(subject)
    code = await subject.crash(program_id)
    await outbox.next(ev.ContainerExited)
    await subject.restart_host()
    await subject.runtime.reap({program_id: created.run})
    adopted = RecordingOutbox()
    adopt = fx.AdoptContainer(created.run, created.container_id)
    await execute(subject.runtime, program_id, adopt, adopted)
    exited = await adopted.next(ev.ContainerExited, within=5)
    assert (exited.run, exited.exit_code) == (created.run, code)


async def test_adopting_a_container_that_is_gone_reports_its_exit(subject: Subject) -> None:
    program_id, _ = await subject.program()
    adopted = RecordingOutbox()
    await execute(subject.runtime, program_id, fx.AdoptContainer(4, "no-such-container"), adopted)
    assert (await adopted.next(ev.ContainerExited, within=5)).run == 4


async def test_reap_removes_what_no_program_owns_and_keeps_what_one_does(
    subject: Subject,
) -> None:
    kept_id, kept, _ = await ready(subject)
    orphan_id, orphan, _ = await ready(subject)
    stale_id, stale, _ = await ready(subject)
    await subject.restart_host()
    # The orphan's program is gone from the store; the stale one's store is at a later run.
    await subject.runtime.reap({kept_id: kept.run, stale_id: stale.run + 1})
    assert await subject.containers(kept_id) == [kept.container_id]
    assert await watcher_status(subject, kept.address) == 200
    assert await subject.containers(orphan_id) == []
    assert await subject.leftovers(orphan_id) == [], "its image too: no program owns it"
    assert await subject.containers(stale_id) == []
    assert not await answers(subject, orphan.address)


# --- helpers -------------------------------------------------------------------------------------


async def log_lines(
    subject: Subject, program_id: str, streams: set[LogStream], within: float = STEP_SECONDS
) -> list[LogLine]:
    """The program's first log line of `streams`, waited for (following the log)."""
    # FileLogStore.lines is an async generator: closed here, its follower goes at once.
    following = cast(
        AsyncGenerator[LogLine, None],
        subject.logs.lines(program_id, None, frozenset(streams), True),
    )
    async with asyncio.timeout(within), contextlib.aclosing(following):
        async for line in following:
            return [line]
    raise AssertionError("the log was removed before a line of it came")


def replace_run(build: fx.Build, run: int) -> fx.Build:
    return fx.Build(run, build.build_id, build.user_id)


async def same_build(subject: Subject, program_id: str, run: int) -> fx.Build:
    """A build of `run` of the program's saved inputs."""
    source = await subject.sources.load(program_id)
    return fx.Build(run, build_id(source), USER)


async def rebuilt_start(subject: Subject, program_id: str, run: int) -> fx.StartContainer:
    """The start of `run` after a build of the same inputs (which reuses the image)."""
    outbox = RecordingOutbox()
    build = await same_build(subject, program_id, run)
    await execute(subject.runtime, program_id, build, outbox)
    image = (await outbox.next(ev.BuildSucceeded, within=STEP_SECONDS)).image_id
    return fx.StartContainer(run, image, build.build_id, RESOURCES)
