"""Programs as Hersh runs them, on the real engine and runsc (issue #14).

The stub (tests/fixtures/watcher-stub, `STUB_STATES`) answers `GET /watcher/status`
like a Hersh v0.2.0 program: `Ready` for a moment, `InitRun` while it initialises,
then `Ready`; or `WaitRecover`, then `Crashed`; or it stops answering; or it exits 0.
What is checked: READY is never reported before the program is initialised, the
crash cases restart with backoff and say why, and the restart policies and the stop
signal do what the README says.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import docker
import pytest
from google.protobuf.duration_pb2 import Duration

from hershy.adapters.watcher_probe import ProberSettings
from hershy.domain.model import (
    Health,
    LogStream,
    Program,
    ReadinessCheck,
    RestartMode,
    RestartPolicy,
    State,
    StopSettings,
)
from hershy.service.watch import Change
from hershy.v1 import program_pb2 as pb
from tests.integration.conftest import (
    USER,
    Host,
    containers_of,
    eventually,
    open_host,
    stub_dockerfile,
)
from tests.integration.test_faults import (
    clean_docker,
    host_process,
    programs,
    start_until_ready,
    state_of,
    until_state,
)

pytestmark = pytest.mark.docker

__all__ = ["clean_docker"]

#: Fast liveness for tests: a READY program is probed about every 0.5 s.
PROBER = ProberSettings(interval=0.5, jitter=0.2, timeout=1.0, bad_interval=0.3)
#: A short grace, so the crash cases end within seconds.
QUICK = ReadinessCheck(liveness_grace_seconds=2.0)


@pytest.fixture
async def health_host(
    tmp_path: Path, docker_client: docker.DockerClient, stub_binary: bytes
) -> AsyncIterator[Host]:
    async with open_host(tmp_path / "data", docker_client, stub_binary, prober=PROBER) as opened:
        yield opened


def containers_left(client: docker.DockerClient, program_id: str) -> list[str]:
    """The program's containers; one vanishing while Docker lists them counts as still there."""
    try:
        return [container.id for container in containers_of(client, program_id)]
    except docker.errors.NotFound:
        return ["(one being removed)"]


async def create(
    host: Host,
    env: Mapping[str, str],
    *,
    readiness: ReadinessCheck = QUICK,
    restart_policy: RestartPolicy = RestartPolicy(),
    stop: StopSettings = StopSettings(),
) -> Program:
    program = await host.registry.create(
        USER,
        stub_dockerfile(env),
        {"watcher-stub": host.stub},
        readiness=readiness,
        restart_policy=restart_policy,
        stop=stop,
    )
    host.created.append(program.id)
    return program


async def observe_until(
    host: Host, program_id: str, done: State, within: float
) -> tuple[list[Program], Program]:
    """Every change of the program (from the Host's own Watch hub), until it is in `done`."""
    seen: list[Program] = []
    subscription = host.registry.hub.subscribe(program_id, capacity=1000)
    try:
        async with asyncio.timeout(within):
            while True:
                change = await subscription.next()
                assert isinstance(change, Change), change
                seen.append(change.program)
                if change.program.state is done:
                    return seen, change.program
    except TimeoutError:
        views = [(p.state.name, p.watcher_state, p.health.name) for p in seen]
        pytest.fail(f"not {done.name} within {within:g} s: {views}")
    finally:
        subscription.unsubscribe()


async def test_ready_is_reported_only_once_the_program_is_initialised(health_host: Host) -> None:
    # Like Hersh: Ready before the InitRun signal, InitRun for 4 s, then Ready.
    program = await create(health_host, {"STUB_STATES": "Ready:300ms,InitRun:4s,Ready"})
    started = time.monotonic()
    await health_host.registry.start(program.id)
    seen, ready = await observe_until(health_host, program.id, State.READY, 60)
    took = time.monotonic() - started
    starting_views = [p.watcher_state for p in seen if p.state is State.STARTING]
    assert "InitRun" in starting_views, starting_views
    # Never READY while it said InitRun, and not before its InitRun was over.
    assert all(p.watcher_state != "InitRun" for p in seen if p.state is State.READY)
    assert took >= 4.0, f"READY after {took:.1f} s, before its 4 s InitRun was over"
    assert ready.watcher_state == "Ready"
    assert ready.health is Health.HEALTHY
    assert ready.watcher_state_since is not None
    assert ready.ready_since is not None
    assert ready.watcher_state_since <= ready.ready_since
    # While it stays Ready, liveness probes record nothing new (only changes are events).
    revision = health_host.registry.get(program.id).revision
    await asyncio.sleep(2.5)
    assert health_host.registry.get(program.id).revision == revision


async def test_crashed_during_the_start_fails_it_with_the_programs_own_words(
    health_host: Host,
) -> None:
    program = await create(
        health_host,
        {
            "STUB_STATES": "Ready:200ms,WaitRecover:1500ms,Crashed",
            "STUB_STATE_ERROR": "nil-message-in-the-first-run",
        },
    )
    await health_host.registry.start(program.id)
    seen, failed = await observe_until(health_host, program.id, State.ERROR, 60)
    assert all(p.state is not State.READY for p in seen)
    assert "WaitRecover" in [p.watcher_state for p in seen]
    assert failed.error is not None
    assert 'reported "Crashed"' in failed.error
    assert "nil-message-in-the-first-run" in failed.error
    await eventually(
        lambda: containers_left(health_host.docker, program.id),
        lambda c: not c,
        within=20,
        what="the failed start's container removed",
    )


async def test_waitrecover_then_crashed_after_ready_restarts_with_backoff(
    health_host: Host,
) -> None:
    program = await create(
        health_host,
        {
            "STUB_STATES": "Ready:3s,WaitRecover:2s,Crashed",
            "STUB_STATE_ERROR": "panic:nil-message",
        },
    )
    await health_host.registry.start(program.id)
    await health_host.registry.wait(program.id, State.READY, 60)
    seen, backoff = await observe_until(health_host, program.id, State.BACKOFF, 60)
    assert Health.DEGRADED in [p.health for p in seen if p.watcher_state == "WaitRecover"]
    assert any(p.health is Health.UNHEALTHY and p.watcher_state == "Crashed" for p in seen)
    assert backoff.error is not None
    assert backoff.error.startswith("liveness:")
    assert 'reported "Crashed"' in backoff.error
    assert "panic:nil-message" in backoff.error
    assert backoff.restart_count == 1
    assert backoff.next_restart_at is not None
    # The backoff restart follows: a new run starts again from the stub's beginning.
    await health_host.registry.wait(program.id, State.READY, 60)
    assert health_host.registry.get(program.id).run == backoff.run + 1
    notes = [
        line.text
        async for line in health_host.registry.logs(
            program.id, None, frozenset({LogStream.HOST}), False
        )
    ]
    assert any("liveness" in note for note in notes), notes


async def test_a_program_that_stops_answering_is_restarted_saying_why(health_host: Host) -> None:
    program = await create(health_host, {"STUB_STATES": "Ready:3s,silent"})
    await health_host.registry.start(program.id)
    await health_host.registry.wait(program.id, State.READY, 60)
    seen, backoff = await observe_until(health_host, program.id, State.BACKOFF, 60)
    assert any(p.health is Health.UNHEALTHY for p in seen)
    assert backoff.error is not None
    assert "liveness: no answer" in backoff.error
    assert backoff.restart_count == 1


async def test_on_failure_exit_0_ends_stopped_not_a_crash(health_host: Host) -> None:
    program = await create(
        health_host,
        {"STUB_STATES": "Ready:3s,exit0"},
        restart_policy=RestartPolicy(RestartMode.ON_FAILURE),
    )
    await health_host.registry.start(program.id)
    await health_host.registry.wait(program.id, State.READY, 60)
    stopped = await health_host.registry.wait(program.id, State.STOPPED, 60)
    assert stopped.last_exit_code == 0
    assert stopped.restart_count == 0
    assert stopped.error is None
    await eventually(
        lambda: containers_left(health_host.docker, program.id),
        lambda c: not c,
        within=20,
        what="the exited container removed",
    )


async def test_never_ends_error_on_a_failing_exit(health_host: Host) -> None:
    program = await create(
        health_host,
        {"STUB_EXIT_AFTER": "3s"},
        restart_policy=RestartPolicy(RestartMode.NEVER),
    )
    await health_host.registry.start(program.id)
    await health_host.registry.wait(program.id, State.READY, 60)
    failed = await health_host.registry.wait(program.id, State.ERROR, 60)
    assert failed.error == "exited with code 3 (restart policy: never)"
    assert failed.restart_count == 0
    assert failed.last_exit_code == 3


async def test_a_restart_limit_ends_error_with_the_reason(health_host: Host) -> None:
    program = await create(
        health_host,
        {"STUB_EXIT_AFTER": "2s"},
        restart_policy=RestartPolicy(RestartMode.ALWAYS, max_restarts=2, window_seconds=600),
    )
    await health_host.registry.start(program.id)
    failed = await health_host.registry.wait(program.id, State.ERROR, 120)
    assert failed.restart_count == 2
    assert failed.error is not None
    assert "the restart limit" in failed.error
    assert "exited with code 3" in failed.error


async def test_the_stop_signal_is_the_programs_own(health_host: Host) -> None:
    program = await create(health_host, {}, stop=StopSettings("SIGINT", 5))
    await health_host.registry.start(program.id)
    await health_host.registry.wait(program.id, State.READY, 60)
    await health_host.registry.stop(program.id)
    await health_host.registry.wait(program.id, State.STOPPED, 30)
    out = [
        line.text
        async for line in health_host.registry.logs(
            program.id, None, frozenset({LogStream.STDOUT}), False
        )
    ]
    assert any("received interrupt, exiting 0" in line for line in out), out


async def test_an_adopted_program_is_probed_after_a_host_restart(
    tmp_path: Path,
    stub_binary: bytes,
    docker_client: docker.DockerClient,
    clean_docker: list[str],
) -> None:
    """kill -9 of the Host while READY: the restarted Host adopts the container and goes on
    probing it; when it stops answering, that is a liveness crash."""
    with host_process(tmp_path, "--probe-interval", "0.5") as host:
        async with programs(host.address) as stub:
            program = await stub.CreateProgram(
                pb.CreateProgramRequest(
                    user_id=USER,
                    dockerfile=stub_dockerfile({"STUB_STATES": "Ready:15s,silent"}),
                    src_files={"watcher-stub": stub_binary},
                    readiness=pb.ReadinessCheck(liveness_grace=Duration(seconds=2)),
                )
            )
        clean_docker.append(program.id)
        ready = await start_until_ready(host.address, program.name)
        assert ready.health == pb.HEALTH_HEALTHY
        host.kill9()
        host.start()
        adopted = await state_of(host.address, program.name)
        assert adopted.container_id == ready.container_id
        crashed = await until_state(host.address, program.name, pb.STATE_BACKOFF, 60)
        assert crashed.error_message.startswith("liveness: no answer"), crashed.error_message
        assert crashed.run == ready.run
        async with programs(host.address) as stub:
            await stub.DeleteProgram(pb.DeleteProgramRequest(name=program.name))
        await eventually(
            lambda: containers_left(docker_client, program.id),
            lambda found: not found,
            within=30,
            what="its container removed",
        )
