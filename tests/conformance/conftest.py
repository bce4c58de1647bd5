"""The runtime conformance suite's fixtures: one `Subject` per runtime adapter.

Every test drives a runtime through the port alone (`ProgramRuntime`:
`execute`, `reap`, `watcher_endpoint`, `runtime`, and its lifetime as an
async context manager), with a recording `Outbox` standing in for the
program's supervisor. What a test cannot do through the port (save a
program's source, make a container crash, look at what the runtime still
holds) each Subject does its own way, in the few methods below; a new
adapter (a cluster) passes the suite by adding a Subject.

The Docker subject runs on the REAL engine and runsc (marked `docker`; it
fails, never skips, without them), with a Host id of its own, so its reaping
never touches anything another Host (or test) made; every program a test
made is torn down at its end and checked gone, and force-removed if not.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import docker
import pytest

from hershy.adapters.docker.port_pool import PortPool
from hershy.adapters.docker.runtime import DockerEffectHandler, DockerSettings
from hershy.adapters.fake_runtime import FakeBehaviour, FakeEffectHandler, FakeWorld
from hershy.adapters.kubernetes.runtime import KubernetesRuntime
from hershy.adapters.kubernetes.settings import KubernetesSettings
from hershy.adapters.log_files import FileLogStore
from hershy.adapters.source_files import FileSourceStore
from hershy.domain import effects as fx
from hershy.domain import events as ev
from hershy.domain.model import Resources
from hershy.domain.validation import ProgramSource, build_id
from hershy.service.ports import ProgramRuntime
from tests.integration.conftest import (
    BASE_IMAGE,
    docker_client,
    force_clean,
    leftovers,
    stub_binary,
    stub_dockerfile,
    unmount_left_state_volumes,
)
from tests.kubernetes.cluster import (
    Cluster,
    cluster_leftovers,
    force_clean_cluster,
    kubernetes_cluster,
    pods_of,
)

__all__ = ["docker_client", "kubernetes_cluster", "stub_binary", "unmount_left_state_volumes"]

E = TypeVar("E", bound=ev.EffectResult)

#: Small programs: the contract does not depend on their size.
RESOURCES = Resources(memory_bytes=128 * 1024 * 1024, state_bytes=16 * 1024 * 1024)
USER = "conformance"
#: The longest any one step may take on a loaded machine (builds and starts under runsc).
STEP_SECONDS = 120.0
#: The Docker runtime's wait for a WatcherAPI to answer (the stub answers within a second).
READY_TIMEOUT = 20.0


class Kind(enum.Enum):
    """The programs a test asks for; each subject makes them its own way."""

    #: Builds, starts, and its WatcherAPI answers.
    SERVES = "serves"
    #: Its build fails.
    FAILING_BUILD = "failing build"
    #: Its build takes minutes.
    SLOW_BUILD = "slow build"
    #: Its container is created, but its WatcherAPI does not answer for minutes.
    SLOW_START = "slow start"
    #: Its container is created, but its WatcherAPI never answers (within the ready timeout).
    NEVER_READY = "never ready"


class RecordingOutbox:
    """A supervisor's stand-in: records every result, in order."""

    def __init__(self) -> None:
        self.events: list[ev.EffectResult] = []
        self._changed = asyncio.Event()
        self._read = 0

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def emit(self, event: ev.EffectResult) -> None:
        self.events.append(event)
        self._changed.set()

    def of(self, kind: type[E]) -> list[E]:
        return [event for event in self.events if isinstance(event, kind)]

    async def next(self, kind: type[E], within: float = STEP_SECONDS) -> E:
        """The first `kind` event not returned before (waiting for it)."""
        async with asyncio.timeout(within):
            while True:
                for index in range(self._read, len(self.events)):
                    event = self.events[index]
                    if isinstance(event, kind):
                        self._read = index + 1
                        return event
                self._changed.clear()
                await self._changed.wait()


async def execute(
    runtime: ProgramRuntime, program_id: str, effect: fx.HandledEffect, outbox: RecordingOutbox
) -> None:
    """As the supervisor runs an effect: raising is the effect's failure event."""
    try:
        await runtime.execute(program_id, effect, outbox)
    except Exception as error:
        failure = fx.failure_of(effect, outbox.now(), str(error) or type(error).__name__)
        if failure is not None:
            outbox.emit(failure)


class Subject(abc.ABC):
    """One runtime adapter under test, and what the suite needs beside its port."""

    name: str
    runtime: ProgramRuntime

    def __init__(self, data_dir: Path) -> None:
        self.sources = FileSourceStore(data_dir)
        self.logs = FileLogStore(self.sources.root)
        self.programs: list[str] = []
        self._stack = contextlib.AsyncExitStack()

    async def open(self) -> None:
        self.runtime = await self._stack.enter_async_context(self.new_runtime())

    async def restart_host(self) -> None:
        """The Host goes away (its runtime closes) and comes back: a new runtime instance."""
        await self._stack.aclose()
        self._stack = contextlib.AsyncExitStack()
        await self.open()

    async def close(self) -> None:
        await self._stack.aclose()
        self.logs.close()

    async def program(self, kind: Kind = Kind.SERVES) -> tuple[str, fx.Build]:
        """A new program of `kind`, its source saved; and the effect that builds it."""
        program_id = f"conf-{secrets.token_hex(5)}"
        source = self.source(kind)
        await self.sources.save(program_id, source)
        self.programs.append(program_id)
        return program_id, fx.Build(1, build_id(source), USER)

    @abc.abstractmethod
    def new_runtime(self) -> contextlib.AbstractAsyncContextManager[ProgramRuntime]:
        """A runtime instance on the same world (the daemon, the cluster) as before."""

    @abc.abstractmethod
    def source(self, kind: Kind) -> ProgramSource: ...

    @abc.abstractmethod
    async def crash(self, program_id: str) -> int:
        """Make the program's running container die, not through the runtime; its exit code."""

    @abc.abstractmethod
    async def containers(self, program_id: str) -> list[str]:
        """The ids of the program's containers that exist (running or not)."""

    @abc.abstractmethod
    async def leftovers(self, program_id: str) -> list[str]:
        """What the runtime still holds of the program besides its source: containers,
        images, its `/state` volume; described (empty: nothing)."""

    async def folder_left(self, program_id: str) -> bool:
        return self.sources.program_dir(program_id).exists()

    @abc.abstractmethod
    async def force_clean(self, program_id: str) -> None:
        """Remove by force what a failed test left."""


class FakeSubject(Subject):
    name = "fake"

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.behaviour = FakeBehaviour(serve_watcher=True)
        self.world = FakeWorld(PortPool())
        self._current: FakeEffectHandler | None = None

    @contextlib.asynccontextmanager
    async def new_runtime(self) -> AsyncIterator[ProgramRuntime]:
        handler = FakeEffectHandler(self.sources, self.logs, self.behaviour, world=self.world)
        async with handler:
            self._current = handler
            yield handler

    def source(self, kind: Kind) -> ProgramSource:
        # The fake reads no Dockerfile: its knobs make the program of each kind.
        self.behaviour.build_delay = 600.0 if kind is Kind.SLOW_BUILD else 0.0
        self.behaviour.ready_delay = 600.0 if kind is Kind.SLOW_START else 0.0
        self.behaviour.failing_builds = 1 if kind is Kind.FAILING_BUILD else 0
        self.behaviour.never_ready_starts = 1 if kind is Kind.NEVER_READY else 0
        return ProgramSource(f"FROM scratch\n# {kind.value}\n".encode(), {"app": b"x"})

    async def crash(self, program_id: str) -> int:
        assert self._current is not None
        self._current.crash(program_id, 137)
        return 137

    async def containers(self, program_id: str) -> list[str]:
        return self.world.containers_of(program_id)

    async def leftovers(self, program_id: str) -> list[str]:
        found = [f"container {cid}" for cid in self.world.containers_of(program_id)]
        return found + [f"image {image}" for image in self.world.images_of(program_id)]

    async def force_clean(self, program_id: str) -> None:
        self.world.remove_runs_up_to(program_id, 2**62)
        self.world.remove_images_of(program_id)


class DockerSubject(Subject):
    name = "docker"

    def __init__(self, data_dir: Path, client: docker.DockerClient, stub: bytes) -> None:
        super().__init__(data_dir)
        self.client = client
        self.stub = stub
        # A Host of its own: reaping must never touch another Host's containers.
        self.settings = DockerSettings(
            host_id=f"conformance-{secrets.token_hex(4)}", ready_timeout=READY_TIMEOUT, stop_grace=2
        )

    def new_runtime(self) -> contextlib.AbstractAsyncContextManager[ProgramRuntime]:
        return DockerEffectHandler(self.settings, self.sources, self.logs, PortPool())

    def source(self, kind: Kind) -> ProgramSource:
        stub = {"watcher-stub": self.stub}
        match kind:
            case Kind.SERVES:
                return ProgramSource(stub_dockerfile().encode(), stub)
            case Kind.SLOW_START:
                return ProgramSource(stub_dockerfile({"STUB_READY_DELAY": "600s"}).encode(), stub)
            case Kind.NEVER_READY:
                return ProgramSource(stub_dockerfile({"STUB_NEVER_READY": "1"}).encode(), stub)
            case Kind.FAILING_BUILD:
                return ProgramSource(f"FROM {BASE_IMAGE}\nRUN exit 3\n".encode(), {})
            case Kind.SLOW_BUILD:
                return ProgramSource(f"FROM {BASE_IMAGE}\nRUN sleep 600\n".encode(), {})

    def _containers(self, program_id: str) -> list[Any]:
        found: list[Any] = self.client.containers.list(
            all=True, filters={"label": [f"dev.hershy.program={program_id}"]}
        )
        return found

    async def crash(self, program_id: str) -> int:
        def kill() -> None:
            (container,) = [c for c in self._containers(program_id) if c.status == "running"]
            container.kill()  # SIGKILL: exit code 128 + 9

        await asyncio.to_thread(kill)
        return 137

    async def containers(self, program_id: str) -> list[str]:
        return [c.id for c in await asyncio.to_thread(self._containers, program_id)]

    async def leftovers(self, program_id: str) -> list[str]:
        found = await asyncio.to_thread(leftovers, self.client, program_id)
        state = self.sources.program_dir(program_id) / "state"
        if await asyncio.to_thread(is_mounted, state):
            found.append(f"/state volume mounted at {state}")
        return found

    async def force_clean(self, program_id: str) -> None:
        await asyncio.to_thread(force_clean, self.client, program_id)


class KubernetesSubject(DockerSubject):
    """The Kubernetes runtime on the real cluster (scripts/setup-kubernetes.sh), as the Host's
    least-privileged user; the admin's kubeconfig only looks and breaks things."""

    name = "kubernetes"

    def __init__(
        self, data_dir: Path, client: docker.DockerClient, stub: bytes, cluster: Cluster
    ) -> None:
        super().__init__(data_dir, client, stub)
        self.cluster = cluster
        self.cluster_settings = KubernetesSettings(
            kubeconfig=cluster.host_kubeconfig,
            namespace=cluster.namespace,
            runtime_class=cluster.runtime_class,
            registry=cluster.registry,
            storage_class=cluster.storage_class,
            host_id=self.settings.host_id,
            ready_timeout=READY_TIMEOUT,
            stop_grace=2,
        )

    def new_runtime(self) -> contextlib.AbstractAsyncContextManager[ProgramRuntime]:
        return KubernetesRuntime(self.cluster_settings, self.sources, self.logs)

    async def crash(self, program_id: str) -> int:
        """Someone removes the program's Pod (grace 0): reported as an exit with code -1."""
        (pod,) = [
            p
            for p in await pods_of(self.cluster, self.settings.host_id, program_id)
            if not p["metadata"].get("deletionTimestamp")
        ]
        self.cluster.kubectl(
            "delete", "pod", pod["metadata"]["name"], "--grace-period=0", "--force", "--wait=false"
        )
        return -1

    async def containers(self, program_id: str) -> list[str]:
        pods = await pods_of(self.cluster, self.settings.host_id, program_id)
        return [str(p["metadata"]["uid"]) for p in pods]

    async def leftovers(self, program_id: str) -> list[str]:
        found = await asyncio.to_thread(leftovers, self.client, program_id)
        return found + await cluster_leftovers(self.cluster, self.settings.host_id, program_id)

    async def force_clean(self, program_id: str) -> None:
        await asyncio.to_thread(force_clean, self.client, program_id)
        await force_clean_cluster(self.cluster, self.settings.host_id, program_id)


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        return any(line.split()[1] == str(path) for line in mounts)


@pytest.fixture(
    params=[
        "fake",
        pytest.param("docker", marks=pytest.mark.docker),
        pytest.param("kubernetes", marks=[pytest.mark.docker, pytest.mark.kubernetes]),
    ]
)
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    """Each runtime adapter in turn; on exit every program is torn down and checked gone."""
    made: Subject
    if request.param == "fake":
        made = FakeSubject(tmp_path / "data")
    elif request.param == "kubernetes":
        made = KubernetesSubject(
            tmp_path / "data",
            request.getfixturevalue("docker_client"),
            request.getfixturevalue("stub_binary"),
            request.getfixturevalue("kubernetes_cluster"),
        )
    else:
        client = request.getfixturevalue("docker_client")
        made = DockerSubject(tmp_path / "data", client, request.getfixturevalue("stub_binary"))
    await made.open()
    left: dict[str, list[str]] = {}
    try:
        yield made
    finally:
        try:
            for program_id in made.programs:
                outbox = RecordingOutbox()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        made.runtime.execute(program_id, fx.Teardown(99, None), outbox),
                        STEP_SECONDS,
                    )
                found = await made.leftovers(program_id)
                if await made.folder_left(program_id):
                    found.append("its folder")
                if found:
                    left[program_id] = found
                    await made.force_clean(program_id)
        finally:
            await made.close()
    if left:
        pytest.fail(f"left behind after teardown: {left}")
