"""Chaos: a mixed workload on the real engine and runsc, the Host killed with SIGKILL at random.

About ten programs (busybox, the WatcherAPI stub in the background, numbered
lines on stdout) are created, started, stopped, restarted and deleted at
random while `hershy serve` is killed with SIGKILL at random moments, at least
three times, and started again on the same data dir. The randomness is seeded
and the seed printed (`HERSHY_CHAOS_SEED=<seed>` replays a run's choices).

After every restart: the Host came back by itself and reports ready; no
acknowledged request is lost; no deleted program returns; no duplicate or
orphan container or image carries this Host's label; every program's state
matches Docker; every line each container printed (before and during the
outages) is in its program's log exactly once, in order. At the end, a Watch
resumed from a revision before the first kill replays every change, without
a gap, up to the current state.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import docker
import grpc
import pytest

from hershy.adapters.docker.compose import LABEL_MANAGED, LABEL_PROGRAM
from hershy.v1 import program_pb2 as pb
from tests.integration.conftest import eventually, force_clean, images_of_host
from tests.integration.test_faults import (
    HostProcess,
    create_ticker,
    docker_ticks,
    host_process,
    log_entries,
    programs,
)

pytestmark = pytest.mark.docker

KILLS = 4
MAX_PROGRAMS = 10
#: Resting states: nothing under way once every program is in one of them.
AT_REST = {pb.STATE_CREATED, pb.STATE_READY, pb.STATE_STOPPED, pb.STATE_ERROR}
CALL_TIMEOUT = 20.0


class Want(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    GONE = "gone"
    #: In ERROR (e.g. another Host on this shared daemon took its port): any state is right.
    ANY = "any"


@dataclass
class Expected:
    """What the acknowledged requests say of a program; `uncertain` while one was cut off."""

    want: Want
    uncertain: bool = False


@dataclass
class Workload:
    rng: random.Random
    stub_binary: bytes
    made: list[str]
    expected: dict[str, Expected] = field(default_factory=dict)
    acknowledged: int = 0
    #: Creates cut off by a kill: the program may or may not exist.
    uncertain_creates: int = 0

    def live(self) -> list[str]:
        return [name for name, e in self.expected.items() if e.want is not Want.GONE]

    async def step(self, address: str) -> None:
        """One random request; its effect is recorded only once it is acknowledged."""
        live = self.live()
        choice = self.rng.random()
        if not live or (choice < 0.2 and len(live) < MAX_PROGRAMS):
            self.uncertain_creates += 1
            program = await create_ticker(address, self.stub_binary, self.made, TICK_SLEEP="0.1")
            self.uncertain_creates -= 1
            self.expected[program.name] = Expected(Want.CREATED)
            self.acknowledged += 1
            return
        name = self.rng.choice(live)
        verb, want = self.rng.choice(
            [
                ("start", Want.RUNNING),
                ("start", Want.RUNNING),
                ("stop", Want.STOPPED),
                ("restart", Want.RUNNING),
                ("delete", Want.GONE),
            ]
        )
        before = self.expected[name]
        # In flight: if the Host dies before answering, either outcome is right.
        self.expected[name] = Expected(before.want, uncertain=True)
        try:
            async with programs(address) as stub:
                call: Any = {
                    "start": lambda: stub.StartProgram(pb.StartProgramRequest(name=name)),
                    "stop": lambda: stub.StopProgram(pb.StopProgramRequest(name=name)),
                    "restart": lambda: stub.RestartProgram(pb.RestartProgramRequest(name=name)),
                    "delete": lambda: stub.DeleteProgram(pb.DeleteProgramRequest(name=name)),
                }[verb]
                await asyncio.wait_for(call(), CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                self.expected[name] = before  # refused: nothing changed
                return
            raise
        self.expected[name] = Expected(want)
        self.acknowledged += 1

    async def populate(self, address: str, *, create: int, start: int) -> None:
        names = []
        for _ in range(create):
            program = await create_ticker(address, self.stub_binary, self.made, TICK_SLEEP="0.1")
            self.expected[program.name] = Expected(Want.CREATED)
            names.append(program.name)
        async with programs(address) as stub:
            for name in names[:start]:
                await stub.StartProgram(pb.StartProgramRequest(name=name))
                self.expected[name] = Expected(Want.RUNNING)
        self.acknowledged += create + start

    async def run(self, address: str) -> None:
        """Requests one after another, until cancelled (by the kill)."""
        while True:
            try:
                await self.step(address)
            except (grpc.aio.AioRpcError, TimeoutError):
                return  # the Host went away under a request: it stays uncertain
            await asyncio.sleep(self.rng.uniform(0.0, 0.4))


async def ready_within(host: HostProcess, seconds: float) -> None:
    """The Host reports ready on /readyz (recovery done) by itself."""
    url = f"http://127.0.0.1:{host.http_port}/readyz"
    deadline = time.monotonic() + seconds
    last = "no answer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            assert host.server is not None
            assert host.server.process.poll() is None, f"the Host exited:\n{host.stderr()[-4000:]}"
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url) as response:
                    if response.status == 200:
                        return
                    last = f"{response.status} {await response.text()}"
            await asyncio.sleep(0.2)
    pytest.fail(f"/readyz did not answer 200 within {seconds:g} s (last: {last})")


async def all_programs(address: str) -> dict[str, pb.Program]:
    async with programs(address) as stub:
        page = await stub.ListPrograms(pb.ListProgramsRequest(page_size=1000))
    return {program.name: program for program in page.programs}


async def settled(address: str) -> dict[str, pb.Program]:
    found: dict[str, pb.Program] = await eventually(
        lambda: all_programs(address),
        lambda listed: all(p.state in AT_REST for p in listed.values()),
        within=120,
        interval=0.5,
        what="every program at rest",
    )
    return found


def check_acknowledged(workload: Workload, listed: dict[str, pb.Program]) -> None:
    for name, expected in workload.expected.items():
        program = listed.get(name)
        if expected.uncertain or expected.want is Want.ANY:
            continue
        if expected.want is Want.GONE:
            assert program is None, f"{name} was deleted (acknowledged) but came back"
            continue
        assert program is not None, f"{name} was lost (its last request was acknowledged)"
        wanted = {
            Want.CREATED: {pb.STATE_CREATED},
            Want.RUNNING: {pb.STATE_READY},
            Want.STOPPED: {pb.STATE_STOPPED},
        }[expected.want]
        if program.state == pb.STATE_ERROR and "port is already allocated" in program.error_message:
            continue  # another Host on this shared daemon took its port: not recovery's doing
        assert program.state in wanted, (
            f"{name}: {pb.State.Name(program.state)} ({program.error_message}), "
            f"but its last acknowledged request wants it {expected.want.value}"
        )
    unknown = [name for name in listed if name not in workload.expected]
    assert len(unknown) <= workload.uncertain_creates, f"{unknown} appeared from nowhere"
    for name in unknown:  # a create the kill cut off, committed before it: ours after all
        workload.expected[name] = Expected(Want.CREATED, uncertain=True)
        workload.made.append(listed[name].id)
    workload.uncertain_creates = 0


def settle_uncertain(workload: Workload, listed: dict[str, pb.Program]) -> None:
    """What was uncertain is settled now: take the state the Host reports."""
    wants = {pb.STATE_READY: Want.RUNNING, pb.STATE_STOPPED: Want.STOPPED}
    wants[pb.STATE_CREATED] = Want.CREATED
    for name, expected in workload.expected.items():
        program = listed.get(name)
        if expected.uncertain or (program is not None and program.state == pb.STATE_ERROR):
            expected.uncertain = False
            expected.want = Want.GONE if program is None else wants.get(program.state, Want.ANY)


def check_docker(client: docker.DockerClient, host_id: str, listed: dict[str, pb.Program]) -> None:
    managed = {"label": [f"{LABEL_MANAGED}={host_id}"]}
    by_program: dict[str, list[Any]] = defaultdict(list)
    for container in client.containers.list(all=True, filters=managed):
        by_program[container.labels.get(LABEL_PROGRAM, "")].append(container)
    ids = {program.id: program for program in listed.values()}
    orphans = {pid: [c.short_id for c in cs] for pid, cs in by_program.items() if pid not in ids}
    assert not orphans, f"containers no program owns: {orphans}"
    for program in listed.values():
        containers = by_program.get(program.id, [])
        if program.state == pb.STATE_READY:
            assert [c.id for c in containers] == [program.container_id], (
                f"{program.id} is READY with {program.container_id[:12]}, Docker has "
                f"{[(c.short_id, c.status) for c in containers]}"
            )
            assert containers[0].status == "running"
        elif program.state != pb.STATE_ERROR:
            assert containers == [], f"{program.id} is {pb.State.Name(program.state)} with " + str(
                [(c.short_id, c.status) for c in containers]
            )
    images = {
        pid: [image.short_id for image in found]
        for pid, found in images_of_host(client, host_id).items()
    }
    orphan_images = {pid: found for pid, found in images.items() if pid not in ids}
    assert not orphan_images, f"images no program owns: {orphan_images}"
    duplicates = {pid: found for pid, found in images.items() if len(found) > 1}
    assert not duplicates, f"programs with more than one image: {duplicates}"


async def check_logs(
    address: str, client: docker.DockerClient, workload: Workload, listed: dict[str, pb.Program]
) -> None:
    """Each container's `tick <container> n` lines: 1..n once each, in order, none missing."""
    for program in listed.values():
        if program.state == pb.STATE_READY:
            in_docker = len(docker_ticks(client, program.container_id))
            current = program.container_id[:12]

            def caught_up(
                found: list[pb.LogEntry], current: str = current, n: int = in_docker
            ) -> bool:
                return len(by_container(found).get(current, [])) >= n

            def read(name: str = program.name) -> Awaitable[list[pb.LogEntry]]:
                return log_entries(address, name)

            entries = await eventually(
                read,
                caught_up,
                within=20,
                what=f"{program.name}'s log caught up with docker logs",
            )
        else:
            entries = await log_entries(address, program.name)
        for container, numbers in by_container(entries).items():
            assert numbers == list(range(1, len(numbers) + 1)), (
                f"{program.name}, container {container}: lines missing or repeated: "
                f"{[n for i, n in enumerate(numbers, 1) if n != i][:10]} of {len(numbers)}"
            )
        if program.state == pb.STATE_READY:
            assert len(by_container(entries)[program.container_id[:12]]) >= in_docker


def by_container(entries: list[pb.LogEntry]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = defaultdict(list)
    for entry in entries:
        parts = entry.line.split()
        if entry.stream == pb.LOG_STREAM_STDOUT and len(parts) == 3 and parts[0] == "tick":
            found[parts[1]].append(int(parts[2]))
    return found


async def current_revision(address: str) -> int:
    async with programs(address) as stub:
        stream = stub.WatchPrograms(pb.WatchProgramsRequest())
        async for change in stream:
            if change.type == pb.WatchProgramsResponse.TYPE_SYNCED:
                stream.cancel()
                return change.revision
    raise AssertionError("the Watch ended before SYNCED")


async def check_watch_replay(
    address: str, since: int, listed: dict[str, pb.Program], deleted: set[str]
) -> None:
    """Every change after `since`, each revision once and in order, ending in today's state."""
    latest = await current_revision(address)
    revisions: list[int] = []
    last: dict[str, pb.Program] = {}
    async with programs(address) as stub:
        stream = stub.WatchPrograms(pb.WatchProgramsRequest(resume_revision=since))
        async with asyncio.timeout(30):
            async for change in stream:
                assert change.type != pb.WatchProgramsResponse.TYPE_RESYNC
                revisions.append(change.revision)
                last[change.program.name] = change.program
                if change.revision >= latest:
                    break
        stream.cancel()
    assert revisions == list(range(since + 1, latest + 1)), "a gap in the replay"
    for name, program in listed.items():
        if name in last:
            assert last[name].state == program.state, f"{name}: the replay ends elsewhere"
    for name in deleted:
        if name in last:
            assert last[name].state == pb.STATE_DELETED, f"{name}: deleted, not in the replay"


@pytest.fixture
def made(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Program ids the test made; whatever they left is removed afterwards."""
    ids: list[str] = []
    yield ids
    for program_id in ids:
        force_clean(docker_client, program_id)


async def test_chaos_kill_9_at_random_loses_nothing(
    tmp_path: Path,
    stub_binary: bytes,
    docker_client: docker.DockerClient,
    made: list[str],
) -> None:
    seed = int(os.environ.get("HERSHY_CHAOS_SEED", time.time_ns() % 2**31))
    print(f"chaos seed: {seed} (HERSHY_CHAOS_SEED={seed} replays its choices)")
    rng = random.Random(seed)
    workload = Workload(rng, stub_binary, made)
    started = time.monotonic()
    with host_process(tmp_path, "--backoff", "1", "4", "--stop-grace", "2") as host:
        # A first set of programs, most of them running, then the revision to resume from.
        await workload.populate(host.address, create=7, start=5)
        listed = await settled(host.address)
        resume_from = max(p.revision for p in listed.values())
        host_id: str | None = None
        for kill in range(1, KILLS + 1):
            traffic = asyncio.create_task(workload.run(host.address))
            await asyncio.sleep(rng.uniform(0.5, 4.0))
            host.kill9()
            traffic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await traffic
            await asyncio.sleep(rng.uniform(0.0, 2.0))  # down: containers print on, die, ...
            host.start()
            await ready_within(host, 120)
            listed = await settled(host.address)
            print(
                f"kill {kill}: {len(listed)} programs, "
                f"{sum(p.state == pb.STATE_READY for p in listed.values())} READY, "
                f"{workload.acknowledged} requests acknowledged so far"
            )
            check_acknowledged(workload, listed)
            if host_id is None:
                for program in listed.values():
                    if program.container_id:
                        labels = docker_client.containers.get(program.container_id).labels
                        host_id = labels[LABEL_MANAGED]
                        break
            if host_id is not None:
                check_docker(docker_client, host_id, listed)
            await check_logs(host.address, docker_client, workload, listed)
            settle_uncertain(workload, listed)
        deleted = {name for name, e in workload.expected.items() if e.want is Want.GONE}
        await check_watch_replay(host.address, resume_from, listed, deleted)
        # Clean up through the Host: delete what is left and check Docker holds nothing.
        async with programs(host.address) as stub:
            for name in listed:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.DeleteProgram(pb.DeleteProgramRequest(name=name))
        remaining: dict[str, pb.Program] = await eventually(
            lambda: all_programs(host.address),
            lambda left: not left,
            within=60,
            interval=0.5,
            what="every program deleted",
        )
        assert remaining == {}
        if host_id is not None:
            managed = {"label": [f"{LABEL_MANAGED}={host_id}"]}
            assert docker_client.containers.list(all=True, filters=managed) == []
            assert images_of_host(docker_client, host_id) == {}
    print(
        f"chaos: {KILLS} kills, {workload.acknowledged} acknowledged requests, "
        f"{time.monotonic() - started:.0f} s"
    )
