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
import json
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import LogConfig

from hershy.adapters.docker.build import DockerBuilder
from hershy.adapters.docker.build import build_context as build_context  # re-exported
from hershy.adapters.docker.compose import (
    LABEL_MANAGED,
    LABEL_PROGRAM,
    LABEL_STOP_GRACE,
    SECURE_RUNTIME,
    ContainerRequest,
    compose_spec,
    contract_violations,
    labelled_run,
)
from hershy.adapters.docker.engine import Engine, EngineError
from hershy.adapters.docker.fingerprint import RuntimeUnavailable as RuntimeUnavailable
from hershy.adapters.docker.fingerprint import describe_runtime as describe_runtime
from hershy.adapters.docker.image_names import image_tag as image_tag  # re-exported
from hershy.adapters.docker.image_names import parse_tag, program_images, tags_of
from hershy.adapters.docker.logs import ContainerOutput
from hershy.adapters.docker.port_pool import (
    LOOPBACK,
    PortPool,
    Published,
    loopback_address,
    loopback_endpoint,
)
from hershy.adapters.docker.port_pool import published_port as published_port  # re-exported
from hershy.adapters.docker.reconcile import Reconciler
from hershy.adapters.docker.secret_files import SecretFiles
from hershy.adapters.docker.settings import DockerSettings as DockerSettings  # re-exported
from hershy.adapters.docker.state_volumes import LoopStateVolumes, StateVolumes
from hershy.adapters.watcher_probe import LivenessProber, ProbeAnswer, until_ready
from hershy.adapters.watcher_probe import StartRefused as StartRefused  # re-exported
from hershy.domain import effects as fx
from hershy.domain import events as ev
from hershy.domain.config import SECRETS_DIR
from hershy.domain.model import LogLine, LogStream
from hershy.service.ports import LogStore, Outbox, ProgramFolders, WatcherEndpoint
from hershy.service.secrets import SecretValues

log = logging.getLogger(__name__)

T = TypeVar("T")

READY_PATH = "/watcher/status"
SPEC_FILE = "compose.json"
#: How many ports one start tries when Docker finds the one it was given taken (another
#: Host's container, any process binding it after the pool's check) before it gives up.
PORT_ATTEMPTS = 8
#: How Docker says a published port is taken: by another container, or by another process.
PORT_TAKEN = ("port is already allocated", "address already in use")
#: A list call that raises NotFound (something vanished as the daemon listed it) is retried.
LIST_ATTEMPTS = 5


class ContractBroken(Exception):
    """A container would break a security contract; it is not started."""


class PortsTaken(Exception):
    """Port after port the container was to publish on turned out taken; the start gives up."""


def docker_create_args(spec: dict[str, Any]) -> dict[str, Any]:
    """The docker SDK's `containers.create` arguments for a validated spec: nothing added."""
    service = spec["services"]["program"]
    (port,) = service["ports"]
    volumes = {
        volume["source"]: {"bind": volume["target"], "mode": "ro" if volume["read_only"] else "rw"}
        for volume in service["volumes"]
    }
    return {
        "image": service["image"],
        "name": service["container_name"],
        "runtime": service["runtime"],
        "read_only": service["read_only"],
        "volumes": volumes,
        "environment": dict(service.get("environment", {})),
        "ports": {f"{port['target']}/tcp": (port["host_ip"], int(port["published"]))},
        "cap_drop": service["cap_drop"],
        "security_opt": service["security_opt"],
        "privileged": service["privileged"],
        "pids_limit": service["pids_limit"],
        "mem_limit": service["mem_limit"],
        "memswap_limit": service["mem_limit"],
        "nano_cpus": round(service["cpus"] * 1e9),
        "labels": service["labels"],
        "stop_signal": service["stop_signal"],
        "restart_policy": {"Name": service["restart"]},
        "log_config": LogConfig(
            type=service["logging"]["driver"], config=service["logging"]["options"]
        ),
        "detach": True,
    }


def port_taken(error: APIError) -> bool:
    """Whether Docker refused to start a container because its published port is taken."""
    text = str(error.explanation or error)
    return any(phrase in text for phrase in PORT_TAKEN)


class DockerEffectHandler:
    """Carries out effects on Docker. Use as an async context manager (it owns background tasks)."""

    def __init__(
        self,
        settings: DockerSettings,
        files: ProgramFolders,
        logs: LogStore,
        ports: PortPool | None = None,
        volumes: StateVolumes | None = None,
        *,
        secrets: SecretValues | None = None,
        secret_files: SecretFiles | None = None,
        prober: LivenessProber | None = None,
    ) -> None:
        self.settings = settings
        #: Probes every READY program's WatcherAPI (one task, one session, bounded).
        self.prober = prober or LivenessProber(settings.prober)
        self.runtime = settings.runtime
        self._files = files
        self._logs = logs
        #: Where programs' WatcherAPIs are published; this handler places every container.
        self.ports = ports or PortPool()
        self._published: dict[str, Published] = {}  # container id -> its port
        #: Each program's /state, a file system of its `resources.state_bytes`.
        self._volumes = volumes or LoopStateVolumes(files.root)
        #: Programs' secrets, handed over as files in a memory-backed folder at each start.
        self._secrets = secrets
        self._secret_files = secret_files or SecretFiles(
            settings.secrets_root / (settings.host_id or "default")
        )
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="docker")
        #: Containers being created and started at once (each boots a sandbox); the wait
        #: for a program to answer holds none.
        self._starting = asyncio.Semaphore(settings.starts_at_once)
        self._engine = Engine(settings.socket)
        self._client: docker.DockerClient | None = None
        self._http: aiohttp.ClientSession | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._outboxes: dict[str, Outbox] = {}
        self._oom_killed: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        #: What containers print, copied into the programs' logs.
        self.output = ContainerOutput(logs, lambda: self._engine, self._spawn_if_open)
        self.reconciler = Reconciler(
            host_id=settings.host_id,
            call=self._call,
            listed=self._listed,
            client=lambda: self._docker,
            ports=self.ports,
            published=self._published,
            output=self.output,
            remove=functools.partial(self._remove, graceful=True),
            volumes=self._volumes,
            prober=self.prober,
        )
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
        await self.reconciler.hold_published_ports()
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._spawn(self._watch_events())
        self._spawn(self.prober.run(self._http))
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

    def watcher_endpoint(self, address: str) -> WatcherEndpoint | None:
        """Only addresses this runtime hands out: loopback, on a WatcherAPI port."""
        return loopback_endpoint(address)

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
                await self.reconciler.adopt(program_id, effect, outbox)
            case fx.PruneBuilds():
                await self._prune_builds(program_id, effect.keep)

    async def reap(self, owned: Mapping[str, int]) -> None:
        """After a Host restart, before any supervisor runs (see `reconcile`)."""
        await self.reconciler.reap(owned)

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

    async def _build(self, program_id: str, effect: fx.Build, outbox: Outbox) -> None:
        tag = image_tag(self.settings.host_id, effect.user_id, program_id, effect.build_id)
        await self.builder.build(program_id, effect, outbox, tag)

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
        values = self._secrets.values(program_id) if self._secrets is not None else {}
        owner = await self._image_user(effect.image_id) if values else None
        secrets_dir = await self._secret_files.attach(program_id, values, owner)
        container: Any = None
        try:
            # A slot while its sandbox is made and booted (CPU-bound); not while it initialises.
            async with self._starting:
                for attempt in range(1, PORT_ATTEMPTS + 1):
                    container, spec = await self._create_on_a_free_port(
                        program_id, effect, state_dir, secrets_dir
                    )
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
            self.output.follow(program_id, effect.run, container.id)
            last = await self._until_ready(loopback_address(port), effect, outbox)
        except asyncio.CancelledError:
            if container is not None:
                await asyncio.shield(self._remove(container.id))
            await asyncio.shield(self._secret_files.detach(program_id))
            raise
        except Exception as error:
            if container is None:
                await self._secret_files.detach(program_id)
                raise  # nothing was created: the supervisor reports the failure
            # Failed first, removed second: the container's death that follows is old news.
            outbox.emit(ev.StartFailed(outbox.now(), effect.run, str(error)))
            await self._remove(container.id)
            await self._secret_files.detach(program_id)
            return
        outbox.emit(ev.ContainerReady(outbox.now(), effect.run))
        self.prober.watch(
            container.id,
            program_id,
            effect.run,
            loopback_address(port),
            effect.readiness,
            outbox,
            last,
        )

    async def _image_user(self, image_id: str) -> tuple[int, int] | None:
        """The numeric `USER` (uid, gid) the image runs as, so its secrets are its own to
        read; None for root or a user named by name (its files then stay root's)."""
        attrs = await self._call(self._docker.api.inspect_image, image_id)
        return numeric_user(str((attrs.get("Config") or {}).get("User") or ""))

    async def _create_on_a_free_port(
        self,
        program_id: str,
        effect: fx.StartContainer,
        state_dir: Path,
        secrets_dir: Path | None = None,
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
                env=effect.env,
                secrets_dir=str(secrets_dir) if secrets_dir is not None else None,
                stop_signal=effect.stop.signal,
                stop_grace_seconds=effect.stop.grace_seconds or self.settings.stop_grace,
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

    async def _until_ready(
        self, address: str, effect: fx.StartContainer, outbox: Outbox
    ) -> ProbeAnswer:
        assert self._http is not None
        return await until_ready(
            self._http,
            address,
            effect.readiness,
            effect.run,
            outbox,
            default_timeout=self.settings.ready_timeout,
            poll_interval=self.settings.ready_poll_interval,
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
            run_of_it = labelled_run(container["Labels"] or {}) or 0
            if container["Id"] == container_id or run_of_it <= run:
                targets.append(container["Id"])
        await asyncio.gather(*(self._remove(target, graceful=True) for target in targets))
        # Nothing of the program runs any more: its secrets leave memory too.
        await self._secret_files.detach(program_id)
        # Containers removed behind the Host's back (`docker rm`) give their ports back too;
        # not one a start created since the listing above (it was not looked at).
        for gone, published in known:
            if published.program_id == program_id and (
                gone == container_id or published.run <= run
            ):
                self._release_port(gone)

    async def _remove(self, container_id: str, *, graceful: bool = False) -> None:
        """SIGTERM, the grace period, SIGKILL, then remove. A container already gone is fine."""
        self.prober.forget(container_id)
        try:
            container = await self._call(self._docker.containers.get, container_id)
            if graceful and container.status == "running":
                await self._call(container.stop, timeout=self._stop_grace_of(container))
            if graceful:
                await self.output.drained(container_id)  # its last lines first: removing loses them
            await self._call(container.remove, force=True)
        except NotFound:
            pass
        except APIError as error:
            if error.status_code != 409:  # 409: removal already in progress
                raise
        self.output.forget(container_id)
        self._release_port(container_id)

    def _stop_grace_of(self, container: Any) -> int:
        """The grace its program asked for (its label), else the Host's."""
        labels = (container.attrs.get("Config") or {}).get("Labels") or {}
        try:
            grace = float(labels.get(LABEL_STOP_GRACE, ""))
        except ValueError:
            grace = self.settings.stop_grace
        return max(0, round(grace))

    def _release_port(self, container_id: str) -> None:
        published = self._published.pop(container_id, None)
        if published is not None:
            self.ports.release(published.port)

    async def _prune_builds(self, program_id: str, keep: frozenset[str]) -> None:
        """Remove the program's images and sources of builds not in `keep` (older revisions).

        Each image is tagged by its build (`image_tag`), so the running revision's
        image and a candidate's live side by side until a rollout ends. Only the
        program's own tags go (`image_names`: an image may have others).
        """
        for tag in await self._program_tags(program_id):
            parsed = parse_tag(self.settings.host_id, tag)
            if parsed is not None and parsed[1] not in keep:
                await self._untag(tag)
        await self._files.prune_builds(program_id, keep)

    async def _program_tags(self, program_id: str) -> list[str]:
        host_id = self.settings.host_id
        images = await self._call(
            self._docker.api.images, filters=program_images(host_id, program_id)
        )
        return [
            tag
            for image in images
            for tag in tags_of(host_id, image)
            if (parsed := parse_tag(host_id, tag)) is not None and parsed[0] == program_id
        ]

    async def _untag(self, tag: str) -> None:
        """Remove one tag: the image goes with its last tag (never another's, nor a base)."""
        with contextlib.suppress(ImageNotFound, NotFound, APIError):  # APIError: 409, in use
            await self._call(self._docker.api.remove_image, tag, force=True, noprune=False)

    async def _teardown(self, program_id: str) -> None:
        await self._stop_containers(program_id, run=2**62, container_id=None)
        for tag in await self._program_tags(program_id):
            await self._untag(tag)
        # An image of a build with label steps cut off by a Host killed mid-way.
        await self._call(self.builder.remove_cut_off_images, program_id, "")
        # Unmounted before the folder goes: removing it must not reach into the volume.
        await self._volumes.remove(program_id)
        await self._files.remove(program_id)

    # --- watching containers ------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A background task the handler owns and cancels when it closes."""
        assert self._tasks is not None
        task = self._tasks.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _spawn_if_open(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """As `_spawn`, while the handler is open; else the work is dropped (None)."""
        if self._tasks is None:
            work.close()
            return None
        return self._spawn(work)

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
        run = labelled_run(attributes)
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
        await self.output.drained(container_id)
        outbox.emit(ev.ContainerExited(outbox.now(), run, exit_code, oom, container_id))


def numeric_user(user: str) -> tuple[int, int] | None:
    """`1000` or `1000:1000` -> (uid, gid); None for root, "" or a name."""
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()) or int(uid) == 0:
        return None
    return int(uid), int(gid or uid)


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
    if any(
        mount.get("Destination") == SECRETS_DIR and mount.get("RW") is not False
        for mount in attrs.get("Mounts") or []
    ):
        problems.append(f"its secrets at {SECRETS_DIR} would be writable")
    if problems:
        raise ContractBroken("refusing to start it: " + "; ".join(problems))


def _write_atomically(path: Path, spec: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(spec, indent=2) + "\n")
    os.replace(temporary, path)
