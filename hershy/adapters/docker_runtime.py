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
import contextlib
import functools
import io
import json
import logging
import os
import tarfile
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import LogConfig

from hershy.adapters.docker_engine import DEFAULT_SOCKET, Engine, EngineError
from hershy.adapters.source_files import FileSourceStore
from hershy.adapters.state_volumes import LoopStateVolumes, StateVolumes
from hershy.domain import effects as fx
from hershy.domain import events as ev
from hershy.domain.compose import (
    LABEL_MANAGED,
    LABEL_PROGRAM,
    LABEL_RUN,
    SECURE_RUNTIME,
    ContainerRequest,
    compose_spec,
    contract_violations,
    labels_for,
)
from hershy.domain.model import LogLine, LogStream, Resources
from hershy.domain.validation import ProgramSource, ResourcePolicy
from hershy.service.ports import LogStore, Outbox

log = logging.getLogger(__name__)

T = TypeVar("T")

READY_PATH = "/watcher/status"
SPEC_FILE = "compose.json"
BUILD_TAIL_LINES = 15
RUN_STEP_PREFIX = " ---> Running in "


class RuntimeUnavailable(Exception):
    """Docker or the runtime cannot be used; the message says how to fix it."""


class ContractBroken(Exception):
    """A container would break a security contract; it is not started."""


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

    @property
    def allowed_runtimes(self) -> frozenset[str]:
        if self.allow_insecure_runtime:
            return frozenset({SECURE_RUNTIME, "runc"})
        return frozenset({SECURE_RUNTIME})


def image_tag(program_id: str, build_id: str) -> str:
    return f"hershy/{program_id}:{build_id}"


def build_context(source: ProgramSource) -> bytes:
    """The build context as a tar, byte-for-byte the same for the same inputs.

    Every file is 0755: the API carries no file modes, and a `FROM scratch`
    image has no chmod to make its binary executable.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, content in sorted(source.all_files().items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(content), 0o755, 0
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


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


class DockerEffectHandler:
    """Carries out effects on Docker. Use as an async context manager (it owns background tasks)."""

    def __init__(
        self,
        settings: DockerSettings,
        files: FileSourceStore,
        logs: LogStore,
        volumes: StateVolumes | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = settings.runtime
        self._files = files
        self._logs = logs
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
        self._background: set[asyncio.Task[None]] = set()

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
        self.runtime = describe_runtime(self.settings, info)
        if self.settings.runtime != SECURE_RUNTIME:
            log.warning(
                "INSECURE: programs run under %s, WITHOUT the gVisor sandbox "
                "(--allow-insecure-runtime). Never do this with programs you do not trust.",
                self.settings.runtime,
            )
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._spawn(self._watch_events())
        return self

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

    async def reap(self, owned: Mapping[str, int]) -> None:
        """Remove what carries Hershy's labels but no live program owns (Nomad's reaping)."""
        managed = {"label": [f"{LABEL_MANAGED}={self.settings.host_id}"]}
        containers = await self._call(self._docker.containers.list, all=True, filters=managed)
        orphans = [
            container.id
            for container in containers
            if owned.get(container.labels.get(LABEL_PROGRAM, ""))
            != int(container.labels.get(LABEL_RUN, "-1"))
        ]
        if orphans:
            log.info("removing %d containers no program owns", len(orphans))
        await asyncio.gather(*(self._remove(orphan, graceful=True) for orphan in orphans))
        for image in await self._call(self._docker.images.list, filters=managed):
            if image.labels.get(LABEL_PROGRAM) not in owned:
                log.info("removing image %s: no program owns it", image.id)
                with contextlib.suppress(ImageNotFound, APIError):
                    await self._call(self._docker.images.remove, image.id, force=True)

    async def _adopt(self, program_id: str, effect: fx.AdoptContainer, outbox: Outbox) -> None:
        """Take back a container that ran on while the Host was down: same container, no restart."""
        try:
            container = await self._call(self._docker.containers.get, effect.container_id or "")
        except NotFound:
            outbox.emit(ev.ContainerExited(outbox.now(), effect.run, -1))
            return
        state = container.attrs.get("State", {})
        if state.get("Running"):
            log.info("program %s: adopted its running container %s", program_id, container.id)
            self._follow_logs(program_id, effect.run, container.id, since=time.time())
            return
        outbox.emit(
            ev.ContainerExited(
                outbox.now(),
                effect.run,
                int(state.get("ExitCode", -1)),
                bool(state.get("OOMKilled", False)),
                container.id,
            )
        )

    async def _build(self, program_id: str, effect: fx.Build, outbox: Outbox) -> None:
        tag = image_tag(program_id, effect.build_id)

        def note(text: str) -> None:
            self._logs.write(program_id, LogLine(outbox.now(), LogStream.BUILD, effect.run, text))

        with contextlib.suppress(ImageNotFound):
            image = await self._call(self._docker.images.get, tag)
            note(f"reusing image {image.id} (build {effect.build_id}: same inputs)")
            outbox.emit(ev.BuildSucceeded(outbox.now(), effect.run, image.id))
            return
        source = await self._files.load(program_id)
        params = {
            "t": tag,
            "labels": json.dumps(labels_for(self.settings.host_id, program_id, effect.build_id)),
            "rm": "1",
            "forcerm": "1",
            "pull": "0",
            # No network while building: nothing to download from here, nothing to leak.
            "networkmode": "none",
        }
        note(f"building {tag} (runtime of RUN steps: the daemon's default, {SECURE_RUNTIME})")
        tail: deque[str] = deque(maxlen=BUILD_TAIL_LINES)
        started = time.monotonic()
        # The container of the RUN step under way: it carries none of our labels, and
        # dockerd removes it in its own time after a cancelled build, so we do it.
        step: str | None = None
        try:
            async with asyncio.timeout(self.settings.build_timeout):
                async for message in self._engine.build(build_context(source), params):
                    for line in str(message.get("stream", "")).splitlines():
                        if line.strip():
                            tail.append(line)
                            note(line)
                        if line.startswith(RUN_STEP_PREFIX):
                            step = line.removeprefix(RUN_STEP_PREFIX).strip()
                    if "error" in message:
                        note(f"error: {message['error']}")
                        raise BuildError(str(message["error"]).strip(), tail)
        except TimeoutError:
            await self._remove_build_step(step)
            raise BuildError(
                f"the build took longer than {self.settings.build_timeout:g} s", tail
            ) from None
        except asyncio.CancelledError:
            await asyncio.shield(self._remove_build_step(step))
            raise
        except EngineError as error:
            raise BuildError(str(error), tail) from None
        image = await self._call(self._docker.images.get, tag)
        note(f"built {image.id} in {time.monotonic() - started:.1f} s")
        outbox.emit(ev.BuildSucceeded(outbox.now(), effect.run, image.id))

    async def _remove_build_step(self, container_id: str | None) -> None:
        """Remove a build step's container and wait until it is really gone."""
        if container_id is None:
            return
        with contextlib.suppress(NotFound):
            for _ in range(100):
                container = await self._call(self._docker.containers.get, container_id)
                with contextlib.suppress(APIError):  # 409: dockerd is removing it already
                    await self._call(container.remove, force=True)
                await asyncio.sleep(0.1)

    async def _start(self, program_id: str, effect: fx.StartContainer, outbox: Outbox) -> None:
        # First of all: no container of this run or an older one may be left (a start
        # cut short, a crashed run's): a program has one container at a time.
        await self._stop_containers(program_id, effect.run, None)
        state_dir = await self._volumes.attach(program_id, effect.resources.state_bytes)
        request = ContainerRequest(
            host_id=self.settings.host_id,
            program_id=program_id,
            run=effect.run,
            build_id=effect.build_id,
            image=effect.image_id,
            host_port=int(effect.proxy_target.rsplit(":", 1)[1]),
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
        await self._call(_write_atomically, self._files.program_dir(program_id) / SPEC_FILE, spec)
        container = await self._create(docker_create_args(spec))
        outbox.emit(ev.ContainerCreated(outbox.now(), effect.run, container.id))
        try:
            check_created(container.attrs, spec)
            await self._call(container.start)
            self._follow_logs(program_id, effect.run, container.id)
            await self._until_ready(request.host_port, effect.run, program_id)
        except asyncio.CancelledError:
            await asyncio.shield(self._remove(container.id))
            raise
        except Exception as error:
            # Failed first, removed second: the container's death that follows is old news.
            outbox.emit(ev.StartFailed(outbox.now(), effect.run, str(error)))
            await self._remove(container.id)
            return
        outbox.emit(ev.ContainerReady(outbox.now(), effect.run))

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
        url = f"http://127.0.0.1:{port}{READY_PATH}"
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
            f"its WatcherAPI did not answer GET {READY_PATH} on 127.0.0.1:{port} within "
            f"{self.settings.ready_timeout:g} s ({last_problem})"
        )

    async def _stop_containers(
        self,
        program_id: str,
        run: int,
        container_id: str | None,
    ) -> None:
        """Stop and remove `container_id` and the program's containers of runs up to `run`."""
        containers = await self._call(
            self._docker.containers.list,
            all=True,
            filters={"label": [f"{LABEL_PROGRAM}={program_id}"]},
        )
        targets = []
        for container in containers:
            if container.id == container_id or int(container.labels.get(LABEL_RUN, "0")) <= run:
                targets.append(container.id)
        await asyncio.gather(*(self._remove(target, graceful=True) for target in targets))

    async def _remove(self, container_id: str, *, graceful: bool = False) -> None:
        """SIGTERM, the grace period, SIGKILL, then remove. A container already gone is fine."""
        try:
            container = await self._call(self._docker.containers.get, container_id)
            if graceful and container.status == "running":
                await self._call(container.stop, timeout=int(self.settings.stop_grace))
            await self._call(container.remove, force=True)
        except NotFound:
            pass
        except APIError as error:
            if error.status_code != 409:  # 409: removal already in progress
                raise
        self._followed.discard(container_id)

    async def _teardown(self, program_id: str) -> None:
        await self._stop_containers(program_id, run=2**62, container_id=None)
        images = await self._call(
            self._docker.images.list, filters={"label": [f"{LABEL_PROGRAM}={program_id}"]}
        )
        for image in images:
            with contextlib.suppress(ImageNotFound):
                await self._call(self._docker.images.remove, image.id, force=True)
        # Unmounted before the folder goes: removing it must not reach into the volume.
        await self._volumes.remove(program_id)
        await self._files.remove(program_id)

    # --- watching containers ------------------------------------------------------

    def _follow_logs(
        self, program_id: str, run: int, container_id: str, since: float = 0.0
    ) -> None:
        if self._tasks is None or container_id in self._followed:
            return
        self._followed.add(container_id)
        self._spawn(self._copy_logs(program_id, run, container_id, since))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """A background task the handler owns and cancels when it closes."""
        assert self._tasks is not None
        task = self._tasks.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _copy_logs(self, program_id: str, run: int, container_id: str, since: float) -> None:
        streams = {"stdout": LogStream.STDOUT, "stderr": LogStream.STDERR}
        try:
            async for stream, text in self._engine.logs(container_id, since):
                self._logs.write(program_id, LogLine(time.time(), streams[stream], run, text))
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
        if outbox is None or LABEL_RUN not in attributes:
            return
        oom = container_id in self._oom_killed
        self._oom_killed.discard(container_id)
        outbox.emit(
            ev.ContainerExited(
                outbox.now(),
                int(attributes[LABEL_RUN]),
                int(attributes.get("exitCode", "-1")),
                oom,
                container_id,
            )
        )


class BuildError(Exception):
    def __init__(self, problem: str, tail: deque[str]) -> None:
        lines = "\n".join(tail)
        super().__init__(
            f"{problem}\n--- last lines of the build ---\n{lines}" if lines else problem
        )


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
    if any(b.get("HostIp") != "127.0.0.1" for entries in bindings.values() for b in entries or []):
        problems.append("a port would be published beyond 127.0.0.1")
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
