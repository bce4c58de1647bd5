"""A fake container runtime: the effect handler without Docker.

It keeps a model of the world (which containers and images exist) so tests
can check that nothing leaks, and lets a test slow effects down, make them
fail, and crash running containers. `hershy serve --runtime fake` uses it
for demos and for tests of everything above the runtime.

It places containers like the Docker runtime: each start takes a loopback port
from the same kind of pool, checked free with the OS, and reports it. Nothing
listens there (the fake serves no WatcherAPI): tests put one there themselves.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hershy.adapters.docker.port_pool import PortPool, loopback_address
from hershy.domain import effects as fx
from hershy.domain import events as ev
from hershy.domain.model import LogLine, LogStream
from hershy.service.ports import LogStore, Outbox, SourceStore


@dataclass(slots=True)
class FakeBehaviour:
    """Delays (seconds) and injected failures; change them at any time."""

    build_delay: float = 0.0
    start_delay: float = 0.0
    ready_delay: float = 0.0
    stop_delay: float = 0.0
    #: The next this-many builds / starts / stops fail.
    failing_builds: int = 0
    failing_starts: int = 0
    failing_stops: int = 0
    failure_reason: str = "injected failure"


@dataclass(slots=True)
class FakeContainer:
    program_id: str
    run: int
    outbox: Outbox
    #: The loopback port its (pretend) WatcherAPI is published on.
    port: int
    running: bool = True


@dataclass(slots=True)
class FakeWorld:
    ports: PortPool = field(default_factory=PortPool)
    containers: dict[str, FakeContainer] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)  # build id -> image id

    def containers_of(self, program_id: str) -> list[str]:
        return [cid for cid, c in self.containers.items() if c.program_id == program_id]

    def remove(self, container_id: str) -> None:
        """Remove a container (if it exists) and give its port back."""
        container = self.containers.pop(container_id, None)
        if container is not None:
            self.ports.release(container.port)

    def remove_runs_up_to(self, program_id: str, run: int, container_id: str | None = None) -> None:
        """Remove `container_id` and the program's containers of runs up to `run`."""
        for cid in self.containers_of(program_id):
            if cid == container_id or self.containers[cid].run <= run:
                self.remove(cid)


class FakeEffectHandler:
    runtime = "fake"

    def __init__(
        self,
        sources: SourceStore,
        logs: LogStore,
        behaviour: FakeBehaviour | None = None,
        ports: PortPool | None = None,
    ) -> None:
        self._sources = sources
        self._logs = logs
        self.behaviour = behaviour or FakeBehaviour()
        self.world = FakeWorld(ports or PortPool())
        self.builds_run = 0
        self._ids = itertools.count(1)

    async def execute(self, program_id: str, effect: fx.HandledEffect, outbox: Outbox) -> None:
        match effect:
            case fx.Build():
                self._log(program_id, outbox, LogStream.BUILD, effect.run, "fake build: started")
                await self._build(effect, outbox)
                self._log(program_id, outbox, LogStream.BUILD, effect.run, "fake build: done")
            case fx.StartContainer():
                await self._start(program_id, effect, outbox)
            case fx.StopContainer():
                await self._stop(program_id, effect, outbox)
            case fx.Teardown():
                await self._teardown(program_id, effect, outbox)
            case fx.AdoptContainer():
                self._adopt(program_id, effect, outbox)
            case fx.PruneBuilds():
                await self._sources.prune_builds(program_id, effect.keep)

    async def resolve_base_images(self, names: Sequence[str]) -> dict[str, str]:
        """Every allowlisted name "exists": an id made from its name."""
        return {name: "sha256:" + hashlib.sha256(name.encode()).hexdigest() for name in names}

    async def reap(self, owned: Mapping[str, int]) -> None:
        for container_id, container in list(self.world.containers.items()):
            if owned.get(container.program_id) != container.run:
                self.world.remove(container_id)

    def _adopt(self, program_id: str, effect: fx.AdoptContainer, outbox: Outbox) -> None:
        container = self.world.containers.get(effect.container_id or "")
        if container is not None and container.running and container.program_id == program_id:
            container.outbox = outbox
        else:
            outbox.emit(ev.ContainerExited(outbox.now(), effect.run, -1))

    def crash(self, program_id: str, exit_code: int = 1, *, oom_killed: bool = False) -> None:
        """Make the program's running container exit on its own."""
        for container_id, container in self.world.containers.items():
            if container.program_id == program_id and container.running:
                container.running = False
                container.outbox.emit(
                    ev.ContainerExited(
                        container.outbox.now(), container.run, exit_code, oom_killed, container_id
                    )
                )

    async def _build(self, effect: fx.Build, outbox: Outbox) -> None:
        image = self.world.images.get(effect.build_id)
        if image is None:
            await asyncio.sleep(self.behaviour.build_delay)
            if self._take_failure("failing_builds"):
                raise RuntimeError(self.behaviour.failure_reason)
            image = f"sha256:fake{next(self._ids):08d}"
            self.world.images[effect.build_id] = image
            self.builds_run += 1
        outbox.emit(ev.BuildSucceeded(outbox.now(), effect.run, image))

    async def _start(self, program_id: str, effect: fx.StartContainer, outbox: Outbox) -> None:
        self.world.remove_runs_up_to(program_id, effect.run)
        await asyncio.sleep(self.behaviour.start_delay)
        if self._take_failure("failing_starts"):
            raise RuntimeError(self.behaviour.failure_reason)
        port = self.world.ports.take()
        container_id = f"fake{next(self._ids):012d}"
        self.world.containers[container_id] = FakeContainer(program_id, effect.run, outbox, port)
        outbox.emit(
            ev.ContainerCreated(outbox.now(), effect.run, container_id, loopback_address(port))
        )
        try:
            await asyncio.sleep(self.behaviour.ready_delay)
        except asyncio.CancelledError:
            # Cancelled while starting: undo what this start created.
            self.world.remove(container_id)
            raise
        self._log(program_id, outbox, LogStream.STDOUT, effect.run, "fake program: ready")
        self._log(program_id, outbox, LogStream.STDERR, effect.run, "fake program: no errors")
        outbox.emit(ev.ContainerReady(outbox.now(), effect.run))

    async def _stop(self, program_id: str, effect: fx.StopContainer, outbox: Outbox) -> None:
        await asyncio.sleep(self.behaviour.stop_delay)
        if self._take_failure("failing_stops"):
            raise RuntimeError(self.behaviour.failure_reason)
        self.world.remove_runs_up_to(program_id, effect.run, effect.container_id)
        outbox.emit(ev.ContainerStopped(outbox.now(), effect.run))

    async def _teardown(self, program_id: str, effect: fx.Teardown, outbox: Outbox) -> None:
        await asyncio.sleep(self.behaviour.stop_delay)
        for container_id in self.world.containers_of(program_id):
            self.world.remove(container_id)
        await self._sources.remove(program_id)
        outbox.emit(ev.TornDown(outbox.now(), effect.run))

    def _log(self, program_id: str, outbox: Outbox, stream: LogStream, run: int, text: str) -> None:
        self._logs.write(program_id, LogLine(outbox.now(), stream, run, text))

    def _take_failure(self, counter: str) -> bool:
        remaining: int = getattr(self.behaviour, counter)
        if remaining > 0:
            setattr(self.behaviour, counter, remaining - 1)
            return True
        return False
