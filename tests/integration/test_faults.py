"""Nothing lost: `kill -9` of the Host at every stage, and a Docker daemon restart.

Each test runs the real `hershy serve` (runsc) as a process, kills it with
SIGKILL in the middle of something, starts it again on the same data dir and
ports, and checks that every program ends where it should: no duplicate
container, no orphan, no lost program or source, and no running program
restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import grpc
import pytest

from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from tests.e2e.conftest import ServerProcess, free_port, hershy_command, wait_until_serving
from tests.integration.conftest import (
    BASE_IMAGE,
    containers_of,
    eventually,
    force_clean,
    leftovers,
    stub_dockerfile,
)

if TYPE_CHECKING:
    from hershy.v1.program_pb2_grpc import ProgramServiceAsyncStub

pytestmark = pytest.mark.docker

USER = "faults"


@dataclass
class HostProcess:
    """`hershy serve` on fixed ports and a data dir, restartable."""

    base: Path
    grpc_port: int
    http_port: int
    extra: tuple[str, ...]
    server: ServerProcess | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        stderr_path = self.base / f"stderr-{time.monotonic_ns()}.log"
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                [
                    *hershy_command(),
                    "serve",
                    "--data-dir",
                    str(self.base / "data"),
                    "--grpc-addr",
                    self.address,
                    "--http-addr",
                    f"127.0.0.1:{self.http_port}",
                    "--no-auth",  # tokens are tested in tests/e2e/test_auth.py
                    *self.extra,
                ],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.server = ServerProcess(process, self.address, self.base / "data", stderr_path)
        wait_until_serving(self.server)

    def kill9(self) -> None:
        assert self.server is not None
        self.server.process.send_signal(signal.SIGKILL)
        self.server.process.wait(10)

    def stop(self) -> None:
        if self.server is not None and self.server.process.poll() is None:
            self.server.stop_and_check()

    def stderr(self) -> str:
        return "\n".join(path.read_text() for path in sorted(self.base.glob("stderr-*.log")))


@contextlib.contextmanager
def host_process(base: Path, *extra: str) -> Iterator[HostProcess]:
    host = HostProcess(base, free_port(), free_port(), extra)
    host.start()
    try:
        yield host
    finally:
        host.stop()


@contextlib.asynccontextmanager
async def programs(address: str) -> AsyncIterator[ProgramServiceAsyncStub]:
    options = [
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20),
    ]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        yield pb_grpc.ProgramServiceStub(channel)


async def state_of(address: str, name: str) -> pb.Program:
    async with programs(address) as stub:
        return await stub.GetProgram(pb.GetProgramRequest(name=name))


def all_containers(client: docker.DockerClient) -> set[str]:
    return {container.id for container in client.containers.list(all=True)}


@pytest.fixture
def clean_docker(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Program ids a test made; whatever they left is removed (and reported) afterwards."""
    made: list[str] = []
    yield made
    for program_id in made:
        force_clean(docker_client, program_id)


async def create(
    address: str, stub_binary: bytes, dockerfile: str, made: list[str]
) -> tuple[pb.Program, dict[str, bytes]]:
    files = {"watcher-stub": stub_binary}
    async with programs(address) as stub:
        program = await stub.CreateProgram(
            pb.CreateProgramRequest(user_id=USER, dockerfile=dockerfile, src_files=files)
        )
    made.append(program.id)
    return program, files


async def until_state(
    address: str, name: str, state: pb.State.ValueType, within: float
) -> pb.Program:
    program: pb.Program = await eventually(
        lambda: state_of(address, name),
        lambda p: p.state == state,
        within=within,
        what=f"{name} in {pb.State.Name(state)}",
    )
    return program


async def start_until_ready(address: str, name: str) -> pb.Program:
    async with programs(address) as stub:
        await stub.StartProgram(pb.StartProgramRequest(name=name))
    return await until_state(address, name, pb.STATE_READY, 30)


async def source_is_intact(address: str, name: str, files: dict[str, bytes]) -> None:
    async with programs(address) as stub:
        source = await stub.GetProgramSource(pb.GetProgramSourceRequest(name=name))
    assert dict(source.src_files) == files


async def test_kill_9_during_a_build_rebuilds_and_starts_once(
    tmp_path: Path,
    stub_binary: bytes,
    docker_client: docker.DockerClient,
    clean_docker: list[str],
) -> None:
    before = all_containers(docker_client)
    dockerfile = (
        f"FROM {BASE_IMAGE}\nRUN sleep 3\nCOPY watcher-stub /watcher-stub\n"
        'ENTRYPOINT ["/watcher-stub"]\n'
    )
    with host_process(tmp_path) as host:
        program, files = await create(host.address, stub_binary, dockerfile, clean_docker)
        async with programs(host.address) as stub:
            await stub.StartProgram(pb.StartProgramRequest(name=program.name))
        await asyncio.sleep(1.5)  # inside the RUN step
        assert (await state_of(host.address, program.name)).state == pb.STATE_BUILDING
        host.kill9()
        host.start()
        ready = await until_state(host.address, program.name, pb.STATE_READY, 60)
        assert ready.run == 1, "the cut-off build is redone in its own run"
        await source_is_intact(host.address, program.name, files)
        running = containers_of(docker_client, program.id)
        assert [c.id for c in running] == [ready.container_id], leftovers(docker_client, program.id)
        # The killed build's step container is gone too: only the program's container is new.
        await eventually(
            lambda: all_containers(docker_client) - before,
            lambda new: new == {ready.container_id},
            within=10,
            what="no container besides the program's",
        )


async def test_kill_9_during_start_starts_exactly_one_container(
    tmp_path: Path,
    stub_binary: bytes,
    docker_client: docker.DockerClient,
    clean_docker: list[str],
) -> None:
    with host_process(tmp_path) as host:
        dockerfile = stub_dockerfile({"STUB_READY_DELAY": "3s"})
        program, files = await create(host.address, stub_binary, dockerfile, clean_docker)
        async with programs(host.address) as stub:
            await stub.StartProgram(pb.StartProgramRequest(name=program.name))
        starting = await until_state(host.address, program.name, pb.STATE_STARTING, 30)
        await eventually(
            lambda: containers_of(docker_client, program.id),
            bool,
            within=15,
            what="the starting container exists",
        )
        host.kill9()
        host.start()
        ready = await until_state(host.address, program.name, pb.STATE_READY, 30)
        assert ready.run == starting.run
        assert ready.restart_count == 0
        await source_is_intact(host.address, program.name, files)
        assert [c.id for c in containers_of(docker_client, program.id)] == [ready.container_id]


async def test_kill_9_while_ready_adopts_the_running_container(
    tmp_path: Path,
    stub_binary: bytes,
    docker_client: docker.DockerClient,
    clean_docker: list[str],
) -> None:
    with host_process(tmp_path) as host:
        program, files = await create(host.address, stub_binary, stub_dockerfile(), clean_docker)
        ready = await start_until_ready(host.address, program.name)
        started_at = docker_client.containers.get(ready.container_id).attrs["State"]["StartedAt"]
        host.kill9()
        host.start()
        await asyncio.sleep(1)  # let the Host look at the container
        after = await state_of(host.address, program.name)
        assert after.state == pb.STATE_READY
        assert after.container_id == ready.container_id
        assert (after.run, after.restart_count) == (ready.run, 0)
        container = docker_client.containers.get(ready.container_id)
        assert container.status == "running"
        assert container.attrs["State"]["StartedAt"] == started_at, "it was restarted"
        assert [c.id for c in containers_of(docker_client, program.id)] == [ready.container_id]
        await source_is_intact(host.address, program.name, files)


async def test_kill_9_during_stop_completes_the_stop(
    tmp_path: Path,
    stub_binary: bytes,
    docker_client: docker.DockerClient,
    clean_docker: list[str],
) -> None:
    with host_process(tmp_path, "--stop-grace", "4") as host:
        dockerfile = stub_dockerfile({"STUB_IGNORE_SIGTERM": "1"})
        program, files = await create(host.address, stub_binary, dockerfile, clean_docker)
        async with programs(host.address) as stub:
            await stub.StartProgram(pb.StartProgramRequest(name=program.name))
            await until_state(host.address, program.name, pb.STATE_READY, 30)
            await stub.StopProgram(pb.StopProgramRequest(name=program.name))
        await asyncio.sleep(1)  # SIGTERM sent and ignored: the stop waits out its grace
        assert (await state_of(host.address, program.name)).state == pb.STATE_STOPPING
        host.kill9()
        host.start()
        stopped = await until_state(host.address, program.name, pb.STATE_STOPPED, 30)
        assert stopped.container_id == ""
        assert containers_of(docker_client, program.id) == []
        await source_is_intact(host.address, program.name, files)


async def test_orphans_of_this_host_are_reaped_and_others_left_alone(
    tmp_path: Path,
    stub_binary: bytes,
    docker_client: docker.DockerClient,
    clean_docker: list[str],
) -> None:
    with host_process(tmp_path) as host:
        program, _ = await create(host.address, stub_binary, stub_dockerfile(), clean_docker)
        ready = await start_until_ready(host.address, program.name)
        labels: dict[str, Any] = docker_client.containers.get(ready.container_id).labels
        host_id = labels["dev.hershy.managed"]
        host.kill9()
        # While the Host is down: an orphan of this Host, and a container of another Host.
        image = docker_client.images.get(BASE_IMAGE)
        orphan = docker_client.containers.create(
            image.id,
            ["sleep", "600"],
            labels={
                "dev.hershy.managed": host_id,
                "dev.hershy.program": "prog-gone",
                "dev.hershy.run": "1",
            },
        )
        stranger = docker_client.containers.create(
            image.id,
            ["sleep", "600"],
            labels={"dev.hershy.managed": "another-host", "dev.hershy.program": "prog-x"},
        )
        try:
            host.start()
            await eventually(
                lambda: {c.id for c in docker_client.containers.list(all=True)},
                lambda ids: orphan.id not in ids,
                within=15,
                what="the orphan is reaped",
            )
            assert docker_client.containers.get(stranger.id).id == stranger.id
            after = await state_of(host.address, program.name)
            assert after.container_id == ready.container_id
        finally:
            for container in (orphan, stranger):
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)


def restart_dockerd() -> None:
    """Stop the Docker daemon and start it again, as `scripts/setup-host.sh` does."""
    pid = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True).stdout.split()
    assert pid, "dockerd is not running"
    os.kill(int(pid[0]), signal.SIGTERM)
    for _ in range(150):
        if subprocess.run(["pidof", "dockerd"], capture_output=True).returncode != 0:
            break
        time.sleep(0.2)
    with open("/var/log/dockerd.log", "ab") as log:
        subprocess.Popen(
            ["dockerd"], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
    for _ in range(150):
        if subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    pytest.fail("dockerd did not come back within 30 s")


async def test_a_docker_daemon_restart_loses_nothing(
    tmp_path: Path,
    stub_binary: bytes,
    docker_client: docker.DockerClient,
    clean_docker: list[str],
) -> None:
    with host_process(tmp_path, "--backoff", "0.5", "2") as host:
        program, _ = await create(host.address, stub_binary, stub_dockerfile(), clean_docker)
        ready = await start_until_ready(host.address, program.name)
        restart_dockerd()
        client = docker.DockerClient(base_url="unix:///var/run/docker.sock")
        try:
            # live-restore: the container ran on through the daemon's restart.
            container = client.containers.get(ready.container_id)
            assert container.status == "running"
            after = await state_of(host.address, program.name)
            assert (after.state, after.container_id) == (pb.STATE_READY, ready.container_id)
            # The Host's events stream reconnected: a crash now is still seen.
            await asyncio.sleep(2)
            container.kill()
            crashed: pb.Program = await eventually(
                lambda: state_of(host.address, program.name),
                lambda p: p.restart_count >= 1,
                within=20,
                what="the Host sees the crash after the daemon came back",
            )
            assert crashed.restart_count == 1
            back = await until_state(host.address, program.name, pb.STATE_READY, 30)
            assert back.container_id != ready.container_id
        finally:
            client.close()


# --- the log has no gaps: output written while the Host was down (finding 4, 7b) ---------------

#: A program on busybox: the WatcherAPI stub in the background, numbered lines in front,
#: `tick <container> <n>` (the hostname is the container's short id: lines of two containers
#: of one run stay apart). TICKS lines (default: for ever), TICK_SLEEP apart; BURST: once the
#: stub answers, print that many lines at once and exit 3 (dying right after its last lines).
TICKER_SCRIPT = b"""trap 'exit 0' TERM
h=$(hostname)
/watcher-stub &
if [ -n "$BURST" ]; then
  until wget -q -O /dev/null http://127.0.0.1:8080/watcher/status; do sleep 0.05; done
  i=0
  while [ "$i" -lt "$BURST" ]; do i=$((i+1)); echo "tick $h $i"; done
  exit 3
fi
i=0
while [ "$i" -lt "${TICKS:-1000000000}" ]; do
  i=$((i+1))
  echo "tick $h $i"
  sleep "${TICK_SLEEP:-0.05}"
done
exit 3
"""


def ticker_dockerfile(**env: str) -> str:
    lines = [f"FROM {BASE_IMAGE}", "COPY watcher-stub /watcher-stub", "COPY ticker.sh /ticker.sh"]
    lines += [f"ENV {name}={value}" for name, value in env.items()]
    lines.append('ENTRYPOINT ["/bin/sh", "/ticker.sh"]')
    return "\n".join(lines) + "\n"


async def create_ticker(
    address: str, stub_binary: bytes, made: list[str], **env: str
) -> pb.Program:
    files = {"watcher-stub": stub_binary, "ticker.sh": TICKER_SCRIPT}
    async with programs(address) as stub:
        program = await stub.CreateProgram(
            pb.CreateProgramRequest(
                user_id=USER, dockerfile=ticker_dockerfile(**env), src_files=files
            )
        )
    made.append(program.id)
    return program


async def log_entries(address: str, name: str) -> list[pb.LogEntry]:
    async with programs(address) as stub:
        return [entry async for entry in stub.ReadProgramLogs(pb.ReadProgramLogsRequest(name=name))]


def ticks(entries: list[pb.LogEntry], run: int | None = None) -> list[int]:
    """The numbers of the `tick <container> N` lines in the log (of one run), in log order."""
    return [
        int(entry.line.split()[-1])
        for entry in entries
        if entry.stream == pb.LOG_STREAM_STDOUT
        and entry.line.startswith("tick ")
        and (run is None or entry.run == run)
    ]


def docker_ticks(client: docker.DockerClient, container_id: str) -> list[int]:
    output = client.containers.get(container_id).logs(stdout=True, stderr=False).decode()
    return [int(line.split()[-1]) for line in output.splitlines() if line.startswith("tick ")]


def assert_once_in_order(numbers: list[int], at_least: int) -> None:
    """1, 2, ... n with nothing missing or repeated, and n >= at_least."""
    assert numbers == list(range(1, len(numbers) + 1)), (
        f"gaps or repeats: {[n for i, n in enumerate(numbers, 1) if n != i][:10]} "
        f"(first of {len(numbers)})"
    )
    assert len(numbers) >= at_least, f"{len(numbers)} lines copied, Docker had {at_least}"


async def test_output_written_while_the_host_is_down_is_copied_once_across_restarts(
    tmp_path: Path,
    stub_binary: bytes,
    docker_client: docker.DockerClient,
    clean_docker: list[str],
) -> None:
    with host_process(tmp_path) as host:
        program = await create_ticker(host.address, stub_binary, clean_docker, TICK_SLEEP="0.02")
        ready = await start_until_ready(host.address, program.name)
        await asyncio.sleep(1)
        for pause in (2.0, 0.3, 1.0):  # the second kill falls in the middle of back-filling
            host.kill9()
            await asyncio.sleep(pause)  # it prints on meanwhile
            host.start()
            await asyncio.sleep(0.4)
        in_docker = docker_ticks(docker_client, ready.container_id)
        entries: list[pb.LogEntry] = await eventually(
            lambda: log_entries(host.address, program.name),
            lambda found: len(ticks(found)) >= len(in_docker),
            within=20,
            what="the log caught up with docker logs",
        )
        assert_once_in_order(ticks(entries), at_least=len(in_docker))
        after = await state_of(host.address, program.name)
        assert (after.state, after.container_id) == (pb.STATE_READY, ready.container_id)


async def test_a_container_that_died_while_the_host_was_down_has_all_its_lines_then_its_exit(
    tmp_path: Path,
    stub_binary: bytes,
    docker_client: docker.DockerClient,
    clean_docker: list[str],
) -> None:
    with host_process(tmp_path, "--backoff", "60", "60") as host:
        program = await create_ticker(
            host.address, stub_binary, clean_docker, TICKS="60", TICK_SLEEP="0.05"
        )
        ready = await start_until_ready(host.address, program.name)
        host.kill9()
        await eventually(
            lambda: docker_client.containers.get(ready.container_id).status,
            lambda status: status == "exited",
            within=30,
            what="the container ran to its end while the Host was down",
        )
        assert docker_ticks(docker_client, ready.container_id) == list(range(1, 61))
        host.start()
        crashed = await until_state(host.address, program.name, pb.STATE_BACKOFF, 30)
        assert (crashed.last_exit_code, crashed.restart_count) == (3, 1)
        entries = await log_entries(host.address, program.name)
        assert_once_in_order(ticks(entries, ready.run), at_least=60)
        last_tick = max(
            i
            for i, e in enumerate(entries)
            if e.line.endswith(" 60") and e.line.startswith("tick ")
        )
        exit_note = next(
            i
            for i, e in enumerate(entries)
            if e.stream == pb.LOG_STREAM_HOST and e.line.startswith("ContainerExited")
        )
        assert exit_note > last_tick, "the exit is noted before the run's last lines"
        assert entries[exit_note].time.ToNanoseconds() >= entries[last_tick].time.ToNanoseconds()


async def test_a_container_that_exits_at_once_has_its_exit_noted_after_its_lines(
    tmp_path: Path,
    stub_binary: bytes,
    docker_client: docker.DockerClient,
    clean_docker: list[str],
) -> None:
    with host_process(tmp_path, "--backoff", "60", "60") as host:
        program = await create_ticker(host.address, stub_binary, clean_docker, BURST="300")
        async with programs(host.address) as stub:
            await stub.StartProgram(pb.StartProgramRequest(name=program.name))
        crashed = await until_state(host.address, program.name, pb.STATE_BACKOFF, 60)
        assert crashed.last_exit_code == 3
        entries = await log_entries(host.address, program.name)
        assert_once_in_order(ticks(entries, crashed.run), at_least=300)
        run = [e for e in entries if e.run == crashed.run]
        last_tick = max(
            i for i, e in enumerate(run) if e.line.endswith(" 300") and e.line.startswith("tick ")
        )
        exit_note = next(
            i
            for i, e in enumerate(run)
            if e.stream == pb.LOG_STREAM_HOST and e.line.startswith("ContainerExited")
        )
        assert exit_note > last_tick, "the exit is noted before the run's last lines"
        assert run[exit_note].time.ToNanoseconds() >= run[last_tick].time.ToNanoseconds()
