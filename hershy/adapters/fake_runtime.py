"""A fake container runtime: the effect handler without Docker.

It keeps a model of the world (which containers and images exist) so tests
can check that nothing leaks, and lets a test slow effects down, make them
fail, and crash running containers. `hershy serve --runtime fake` uses it
for demos and for tests of everything above the runtime.

It keeps the runtime port's contract (`hershy.service.ports.ProgramRuntime`)
and passes the same conformance suite as the Docker runtime
(`tests/conformance/`). It places containers like the Docker runtime: each
start takes a loopback port from the same kind of pool, checked free with the
OS, and reports it. By default nothing listens there (tests of the layers
above put a WatcherAPI of their own there); with `FakeBehaviour.serve_watcher`
each running container answers `GET /watcher/status` there itself.

Where it differs from Docker, on purpose: it runs nothing of the program (the
Dockerfile is not read, no output but two lines of its own); a crash happens
when a test calls `crash`; a "Host restart" is a new handler on the same
`FakeWorld` (the world stands for the daemon, which outlives the Host).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from hershy.adapters.docker.port_pool import (
    LOOPBACK,
    PortPool,
    loopback_address,
    loopback_endpoint,
)
from hershy.domain import effects as fx
from hershy.domain import events as ev
from hershy.domain.health import StartJudge, StartVerdict
from hershy.domain.model import LogLine, LogStream
from hershy.service.ports import LogStore, Outbox, SourceStore, Timers, WatcherEndpoint

#: What a fake container's WatcherAPI answers to `GET /watcher/status`.
_STATUS = json.dumps({"state": "Ready", "runtime": "fake"}).encode()


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
    #: The next this-many starts create their container, which never becomes ready: the
    #: start reports StartFailed after removing it (as the Docker runtime's ready timeout).
    never_ready_starts: int = 0
    failure_reason: str = "injected failure"
    #: Each running container answers `GET /watcher/status` on its address (off by
    #: default: tests of the layers above listen there themselves).
    serve_watcher: bool = False
    #: A scripted WatcherAPI for starts: each start answers these in turn (answered,
    #: state, seconds it holds), judged like the Docker runtime judges real answers;
    #: empty: ready at once. The last answer holds until the start's judge decides.
    start_answers: tuple[tuple[bool, str, float], ...] = ()


@dataclass(slots=True)
class FakeContainer:
    program_id: str
    run: int
    outbox: Outbox
    #: The loopback port its (pretend) WatcherAPI is published on.
    port: int
    running: bool = True
    #: How it ended (once it has).
    exit_code: int = -1
    #: Its WatcherAPI, with `FakeBehaviour.serve_watcher`, while it runs.
    server: asyncio.Server | None = None

    def exit(self) -> None:
        """It stops running: its WatcherAPI stops listening."""
        self.running = False
        if self.server is not None:
            self.server.close()
            self.server = None


@dataclass(slots=True)
class FakeWorld:
    """What the fake "daemon" holds: it outlives any one handler (a Host restart)."""

    ports: PortPool = field(default_factory=PortPool)
    containers: dict[str, FakeContainer] = field(default_factory=dict)
    #: (program id, build id) -> image id: like Docker's tags, an image is one program's.
    images: dict[tuple[str, str], str] = field(default_factory=dict)

    def containers_of(self, program_id: str) -> list[str]:
        return [cid for cid, c in self.containers.items() if c.program_id == program_id]

    def images_of(self, program_id: str) -> list[str]:
        return [image for (owner, _), image in self.images.items() if owner == program_id]

    def remove(self, container_id: str) -> None:
        """Remove a container (if it exists) and give its port back."""
        container = self.containers.pop(container_id, None)
        if container is not None:
            container.exit()
            self.ports.release(container.port)

    def remove_images_of(self, program_id: str) -> None:
        for key in [key for key in self.images if key[0] == program_id]:
            del self.images[key]

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
        timers: Timers | None = None,
        world: FakeWorld | None = None,
    ) -> None:
        """`timers`: what its delays wait on (a test's manual clock); None: the event loop.
        `world`: another handler's, to play a Host restart (else a new one on `ports`)."""
        self._sleep = timers.sleep if timers is not None else asyncio.sleep
        self._sources = sources
        self._logs = logs
        self.behaviour = behaviour or FakeBehaviour()
        self.world = world or FakeWorld(ports or PortPool())
        self.builds_run = 0
        self._ids = itertools.count(1)
        #: Where each program's crashes are reported: the outbox of its latest effect.
        self._outboxes: dict[str, Outbox] = {}

    async def __aenter__(self) -> FakeEffectHandler:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Leaves containers as they are: they outlive the Host."""

    def watcher_endpoint(self, address: str) -> WatcherEndpoint | None:
        """The fake places programs like the Docker runtime: on loopback WatcherAPI ports."""
        return loopback_endpoint(address)

    async def execute(self, program_id: str, effect: fx.HandledEffect, outbox: Outbox) -> None:
        self._outboxes[program_id] = outbox
        match effect:
            case fx.Build():
                self._log(program_id, outbox, LogStream.BUILD, effect.run, "fake build: started")
                await self._build(program_id, effect, outbox)
                self._log(program_id, outbox, LogStream.BUILD, effect.run, "fake build: done")
            case fx.StartContainer():
                await self._start(program_id, effect, outbox)
            case fx.StopContainer():
                await self._stop(program_id, effect, outbox)
            case fx.Teardown():
                await self._teardown(program_id, effect, outbox)
                self._outboxes.pop(program_id, None)
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
        for program_id, build_id in list(self.world.images):
            if program_id not in owned:
                del self.world.images[program_id, build_id]

    def _adopt(self, program_id: str, effect: fx.AdoptContainer, outbox: Outbox) -> None:
        container = self.world.containers.get(effect.container_id or "")
        if container is None or container.program_id != program_id:
            outbox.emit(ev.ContainerExited(outbox.now(), effect.run, -1))
        elif not container.running:
            # It died while the Host was down: reported now, as the Docker runtime does.
            outbox.emit(
                ev.ContainerExited(
                    outbox.now(), effect.run, container.exit_code, False, effect.container_id
                )
            )
        else:
            container.outbox = outbox

    def answer(self, program_id: str, answered: bool, state: str = "", detail: str = "") -> None:
        """The program's (pretend) WatcherAPI answers a liveness probe like this."""
        for container in self.world.containers.values():
            if container.program_id == program_id and container.running:
                outbox = container.outbox
                outbox.emit(ev.WatcherProbed(outbox.now(), container.run, answered, state, detail))

    def crash(self, program_id: str, exit_code: int = 1, *, oom_killed: bool = False) -> None:
        """Make the program's running container exit on its own."""
        for container_id, container in self.world.containers.items():
            if container.program_id == program_id and container.running:
                container.exit()
                container.exit_code = exit_code
                # Reported through the program's latest outbox, as the contract says (a
                # container left by an earlier Host instance: the adopting one's).
                outbox = self._outboxes.get(program_id, container.outbox)
                outbox.emit(
                    ev.ContainerExited(
                        outbox.now(), container.run, exit_code, oom_killed, container_id
                    )
                )

    async def _build(self, program_id: str, effect: fx.Build, outbox: Outbox) -> None:
        image = self.world.images.get((program_id, effect.build_id))
        if image is None:
            await self._sleep(self.behaviour.build_delay)
            if self._take_failure("failing_builds"):
                raise RuntimeError(self.behaviour.failure_reason)
            image = f"sha256:fake{next(self._ids):08d}"
            self.world.images[program_id, effect.build_id] = image
            self.builds_run += 1
        outbox.emit(ev.BuildSucceeded(outbox.now(), effect.run, image))

    async def _start(self, program_id: str, effect: fx.StartContainer, outbox: Outbox) -> None:
        self.world.remove_runs_up_to(program_id, effect.run)
        await self._sleep(self.behaviour.start_delay)
        if self._take_failure("failing_starts"):
            raise RuntimeError(self.behaviour.failure_reason)
        port = self.world.ports.take()
        container_id = f"fake{next(self._ids):012d}"
        container = FakeContainer(program_id, effect.run, outbox, port)
        self.world.containers[container_id] = container
        if self.behaviour.serve_watcher:
            try:
                container.server = await asyncio.start_server(_answer_status, LOOPBACK, port)
            except BaseException:
                self.world.remove(container_id)
                raise
        outbox.emit(
            ev.ContainerCreated(outbox.now(), effect.run, container_id, loopback_address(port))
        )
        try:
            await self._sleep(self.behaviour.ready_delay)
            refused = await self._scripted_start(effect, outbox)
        except asyncio.CancelledError:
            # Cancelled while starting: undo what this start created.
            self.world.remove(container_id)
            raise
        if self._take_failure("never_ready_starts"):
            refused = "its WatcherAPI never answered"
        if refused:
            # Failed first, removed second, as the Docker runtime reports it.
            outbox.emit(ev.StartFailed(outbox.now(), effect.run, refused))
            self.world.remove(container_id)
            return
        self._log(program_id, outbox, LogStream.STDOUT, effect.run, "fake program: ready")
        self._log(program_id, outbox, LogStream.STDERR, effect.run, "fake program: no errors")
        outbox.emit(ev.ContainerReady(outbox.now(), effect.run))

    async def _scripted_start(self, effect: fx.StartContainer, outbox: Outbox) -> str:
        """Play `start_answers` to the start's judge; "" once ready, else why it failed.

        Each answer is asked again every tenth of its hold until the next one; the last
        is asked until the judge decides (a last answer with no hold: once).
        """
        judge = StartJudge(effect.readiness)
        answers = self.behaviour.start_answers
        for index, (answered, state, hold) in enumerate(answers):
            outbox.emit(ev.WatcherProbed(outbox.now(), effect.run, answered, state))
            last = index == len(answers) - 1
            until = outbox.now() + hold
            while True:
                verdict = judge.feed(outbox.now(), answered, state)
                if verdict is StartVerdict.FAILED:
                    return judge.reason
                if verdict is StartVerdict.READY:
                    return ""
                if hold <= 0 or (not last and outbox.now() >= until):
                    break
                await self._sleep(hold / 10)
        if answers:
            return "the scripted WatcherAPI never became ready"
        return ""

    async def _stop(self, program_id: str, effect: fx.StopContainer, outbox: Outbox) -> None:
        await self._sleep(self.behaviour.stop_delay)
        if self._take_failure("failing_stops"):
            raise RuntimeError(self.behaviour.failure_reason)
        self.world.remove_runs_up_to(program_id, effect.run, effect.container_id)
        outbox.emit(ev.ContainerStopped(outbox.now(), effect.run))

    async def _teardown(self, program_id: str, effect: fx.Teardown, outbox: Outbox) -> None:
        await self._sleep(self.behaviour.stop_delay)
        for container_id in self.world.containers_of(program_id):
            self.world.remove(container_id)
        self.world.remove_images_of(program_id)
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


async def _answer_status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A fake container's WatcherAPI: `GET /watcher/status` is 200, anything else 404."""
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        head = await reader.readuntil(b"\r\n\r\n")
        found = head.startswith(b"GET /watcher/status ")
        body = _STATUS if found else b'{"error": "not found"}'
        status = b"200 OK" if found else b"404 Not Found"
        writer.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
        )
        await writer.drain()
    writer.close()
