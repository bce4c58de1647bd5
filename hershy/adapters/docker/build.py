"""Builds on Docker's legacy builder, bounded and kept apart per tenant.

Split from the runtime the way Nomad splits its docker driver: the runtime
runs containers, this builds images. What it adds to a plain `POST /build`:

- the build policy (`hershy.domain.build_policy`) again, right before the
  build, and the allowlisted base images checked to still be the images the
  Host resolved at start;
- no cross-tenant cache: `cachefrom` lists only this user's own images, so
  the legacy builder reuses a layer only when it is an ancestor of one of
  them (with none, a ref that never exists: no cache at all);
- limits on every RUN step: memory, memory+swap and CPU from the build API,
  and pids through a per-build cgroup under a Host-wide parent cgroup (v1)
  whose `pids.max` and `memory.limit_in_bytes` bound all builds together;
- a cap on what a build writes (each step container's `SizeRw`, each image's
  size) and a free-disk guard on Docker's root dir, watched while it runs;
- a Host-wide queue with a per-user limit, fair between users.

A build that fails, is cancelled or goes over a cap leaves nothing behind:
no tagged image, no step container, none of the layers it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import logging
import re
import shutil
import tarfile
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker
from docker.errors import APIError, ImageNotFound, NotFound

from hershy.adapters.docker.compose import (
    LABEL_MANAGED,
    LABEL_PROGRAM,
    LABEL_USER,
    SECURE_RUNTIME,
)
from hershy.adapters.docker.engine import Engine, EngineError
from hershy.adapters.docker.image_names import user_images
from hershy.adapters.docker.settings import BaseImageRefused as BaseImageRefused  # re-exported
from hershy.adapters.docker.settings import BuildLimits as BuildLimits  # re-exported
from hershy.domain import effects as fx
from hershy.domain import events as ev
from hershy.domain.build_policy import BuildPlan, BuildPolicy, check_dockerfile
from hershy.domain.errors import InvalidArgument
from hershy.domain.model import LogLine, LogStream
from hershy.domain.validation import ProgramSource
from hershy.service.ports import LogStore, Outbox, SourceStore

log = logging.getLogger(__name__)

T = TypeVar("T")

BUILD_TAIL_LINES = 15
RUN_STEP_PREFIX = " ---> Running in "
STEP_PREFIX = re.compile(r"Step \d+/\d+ : (\S+)")
LAYER_LINE = re.compile(r" ---> ([0-9a-f]{12,64})$")
USING_CACHE = " ---> Using cache"
#: A ref no image ever has: `cachefrom` with it turns the cache off (no own image yet).
NO_CACHE_REF = "hershy-no-cache/none:none"
#: At most this many of the user's own images are offered to the builder as cache.
CACHE_FROM_MAX = 64
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: How many passes a failed build's clean-up makes (0.25 s apart) before it gives up.
UNDO_ATTEMPTS = 20
MiB = 1024**2
GiB = 1024**3


class BuildError(Exception):
    def __init__(self, problem: str, tail: Sequence[str] = ()) -> None:
        self.problem = problem
        lines = "\n".join(tail)
        super().__init__(
            f"{problem}\n--- last lines of the build ---\n{lines}" if lines else problem
        )


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


def image_labels(host_id: str, program_id: str, user_id: str) -> dict[str, str]:
    """The labels of an image whose Dockerfile's last stage is only its FROM.

    Any other build gives its image no labels: Docker's legacy builder turns each
    into a `LABEL` step of its own (`image_names` says what that costs), and the
    image's tag says whose it is. A last stage of only FROM has no step that makes
    an image, and the builder then fails ("No image was generated"), or the image
    would be the base image itself: these labels are the steps that make the
    program's own image (and say whose it is, like the tag). A build cut off in
    them leaves an untagged image with the program's label, which
    `remove_cut_off_images` and the Host's reconciliation remove.
    """
    labels = {LABEL_MANAGED: host_id, LABEL_PROGRAM: program_id}
    if user_id:
        labels[LABEL_USER] = user_id
    return labels


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


# --- the Host-wide queue ---------------------------------------------------------------


@dataclass(eq=False)
class _Ticket:
    user_id: str
    admitted: asyncio.Future[None]
    on_position: Callable[[int], None]
    position: int = -1


class BuildQueue:
    """At most `slots` builds at once and `per_user` per user; waiting users take turns.

    A free slot goes to the waiting build whose user has the fewest builds
    running, then whose user was served longest ago, then the oldest: one
    user's flood of builds cannot starve another's. Each waiting build is
    told its place whenever it changes.
    """

    def __init__(self, slots: int, per_user: int) -> None:
        self._slots, self._per_user = max(1, slots), max(1, per_user)
        self._running: dict[str, int] = {}
        self._waiting: list[_Ticket] = []
        self._served: dict[str, int] = {}
        self._turn = itertools.count(1)

    @property
    def running(self) -> int:
        return sum(self._running.values())

    @contextlib.asynccontextmanager
    async def slot(self, user_id: str, on_position: Callable[[int], None]) -> AsyncIterator[None]:
        ticket = _Ticket(user_id, asyncio.get_running_loop().create_future(), on_position)
        self._waiting.append(ticket)
        self._admit()
        try:
            await ticket.admitted
        except BaseException:
            if ticket in self._waiting:
                self._waiting.remove(ticket)
            elif ticket.admitted.done() and not ticket.admitted.cancelled():
                self._release(user_id)
            self._admit()
            raise
        try:
            yield
        finally:
            self._release(user_id)
            self._admit()

    def _release(self, user_id: str) -> None:
        self._running[user_id] -= 1
        if not self._running[user_id]:
            del self._running[user_id]
            # Only users with something running or waiting are remembered: bounded.
            if not any(ticket.user_id == user_id for ticket in self._waiting):
                self._served.pop(user_id, None)

    def _admit(self) -> None:
        while self.running < self._slots:
            eligible = [
                (self._running.get(ticket.user_id, 0), self._served.get(ticket.user_id, 0), order)
                for order, ticket in enumerate(self._waiting)
                if self._running.get(ticket.user_id, 0) < self._per_user
            ]
            if not eligible:
                break
            chosen = self._waiting.pop(min(eligible)[2])
            self._running[chosen.user_id] = self._running.get(chosen.user_id, 0) + 1
            self._served[chosen.user_id] = next(self._turn)
            chosen.admitted.set_result(None)
        for place, ticket in enumerate(self._waiting, 1):
            if ticket.position != place:
                ticket.position = place
                ticket.on_position(place)


# --- cgroups -----------------------------------------------------------------------------


class BuildCgroups:
    """The Host-wide parent cgroup of all builds (v1) and one child per build."""

    def __init__(self, host_id: str, limits: BuildLimits, root: Path = CGROUP_ROOT) -> None:
        self.parent = f"hershy-builds-{re.sub(r'[^A-Za-z0-9_-]', '', host_id) or 'host'}"
        self._limits = limits
        self._root = root
        self.enabled = False

    def setup(self) -> None:
        """Make the parent with the Host-wide budget; without cgroup v1 pids/memory, warn."""
        try:
            pids, memory = self._root / "pids" / self.parent, self._root / "memory" / self.parent
            pids.mkdir(exist_ok=True)
            (pids / "pids.max").write_text(str(self._limits.total_pids))
            memory.mkdir(exist_ok=True)
            (memory / "memory.limit_in_bytes").write_text(str(self._limits.total_memory_bytes))
            self.enabled = True
        except OSError as error:
            log.warning(
                "builds have no pids limit and no Host-wide budget: cannot set up the cgroup "
                "v1 parent %s (%s)",
                self.parent,
                error,
            )

    def create(self, name: str) -> str | None:
        """A child for one build with its pids limit; the `cgroupparent` to build with."""
        if not self.enabled:
            return None
        child = self._root / "pids" / self.parent / name
        child.mkdir(exist_ok=True)
        (child / "pids.max").write_text(str(self._limits.pids))
        return f"/{self.parent}/{name}"

    def remove(self, name: str) -> None:
        """Remove the build's child in every hierarchy (runsc made it in all of them)."""
        if not self.enabled:
            return
        for hierarchy in self._root.iterdir():
            child = hierarchy / self.parent / name
            for inner in sorted(child.glob("*/"), reverse=True) if child.is_dir() else []:
                with contextlib.suppress(OSError):
                    inner.rmdir()
            with contextlib.suppress(OSError):
                child.rmdir()


# --- the builder ---------------------------------------------------------------------------


@dataclass
class _Progress:
    """What the running build made so far (read by the watcher, undone on failure)."""

    step: str | None = None
    made: list[str] = field(default_factory=list)
    instruction: str = ""
    reused_next: bool = False


Call = Callable[..., Awaitable[Any]]


class DockerBuilder:
    def __init__(
        self,
        *,
        call: Call,
        client: Callable[[], docker.DockerClient],
        engine: Engine,
        files: SourceStore,
        logs: LogStore,
        host_id: str,
        limits: BuildLimits,
        timeout: float,
    ) -> None:
        self._call = call
        self._client = client
        self._engine = engine
        self._files = files
        self._logs = logs
        self._host_id = host_id
        self.limits = limits
        self._timeout = timeout
        self.queue = BuildQueue(limits.max_concurrent, limits.max_per_user)
        self.cgroups = BuildCgroups(host_id, limits)
        self.policy = BuildPolicy({})
        self.docker_root = "/var/lib/docker"
        #: The builds under way, by (user, build id), each to the image it made (None:
        #: it failed): the user's programs of the same inputs wait for it, not build again.
        self._under_way: dict[tuple[str, str], asyncio.Future[str | None]] = {}

    @property
    def _docker(self) -> docker.DockerClient:
        return self._client()

    async def resolve_base_images(self, names: Sequence[str]) -> dict[str, str]:
        """Each allowlisted name's image id, now; refuses missing images and ONBUILD triggers."""
        resolved: dict[str, str] = {}
        for name in names:
            try:
                image = await self._call(self._docker.images.get, name)
            except ImageNotFound:
                raise BaseImageRefused(
                    f"base image {name!r} (--base-image) does not exist in Docker; build it "
                    "first (scripts/setup.sh makes hershy-busybox:latest) or drop it"
                ) from None
            if (image.attrs.get("Config") or {}).get("OnBuild"):
                raise BaseImageRefused(
                    f"base image {name!r} has ONBUILD triggers, which would run in every "
                    "tenant's build: refused"
                )
            resolved[name] = image.id
        self.policy = BuildPolicy(resolved)
        return resolved

    async def build(self, program_id: str, effect: fx.Build, outbox: Outbox, tag: str) -> None:
        def note(text: str) -> None:
            self._logs.write(program_id, LogLine(outbox.now(), LogStream.BUILD, effect.run, text))

        with contextlib.suppress(ImageNotFound):
            image = await self._call(self._docker.images.get, tag)
            note(f"reusing image {image.id} (build {effect.build_id}: same inputs)")
            outbox.emit(ev.BuildSucceeded(outbox.now(), effect.run, image.id))
            return
        source = await self._files.load_build(program_id, effect.build_id)
        plan = await self._check_policy(source.dockerfile)
        # A user's programs of the same inputs built at the same time are built once: the
        # others wait for that build and tag its image (the user's own, as `cachefrom`
        # allows) rather than each taking a build slot to make the same image again. One
        # started after it ended builds (fully cached: the user's own layers).
        key = (effect.user_id, effect.build_id)
        while effect.user_id and (under_way := self._under_way.get(key)) is not None:
            image_id = await asyncio.shield(under_way)
            if image_id is None:
                continue  # that build failed: the next one tries (or this one)
            repository, _, name = tag.rpartition(":")
            try:
                await self._call(self._docker.api.tag, image_id, repository, name)
            except (ImageNotFound, NotFound):
                continue  # its program went meanwhile, and its image with it
            note(
                f"reusing image {image_id} (build {effect.build_id}: the same inputs as "
                "another of your programs, built just now)"
            )
            outbox.emit(ev.BuildSucceeded(outbox.now(), effect.run, image_id))
            return
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        if effect.user_id:
            self._under_way[key] = done
        try:
            image_id = await self._build_queued(program_id, effect, outbox, tag, source, plan, note)
            done.set_result(image_id)
        finally:
            if not done.done():
                done.set_result(None)
            if self._under_way.get(key) is done:
                del self._under_way[key]

    async def _build_queued(
        self,
        program_id: str,
        effect: fx.Build,
        outbox: Outbox,
        tag: str,
        source: ProgramSource,
        plan: BuildPlan,
        note: Callable[[str], None],
    ) -> str:
        waited = False

        def queued(place: int) -> None:
            nonlocal waited
            waited = True
            note(
                f"queued: {place} build(s) ahead (at most {self.limits.max_concurrent} at once "
                f"on this Host, {self.limits.max_per_user} per user)"
            )
            outbox.emit(ev.BuildQueued(outbox.now(), effect.run, place))

        async with self.queue.slot(effect.user_id, queued):
            if waited:
                outbox.emit(ev.BuildQueued(outbox.now(), effect.run, 0))
            self._check_disk()
            return await self._build(program_id, effect, outbox, tag, source, plan, note)

    async def _check_policy(self, dockerfile: bytes) -> BuildPlan:
        try:
            plan = check_dockerfile(dockerfile, self.policy)
        except InvalidArgument as refused:
            raise BuildError(f"refused by the build policy: {refused.description}") from None
        for name in sorted(plan.base_images):
            try:
                now = (await self._call(self._docker.images.get, name)).id
            except ImageNotFound:
                now = "nothing"
            if now != self.policy.base_images[name]:
                raise BuildError(
                    f"base image {name} now resolves to {now}, not the "
                    f"{self.policy.base_images[name]} the Host resolved at start: refused "
                    "(restart the Host to accept the new image)"
                )
        return plan

    def _free_disk(self) -> int:
        return shutil.disk_usage(self.docker_root).free

    def _check_disk(self) -> None:
        free = self._free_disk()
        if free < self.limits.min_free_disk_bytes:
            raise BuildError(
                f"Docker's disk ({self.docker_root}) has {free / GiB:.1f} GiB free, less than "
                f"the {self.limits.min_free_disk_bytes / GiB:.1f} GiB this Host keeps free: "
                "no builds until space is freed"
            )

    async def _cache_from(self, user_id: str) -> list[str]:
        """This user's own images: the only layers the build may reuse."""
        if not user_id:
            return [NO_CACHE_REF]
        # By tag (`image_names`): the images carry no labels. The plain listing:
        # `images.list` inspects each image in turn, and one deleted meanwhile
        # (another of the user's programs going) would fail this build.
        images = await self._call(
            self._docker.api.images, filters=user_images(self._host_id, user_id)
        )
        # The newest first (the likeliest to share layers), bounded: it goes in a query string.
        images.sort(key=lambda image: int(image.get("Created") or 0), reverse=True)
        return [str(image["Id"]) for image in images[:CACHE_FROM_MAX]] or [NO_CACHE_REF]

    async def _build(
        self,
        program_id: str,
        effect: fx.Build,
        outbox: Outbox,
        tag: str,
        source: ProgramSource,
        plan: BuildPlan,
        note: Callable[[str], None],
    ) -> str:
        limits = self.limits
        cgroup_name = f"{program_id}-r{effect.run}"
        # Side by side, each on a worker thread: the Engine's listing of the user's
        # images, packing the context (tens of MiB, off the loop while other
        # programs' work goes on) and the build's cgroup do not wait for each other.
        cache_from, context, parent = await asyncio.gather(
            self._cache_from(effect.user_id),
            self._call(build_context, source),
            self._call(self.cgroups.create, cgroup_name),
            return_exceptions=True,
        )
        for outcome in (cache_from, context, parent):
            if isinstance(outcome, BaseException):
                # All three ended: the cgroup, if it was made, goes with the failure.
                await self._call(self.cgroups.remove, cgroup_name)
                raise outcome
        assert isinstance(cache_from, list)
        assert isinstance(context, bytes)
        assert parent is None or isinstance(parent, str)
        params = {
            "t": tag,
            "rm": "1",
            "forcerm": "1",
            "pull": "0",
            # The legacy builder, which `cachefrom` limits as described above.
            "version": "1",
            # No network while building: nothing to download from here, nothing to leak.
            "networkmode": "none",
            "cachefrom": json.dumps(cache_from),
            "memory": str(limits.memory_bytes),
            "memswap": str(limits.memory_bytes),
            "cpuperiod": "100000",
            "cpuquota": str(limits.milli_cpus * 100),
        }
        if not plan.final_stage_has_steps:
            labels = image_labels(self._host_id, program_id, effect.user_id)
            params["labels"] = json.dumps(labels)
        if parent is not None:
            params["cgroupparent"] = parent
        note(
            f"building {tag} (RUN steps under the daemon's default runtime, {SECURE_RUNTIME}; "
            f"each step at most {limits.memory_bytes // MiB} MiB, "
            f"{limits.milli_cpus / 1000:g} CPU, {limits.pids} pids; the build may write "
            f"{limits.max_image_bytes // MiB} MiB)"
        )
        tail: deque[str] = deque(maxlen=BUILD_TAIL_LINES)
        progress = _Progress()
        started = time.monotonic()
        try:
            try:
                async with asyncio.timeout(self._timeout), asyncio.TaskGroup() as tasks:
                    stream = tasks.create_task(self._stream(context, params, progress, tail, note))
                    watcher = tasks.create_task(self._watch(progress))
                    await stream
                    watcher.cancel()
            except* BuildError as group:
                failure = group.exceptions[0]
                assert isinstance(failure, BuildError)
                raise BuildError(failure.problem, tail) from None
            except* EngineError as group:
                raise BuildError(str(group.exceptions[0]), tail) from None
            image = await self._call(self._docker.images.get, tag)
            size = int(image.attrs.get("Size") or 0)
            if size > limits.max_image_bytes:
                raise BuildError(self._over_cap(f"the image is {size // MiB} MiB"), tail)
        except TimeoutError:
            await asyncio.shield(self._undo(progress, tag))
            raise BuildError(f"the build took longer than {self._timeout:g} s", tail) from None
        except BaseException:
            await asyncio.shield(self._undo(progress, tag))
            raise
        finally:
            await self._call(self.cgroups.remove, cgroup_name)
        note(f"built {image.id} in {time.monotonic() - started:.1f} s")
        if not plan.final_stage_has_steps:
            await self._call(self.remove_cut_off_images, program_id, image.id)
        outbox.emit(ev.BuildSucceeded(outbox.now(), effect.run, image.id))
        return str(image.id)

    def remove_cut_off_images(self, program_id: str, keep: str) -> None:
        """Remove the program's untagged images but `keep` (on a worker thread).

        A build with label steps (`image_labels`: a last stage of only FROM) cut off
        by a Host killed mid-way can leave an image with the program's label but no
        tag (the legacy builder tags what it finished; a build without label steps
        leaves nothing labelled). A program's images
        are tagged, one per build (`hershy/<id>:<build_id>`): the running revision's
        and those of its kept revisions (a rollout builds beside the running one),
        removed by `PruneBuilds` once they are no longer kept.
        """
        api = self._docker.api
        filters = {"label": [f"{LABEL_PROGRAM}={program_id}"], "dangling": True}
        for image in api.images(filters=filters):
            if image["Id"] != keep:
                with contextlib.suppress(ImageNotFound, NotFound, APIError):
                    api.remove_image(image["Id"], force=True, noprune=False)

    def _over_cap(self, what: str) -> str:
        return (
            f"the build wrote more than its cap of {self.limits.max_image_bytes // MiB} MiB "
            f"({what}): cancelled, nothing it made is kept"
        )

    async def _stream(
        self,
        context: bytes,
        params: Mapping[str, str],
        progress: _Progress,
        tail: deque[str],
        note: Callable[[str], None],
    ) -> None:
        async for message in self._engine.build(context, params):
            for line in str(message.get("stream", "")).splitlines():
                if line.strip():
                    tail.append(line)
                    note(line)
                self._track(line, progress)
            if "error" in message:
                note(f"error: {message['error']}")
                raise BuildError(str(message["error"]).strip(), tail)

    @staticmethod
    def _track(line: str, progress: _Progress) -> None:
        """Follow the legacy builder's output: the step's container, the layers it made."""
        if step := STEP_PREFIX.match(line):
            progress.instruction = step.group(1).upper()
            progress.reused_next = progress.instruction == "FROM"
        elif line.startswith(RUN_STEP_PREFIX):
            progress.step = line.removeprefix(RUN_STEP_PREFIX).strip()
        elif line.startswith(USING_CACHE):
            progress.reused_next = True
        elif layer := LAYER_LINE.match(line):
            if not progress.reused_next:
                progress.made.append(layer.group(1))
            progress.reused_next = False

    async def _watch(self, progress: _Progress) -> None:
        """While the build runs: what its step wrote, what its images weigh, the free disk."""
        cap = self.limits.max_image_bytes
        while True:
            await asyncio.sleep(self.limits.watch_interval)
            step = progress.step
            if step is not None:
                listed = await self._call(
                    self._docker.api.containers, all=True, size=True, filters={"id": step}
                )
                for info in listed:
                    written = int(info.get("SizeRw") or 0)
                    if written > cap:
                        raise BuildError(self._over_cap(f"a RUN step wrote {written // MiB} MiB"))
            if progress.made:
                with contextlib.suppress(ImageNotFound, APIError):
                    image = await self._call(self._docker.images.get, progress.made[-1])
                    size = int(image.attrs.get("Size") or 0)
                    if size > cap:
                        raise BuildError(self._over_cap(f"an image it made is {size // MiB} MiB"))
            free = await self._call(self._free_disk)
            if free < self.limits.min_free_disk_bytes:
                raise BuildError(
                    f"Docker's disk ({self.docker_root}) fell below the "
                    f"{self.limits.min_free_disk_bytes / GiB:.1f} GiB this Host keeps free: "
                    "build cancelled"
                )

    async def _undo(self, progress: _Progress, tag: str) -> None:
        """Remove what a failed build made: the step's container, its tag, its layers.

        A cancelled build can still be finishing a step in dockerd: what it
        makes from our layers meanwhile (a container, a child layer) is found
        by ancestry and removed too, until nothing is left (a few seconds at most).
        """
        await self.remove_step(progress.step)
        with contextlib.suppress(ImageNotFound, APIError):
            await self._call(self._docker.images.remove, tag, force=True)
        for _ in range(UNDO_ATTEMPTS):
            left = await self._call(self._remove_layers, list(progress.made))
            if not left:
                return
            await asyncio.sleep(0.25)
        log.warning("a failed build's layers could not all be removed: %s", ", ".join(left))

    def _remove_layers(self, made: list[str]) -> list[str]:
        """One pass (on a worker thread): the layers and everything made from them; what is left."""
        api = self._docker.api
        parents = {image["Id"]: image.get("ParentId", "") for image in api.images(all=True)}
        ours = {image_id for image_id in parents if _short(image_id) in made}
        children = True
        while children:  # layers made from ours, which we never saw (the build was cut off)
            found = {i for i, parent in parents.items() if parent in ours and i not in ours}
            ours |= found
            children = bool(found)

        def depth(image_id: str) -> int:
            parent = parents.get(image_id, "")
            return 1 + depth(parent) if parent in ours else 0

        for image_id in ours:
            for container in api.containers(all=True, filters={"ancestor": image_id}):
                with contextlib.suppress(NotFound, APIError):
                    api.remove_container(container["Id"], force=True)
        # Newest first: a layer goes once no layer is made from it.
        for image_id in sorted(ours, key=depth, reverse=True):
            with contextlib.suppress(ImageNotFound, NotFound, APIError):
                api.remove_image(image_id, force=True, noprune=False)
        present = {image["Id"] for image in api.images(all=True)}
        return [_short(image_id) for image_id in ours & present]

    async def remove_step(self, container_id: str | None) -> None:
        """Remove a build step's container and wait until it is really gone.

        It carries none of our labels, and dockerd removes it in its own time
        after a cancelled build, so we do it.
        """
        if container_id is None:
            return
        with contextlib.suppress(NotFound):
            for _ in range(100):
                container = await self._call(self._docker.containers.get, container_id)
                with contextlib.suppress(APIError):  # 409: dockerd is removing it already
                    await self._call(container.remove, force=True)
                await asyncio.sleep(0.1)
