"""The real container runtime: the effect handler on Docker, with gVisor (runsc).

Following Nomad's docker driver: every container and image carries Hershy's
labels; a container's id is reported the moment it exists (so a Stop can
always find it); stop is idempotent (a container already gone is success);
and stops and deletes sweep by label, so nothing a cancelled start created
is left behind.

The docker SDK answers request/response calls, on a thread pool of our own
(a 10 s stop must not starve the event loop's default executor); the
streams (build, events, logs) go through `Engine`, which asyncio can cancel.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import LogConfig

from hershy.adapters.docker.build import BuildLimits, DockerBuilder
from hershy.adapters.docker.build import build_context as build_context  # re-exported
from hershy.adapters.docker.compose import (
    LABEL_BUILD,
    LABEL_MANAGED,
    LABEL_PROGRAM,
    LABEL_RUN,
    SECURE_RUNTIME,
    WATCHER_PORT,
    ContainerRequest,
    compose_spec,
    contract_violations,
)
from hershy.adapters.docker.engine import DEFAULT_SOCKET, Engine, EngineError
from hershy.adapters.docker.port_pool import LOOPBACK, PortPool, loopback_address
from hershy.adapters.docker.state_volumes import LoopStateVolumes, StateVolumes
from hershy.adapters.source_files import FileSourceStore
from hershy.domain import effects as fx
from hershy.domain import events as ev
from hershy.domain.model import LogLine, LogStream, Resources
from hershy.domain.validation import ResourcePolicy
from hershy.service.ports import LogStore, Outbox

log = logging.getLogger(__name__)

T = TypeVar("T")

READY_PATH = "/watcher/status"
SPEC_FILE = "compose.json"
#: How many ports one start tries when Docker finds the one it was given taken (another
#: Host's container, any process binding it after the pool's check) before it gives up.
PORT_ATTEMPTS = 8
#: How Docker says a published port is taken: by another container, or by another process.
PORT_TAKEN = ("port is already allocated", "address already in use")
#: How long a container's death waits for the copy of its last lines before it is reported
#: (and a removal before it removes): a copy ends within ms of the death, unless it is
#: back-filling what was written while the Host was down.
LOG_DRAIN_SECONDS = 10.0
#: A list call that raises NotFound (something vanished as the daemon listed it) is retried.
LIST_ATTEMPTS = 5
#: Container id characters in a log line's mark: unique enough within one program.
MARK_ID_LENGTH = 12


class RuntimeUnavailable(Exception):
    """Docker or the runtime cannot be used; the message says how to fix it."""


class ContractBroken(Exception):
    """A container would break a security contract; it is not started."""


class PortsTaken(Exception):
    """Port after port the container was to publish on turned out taken; the start gives up."""


@dataclass(frozen=True)
class DockerSettings:
    #: The OCI runtime programs run under: runsc (gVisor), or runc when allowed.
    runtime: str = SECURE_RUNTIME
    allow_insecure_runtime: bool = False
    #: Labels everything this Host makes; only what carries it is ever reaped.
    host_id: str = "default"
    socket: str = DEFAULT_SOCKET
    build_timeout: float = 600.0
    ready_timeout: float = 60.0
    ready_poll_interval: float = 0.2
    stop_grace: float = 10.0
    #: The contract check's bounds: the Host's maxima, defined once (ResourcePolicy).
    max_resources: Resources = field(default_factory=lambda: ResourcePolicy().maximum)
    #: The base-image allowlist (`--base-image`): the only images a FROM may name.
    base_images: tuple[str, ...] = ("hershy-busybox:latest",)
    build_limits: BuildLimits = field(default_factory=BuildLimits)

    @property
    def allowed_runtimes(self) -> frozenset[str]:
        if self.allow_insecure_runtime:
            return frozenset({SECURE_RUNTIME, "runc"})
        return frozenset({SECURE_RUNTIME})


def image_tag(program_id: str, build_id: str) -> str:
    return f"hershy/{program_id}:{build_id}"


def docker_create_args(spec: dict[str, Any]) -> dict[str, Any]:
    """The docker SDK's `containers.create` arguments for a validated spec: nothing added."""
    service = spec["services"]["program"]
    (volume,) = service["volumes"]
    (port,) = service["ports"]
    return {
        "image": service["image"],
        "name": service["container_name"],
        "runtime": service["runtime"],
        "read_only": service["read_only"],
        "volumes": {volume["source"]: {"bind": volume["target"], "mode": "rw"}},
        "ports": {f"{port['target']}/tcp": (port["host_ip"], int(port["published"]))},
        "cap_drop": service["cap_drop"],
        "security_opt": service["security_opt"],
        "privileged": service["privileged"],
        "pids_limit": service["pids_limit"],
        "mem_limit": service["mem_limit"],
        "memswap_limit": service["mem_limit"],
        "nano_cpus": round(service["cpus"] * 1e9),
        "labels": service["labels"],
        "restart_policy": {"Name": service["restart"]},
        "log_config": LogConfig(
            type=service["logging"]["driver"], config=service["logging"]["options"]
        ),
        "detach": True,
    }


@dataclass(frozen=True, slots=True)
class Published:
    """The WatcherAPI port a container of the program's run publishes."""

    program_id: str
    run: int
    port: int


def _cut_off_build(image: Mapping[str, Any], before: float) -> bool:
    """An image of a build cut off by the Host's death: labelled, never tagged, and older
    than this reconciliation (a build under way now is not taken for one)."""
    tags = [tag for tag in image.get("RepoTags") or [] if tag != "<none>:<none>"]
    return not tags and float(image.get("Created") or 0) < before - 1.0


def published_port(attrs: dict[str, Any]) -> int | None:
    """The host port a container publishes its WatcherAPI on, from `docker inspect`."""
    bindings = (attrs.get("HostConfig") or {}).get("PortBindings") or {}
    for binding in bindings.get(f"{WATCHER_PORT}/tcp") or []:
        port = str(binding.get("HostPort", ""))
        if port.isdigit():
            return int(port)
    return None


def port_taken(error: APIError) -> bool:
    """Whether Docker refused to start a container because its published port is taken."""
    text = str(error.explanation or error)
    return any(phrase in text for phrase in PORT_TAKEN)


class DockerEffectHandler:
    """Carries out effects on Docker. Use as an async context manager (it owns background tasks)."""

    def __init__(
        self,
        settings: DockerSettings,
        files: FileSourceStore,
        logs: LogStore,
        ports: PortPool | None = None,
        volumes: StateVolumes | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = settings.runtime
        self._files = files
        self._logs = logs
        #: Where programs' WatcherAPIs are published; this handler places every container.
        self.ports = ports or PortPool()
        self._published: dict[str, Published] = {}  # container id -> its port
        #: Each program's /state, a file system of its `resources.state_bytes`.
        self._volumes = volumes or LoopStateVolumes(files.root)
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="docker")
        self._engine = Engine(settings.socket)
        self._client: docker.DockerClient | None = None
        self._http: aiohttp.ClientSession | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._outboxes: dict[str, Outbox] = {}
        self._oom_killed: set[str] = set()
        self._followed: set[str] = set()
        #: The task copying each container's output, while it runs.
        self._copies: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.builder = DockerBuilder(
            call=self._call,
            client=lambda: self._docker,
            engine=self._engine,
            files=files,
            logs=logs,
            host_id=settings.host_id,
            limits=settings.build_limits,
            timeout=settings.build_timeout,
        )

    # --- lifetime -------------------------------------------------------------

    async def __aenter__(self) -> DockerEffectHandler:
        try:
            self._client = await self._call(
                docker.DockerClient, base_url=f"unix://{self.settings.socket}", max_pool_size=64
            )
            info: dict[str, Any] = await self._call(self._docker.info)
        except DockerException as error:
            raise RuntimeUnavailable(
                f"cannot reach the Docker daemon at {self.settings.socket}: {error}. "
                "Start it with scripts/setup-host.sh (or check `hershy doctor`)."
            ) from None
        try:
            self.runtime = describe_runtime(self.settings, info)
            # Before anything runs: a base image that cannot be used stops the Host here.
            await self.builder.resolve_base_images(self.settings.base_images)
        except BaseException:
            self._docker.close()
            raise
        self.builder.docker_root = str(info.get("DockerRootDir") or self.builder.docker_root)
        await self._call(self.builder.cgroups.setup)
        if self.settings.runtime != SECURE_RUNTIME:
            log.warning(
                "INSECURE: programs run under %s, WITHOUT the gVisor sandbox "
                "(--allow-insecure-runtime). Never do this with programs you do not trust.",
                self.settings.runtime,
            )
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        await self._hold_published_ports()
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._spawn(self._watch_events())
        return self

    async def _hold_published_ports(self) -> None:
        """Learn the ports this Host's containers publish (they outlive a Host restart)."""
        managed = {"label": [f"{LABEL_MANAGED}={self.settings.host_id}"]}
        # Tolerant of containers vanishing while listed (a kill -9 may leave removals going).
        for container in await self._listed(
            self._docker.containers.list, all=True, filters=managed
        ):
            port = published_port(container.attrs)
            if port is None:
                continue
            self.ports.hold(port)
            self._published[container.id] = Published(
                container.labels.get(LABEL_PROGRAM, ""),
                int(container.labels.get(LABEL_RUN, "0")),
                port,
            )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stops watching; leaves containers as they are (they outlive the Host)."""
        assert self._tasks is not None
        for task in self._background:
            task.cancel()
        await self._tasks.__aexit__(exc_type, exc, traceback)
        await self._engine.close()
        if self._http is not None:
            await self._http.close()
        if self._client is not None:
            self._client.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def _docker(self) -> docker.DockerClient:
        assert self._client is not None, "use the handler as an async context manager"
        return self._client

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(function, *args, **kwargs))

    # --- effects ----------------------------------------------------------------

    async def execute(self, program_id: str, effect: fx.HandledEffect, outbox: Outbox) -> None:
        self._outboxes[program_id] = outbox
        match effect:
            case fx.Build():
                await self._build(program_id, effect, outbox)
            case fx.StartContainer():
                await self._start(program_id, effect, outbox)
            case fx.StopContainer():
                await self._stop_containers(program_id, effect.run, effect.container_id)
                outbox.emit(ev.ContainerStopped(outbox.now(), effect.run))
            case fx.Teardown():
                await self._teardown(program_id)
                self._outboxes.pop(program_id, None)
                outbox.emit(ev.TornDown(outbox.now(), effect.run))
            case fx.AdoptContainer():
                await self._adopt(program_id, effect, outbox)
            case fx.PruneBuilds():
                await self._prune_builds(program_id, effect.keep)

    async def reap(self, owned: Mapping[str, int]) -> None:
        """Reconcile with Docker after a Host restart, before any supervisor runs.

        Looks at every container carrying this Host's label: the output of those a
        program owns (its current run) is copied into its log from where the copy
        stopped (followed on if the container runs); the rest are removed, like
        images no program owns (Nomad's reaping). `owned` is read as each decision
        is made. A container or image that vanishes meanwhile is no error; any
        other Docker error raises, and the caller retries the whole step.
        """
        managed = {"label": [f"{LABEL_MANAGED}={self.settings.host_id}"]}
        orphans = []
        for container in await self._listed(self._docker.api.containers, all=True, filters=managed):
            labels = container.get("Labels") or {}
            program_id = labels.get(LABEL_PROGRAM, "")
            run = _run_of(labels)
            if run is not None and owned.get(program_id) == run:
                self._follow_logs(program_id, run, container["Id"], resume=True)
            else:
                orphans.append(container["Id"])
        if orphans:
            log.info("removing %d containers no program owns", len(orphans))
        await asyncio.gather(*(self._remove(orphan, graceful=True) for orphan in orphans))
        reconciling_since = time.time()
        for image in await self._listed(self._docker.api.images, filters=managed):
            if (image.get("Labels") or {}).get(LABEL_PROGRAM) in owned and not _cut_off_build(
                image, reconciling_since
            ):
                continue
            log.info(
                "removing image %s: no program owns it (or its build was cut off)", image["Id"]
            )
            try:
                await self._call(self._docker.images.remove, image["Id"], force=True)
            except ImageNotFound:
                pass  # gone meanwhile
            except APIError as error:
                if error.status_code != 409:  # 409: in use, or being removed already
                    raise

    async def _listed(self, listing: Callable[..., list[dict[str, Any]]], **filters: Any) -> Any:
        """A Docker list call; one that raises NotFound (an object vanished while the daemon
        listed it) is asked again."""
        for attempt in range(LIST_ATTEMPTS):
            try:
                return await self._call(listing, **filters)
            except NotFound:
                if attempt == LIST_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _adopt(self, program_id: str, effect: fx.AdoptContainer, outbox: Outbox) -> None:
        """Take back a container that ran on while the Host was down: same container, no restart.

        Its output written meanwhile is copied into the log first (the reconciling
        `reap` began it); one that died meanwhile is reported after its last lines.
        """
        try:
            container = await self._call(self._docker.containers.get, effect.container_id or "")
        except NotFound:
            outbox.emit(ev.ContainerExited(outbox.now(), effect.run, -1))
            return
        state = container.attrs.get("State", {})
        self._follow_logs(program_id, effect.run, container.id, resume=True)
        if state.get("Running"):
            log.info("program %s: adopted its running container %s", program_id, container.id)
            return
        await self._drained(container.id)
        outbox.emit(
            ev.ContainerExited(
                outbox.now(),
                effect.run,
                int(state.get("ExitCode", -1)),
                bool(state.get("OOMKilled", False)),
                container.id,
            )
        )

    async def _drained(self, container_id: str) -> None:
        """Wait (a bounded time) until the copy of a container's output has ended."""
        copy = self._copies.get(container_id)
        if copy is not None and not copy.done():
            await asyncio.wait({copy}, timeout=LOG_DRAIN_SECONDS)

    async def _build(self, program_id: str, effect: fx.Build, outbox: Outbox) -> None:
        await self.builder.build(program_id, effect, outbox, image_tag(program_id, effect.build_id))

    async def resolve_base_images(self, names: Sequence[str]) -> dict[str, str]:
        """The base-image allowlist resolved to image ids (the `BaseImageResolver` port)."""
        if tuple(names) == self.settings.base_images:
            return dict(self.builder.policy.base_images)  # resolved when the handler opened
        return await self.builder.resolve_base_images(names)

    async def _start(self, program_id: str, effect: fx.StartContainer, outbox: Outbox) -> None:
        # First of all: no container of this run or an older one may be left (a start
        # cut short, a crashed run's): a program has one container at a time.
        await self._stop_containers(program_id, effect.run, None)
        state_dir = await self._volumes.attach(program_id, effect.resources.state_bytes)
        container: Any = None
        try:
            for attempt in range(1, PORT_ATTEMPTS + 1):
                container, spec = await self._create_on_a_free_port(program_id, effect, state_dir)
                port = self._published[container.id].port
                outbox.emit(
                    ev.ContainerCreated(
                        outbox.now(), effect.run, container.id, loopback_address(port)
                    )
                )
                check_created(container.attrs, spec)
                try:
                    await self._call(container.start)
                    break
                except APIError as error:
                    if not port_taken(error):
                        raise
                    if attempt == PORT_ATTEMPTS:
                        raise PortsTaken(
                            f"Docker found {attempt} WatcherAPI ports in a row taken by "
                            f"others; the last: {error.explanation or error}"
                        ) from None
                # Not the program's failure: someone bound the port after the pool's check.
                note = f"port {port} was taken; trying another"
                self._logs.write(
                    program_id, LogLine(outbox.now(), LogStream.HOST, effect.run, note)
                )
                await self._remove(container.id)
                container = None
            self._follow_logs(program_id, effect.run, container.id)
            await self._until_ready(port, effect.run, program_id)
        except asyncio.CancelledError:
            if container is not None:
                await asyncio.shield(self._remove(container.id))
            raise
        except Exception as error:
            if container is None:
                raise  # nothing was created: the supervisor reports the failure
            # Failed first, removed second: the container's death that follows is old news.
            outbox.emit(ev.StartFailed(outbox.now(), effect.run, str(error)))
            await self._remove(container.id)
            return
        outbox.emit(ev.ContainerReady(outbox.now(), effect.run))

    async def _create_on_a_free_port(
        self, program_id: str, effect: fx.StartContainer, state_dir: Path
    ) -> tuple[Any, dict[str, Any]]:
        """The program's container, created to publish on a port from the pool, and its spec."""
        port = self.ports.take()
        try:
            request = ContainerRequest(
                host_id=self.settings.host_id,
                program_id=program_id,
                run=effect.run,
                build_id=effect.build_id,
                image=effect.image_id,
                host_port=port,
                state_dir=str(state_dir),
                resources=effect.resources,
                runtime=self.settings.runtime,
            )
            spec = compose_spec(request)
            problems = contract_violations(
                spec,
                allowed_runtimes=self.settings.allowed_runtimes,
                maximum=self.settings.max_resources,
            )
            if problems:
                raise ContractBroken("refusing to run it: " + "; ".join(problems))
            await self._call(
                _write_atomically, self._files.program_dir(program_id) / SPEC_FILE, spec
            )
            container = await self._create(docker_create_args(spec))
        except BaseException:
            self.ports.release(port)
            raise
        self._published[container.id] = Published(program_id, effect.run, port)
        return container, spec

    async def _create(self, arguments: dict[str, Any]) -> Any:
        """Create a container; if cancelled meanwhile, remove it once it exists."""
        future = asyncio.ensure_future(self._call(self._docker.containers.create, **arguments))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                created = await future
                await self._remove(created.id)
            raise

    async def _until_ready(self, port: int, run: int, program_id: str) -> None:
        url = f"http://{loopback_address(port)}{READY_PATH}"
        deadline = time.monotonic() + self.settings.ready_timeout
        last_problem = "no answer yet"
        assert self._http is not None
        # Poll fast first (most programs listen within a few hundred ms), then back off.
        interval = min(0.02, self.settings.ready_poll_interval)
        while time.monotonic() < deadline:
            try:
                async with self._http.get(url) as response:
                    if 200 <= response.status < 300:
                        return
                    last_problem = f"it answered {response.status}"
            except (aiohttp.ClientError, TimeoutError) as error:
                last_problem = type(error).__name__
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, self.settings.ready_poll_interval)
        raise TimeoutError(
            f"its WatcherAPI did not answer GET {READY_PATH} on {loopback_address(port)} within "
            f"{self.settings.ready_timeout:g} s ({last_problem})"
        )

    async def _stop_containers(
        self,
        program_id: str,
        run: int,
        container_id: str | None,
    ) -> None:
        """Stop and remove `container_id` and the program's containers of runs up to `run`."""
        known = list(self._published.items())
        containers = await self._listed(
            self._docker.api.containers,
            all=True,
            filters={"label": [f"{LABEL_PROGRAM}={program_id}"]},
        )
        targets = []
        for container in containers:
            if container["Id"] == container_id or (_run_of(container["Labels"] or {}) or 0) <= run:
                targets.append(container["Id"])
        await asyncio.gather(*(self._remove(target, graceful=True) for target in targets))
        # Containers removed behind the Host's back (`docker rm`) give their ports back too;
        # not one a start created since the listing above (it was not looked at).
        for gone, published in known:
            if published.program_id == program_id and (
                gone == container_id or published.run <= run
            ):
                self._release_port(gone)

    async def _remove(self, container_id: str, *, graceful: bool = False) -> None:
        """SIGTERM, the grace period, SIGKILL, then remove. A container already gone is fine."""
        try:
            container = await self._call(self._docker.containers.get, container_id)
            if graceful and container.status == "running":
                await self._call(container.stop, timeout=int(self.settings.stop_grace))
            if graceful:
                await self._drained(container_id)  # its last lines first: removing loses them
            await self._call(container.remove, force=True)
        except NotFound:
            pass
        except APIError as error:
            if error.status_code != 409:  # 409: removal already in progress
                raise
        self._followed.discard(container_id)
        self._release_port(container_id)

    def _release_port(self, container_id: str) -> None:
        published = self._published.pop(container_id, None)
        if published is not None:
            self.ports.release(published.port)

    async def _prune_builds(self, program_id: str, keep: frozenset[str]) -> None:
        """Remove the program's images and sources of builds not in `keep` (older revisions).

        Each image is tagged by its build (`image_tag`), so the running revision's
        image and a candidate's live side by side until a rollout ends.
        """
        images = await self._call(
            self._docker.api.images, filters={"label": [f"{LABEL_PROGRAM}={program_id}"]}
        )
        for image in images:
            if (image.get("Labels") or {}).get(LABEL_BUILD) not in keep:
                with contextlib.suppress(ImageNotFound, NotFound, APIError):
                    await self._call(self._docker.images.remove, image["Id"], force=True)
        await self._files.prune_builds(program_id, keep)

    async def _teardown(self, program_id: str) -> None:
        await self._stop_containers(program_id, run=2**62, container_id=None)
        images = await self._call(
            self._docker.api.images, filters={"label": [f"{LABEL_PROGRAM}={program_id}"]}
        )
        for image in images:
            with contextlib.suppress(ImageNotFound):
                await self._call(self._docker.images.remove, image["Id"], force=True)
        # Unmounted before the folder goes: removing it must not reach into the volume.
        await self._volumes.remove(program_id)
        await self._files.remove(program_id)

    # --- watching containers ------------------------------------------------------

    def _follow_logs(
        self, program_id: str, run: int, container_id: str, *, resume: bool = False
    ) -> None:
        """Copy a container's output into the program's log until it ends.

        `resume`: the container may have been copied before (a Host restart): go on
        after the last line the log has of it. Otherwise it is new: from its start.
        """
        if self._tasks is None or container_id in self._followed:
            return
        self._followed.add(container_id)
        copy = self._spawn(self._copy_logs(program_id, run, container_id, resume))
        self._copies[container_id] = copy
        copy.add_done_callback(lambda _: self._copies.pop(container_id, None))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A background task the handler owns and cancels when it closes."""
        assert self._tasks is not None
        task = self._tasks.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _copy_logs(self, program_id: str, run: int, container_id: str, resume: bool) -> None:
        """Each line once, in order: every line copied carries its Docker timestamp as its
        mark (in the same write), so a copy after a restart, asked for the lines since
        the last mark, skips exactly the ones the log already has."""
        streams = {"stdout": LogStream.STDOUT, "stderr": LogStream.STDERR}
        prefix = f"{container_id[:MARK_ID_LENGTH]}@"
        after_ns, seen_at_after = 0, 0
        if resume:
            last = await asyncio.to_thread(self._logs.last_mark, program_id, prefix)
            if last is not None:
                after_ns, seen_at_after = int(last[0].removeprefix(prefix)), last[1]
        since = f"{after_ns // 10**9}.{after_ns % 10**9:09d}"
        try:
            async for stream, stamped in self._engine.logs(container_id, since, timestamps=True):
                stamp, _, text = stamped.partition(" ")
                at_ns = _docker_time_ns(stamp)
                if at_ns is None:  # not stamped (the rest of an over-long line): as it is
                    self._logs.write(
                        program_id, LogLine(time.time(), streams[stream], run, stamped)
                    )
                    continue
                if at_ns < after_ns:
                    continue
                if at_ns == after_ns and seen_at_after > 0:
                    seen_at_after -= 1  # copied before the restart
                    continue
                after_ns = at_ns
                self._logs.write(
                    program_id,
                    LogLine(at_ns / 1e9, streams[stream], run, text, f"{prefix}{at_ns}"),
                )
        except (EngineError, aiohttp.ClientError) as error:
            log.debug("program %s: log stream of %s ended: %s", program_id, container_id, error)
        finally:
            self._followed.discard(container_id)

    async def _watch_events(self) -> None:
        """Container deaths drive the crash handling; reconnects after the daemon comes back."""
        filters = {
            "type": ["container"],
            "label": [f"{LABEL_MANAGED}={self.settings.host_id}"],
            "event": ["die", "oom"],
        }
        since = time.time()
        while True:
            try:
                async for message in self._engine.events(filters, since):
                    since = max(since, message.get("timeNano", 0) / 1e9)
                    self._on_event(message)
            except (EngineError, aiohttp.ClientError, ValueError) as error:
                log.warning("Docker events stream lost (%s); reconnecting", error)
            await asyncio.sleep(1.0)

    def _on_event(self, message: dict[str, Any]) -> None:
        actor = message.get("Actor", {})
        container_id = actor.get("ID", "")
        attributes = actor.get("Attributes", {})
        if message.get("Action") == "oom":
            self._oom_killed.add(container_id)
            return
        program_id = attributes.get(LABEL_PROGRAM)
        outbox = self._outboxes.get(program_id or "")
        run = _run_of(attributes)
        if outbox is None or run is None:
            return
        oom = container_id in self._oom_killed
        self._oom_killed.discard(container_id)
        exit_code = int(attributes.get("exitCode", "-1"))
        self._spawn(self._report_exit(outbox, run, exit_code, oom, container_id))

    async def _report_exit(
        self, outbox: Outbox, run: int, exit_code: int, oom: bool, container_id: str
    ) -> None:
        """Report a death once the run's last lines are in the log (so its note comes after)."""
        await self._drained(container_id)
        outbox.emit(ev.ContainerExited(outbox.now(), run, exit_code, oom, container_id))


def _run_of(labels: Mapping[str, str]) -> int | None:
    """The run a container's labels name; None if they name none (or garbage)."""
    try:
        return int(labels[LABEL_RUN])
    except (KeyError, ValueError):
        return None


def _docker_time_ns(stamp: str) -> int | None:
    """Docker's RFC 3339 UTC time with nanoseconds (`2026-12-01T15:41:56.123456789Z`) as
    ns since the epoch; None if it is not one."""
    if not stamp.endswith("Z") or "T" not in stamp:
        return None
    whole, _, fraction = stamp[:-1].partition(".")
    try:
        seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
        nanos = int(fraction.ljust(9, "0")[:9]) if fraction else 0
    except ValueError:
        return None
    return seconds * 10**9 + nanos


def check_created(attrs: dict[str, Any], spec: dict[str, Any]) -> None:
    """What Docker actually made must be what was asked for (it can silently fall back)."""
    service = spec["services"]["program"]
    host = attrs.get("HostConfig", {})
    problems = []
    if host.get("Runtime") != service["runtime"]:
        problems.append(
            f"Docker would run it under {host.get('Runtime')!r}, not {service['runtime']!r}"
        )
    if host.get("ReadonlyRootfs") is not True:
        problems.append("its root file system would be writable")
    bindings = host.get("PortBindings") or {}
    if any(b.get("HostIp") != LOOPBACK for entries in bindings.values() for b in entries or []):
        problems.append(f"a port would be published beyond {LOOPBACK}")
    if "ALL" not in (host.get("CapDrop") or []):
        problems.append("its capabilities would not all be dropped")
    if problems:
        raise ContractBroken("refusing to start it: " + "; ".join(problems))


def describe_runtime(settings: DockerSettings, info: dict[str, Any]) -> str:
    """How programs run, as users are shown it; refuses a runtime the daemon lacks."""
    runtimes = info.get("Runtimes") or {}
    if settings.runtime not in runtimes:
        raise RuntimeUnavailable(
            f"the Docker daemon has no runtime {settings.runtime!r} (it has "
            f"{', '.join(sorted(runtimes)) or 'none'}). Register it with scripts/setup-host.sh."
        )
    if settings.runtime != SECURE_RUNTIME:
        if not settings.allow_insecure_runtime:
            raise RuntimeUnavailable(
                f"runtime {settings.runtime!r} is not a sandbox; "
                "start the Host with --allow-insecure-runtime to use it anyway"
            )
        return f"{settings.runtime} (INSECURE: no sandbox)"
    if info.get("DefaultRuntime") != SECURE_RUNTIME:
        raise RuntimeUnavailable(
            f"the Docker daemon's default runtime is {info.get('DefaultRuntime')!r}: the RUN "
            "steps of builds would run outside gVisor. Run scripts/setup-host.sh."
        )
    args = runtimes[settings.runtime].get("runtimeArgs") or []
    network = "host" if "--network=host" in args else "netstack"
    return f"runsc (gVisor, network={network})"


def _write_atomically(path: Path, spec: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(spec, indent=2) + "\n")
    os.replace(temporary, path)
