"""After a Host restart: what runs is looked at, programs' containers adopted, the rest reaped.

Following Nomad's docker driver (its reconciler and its dangling-container
reaper): only what carries this Host's label (containers, and images of a
Dockerfile of only FROM) or its tag (images, `image_names`) is ever touched; containers of a
program's current run are kept and their output copied on from where the copy
stopped; containers of no program (or of an old run), and images no program
owns, are removed. Nothing that vanishes meanwhile is an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import docker
from docker.errors import APIError, ImageNotFound, NotFound

from hershy.adapters.docker.compose import LABEL_MANAGED, LABEL_PROGRAM, LABEL_RUN, labelled_run
from hershy.adapters.docker.image_names import host_images, parse_tag, tags_of
from hershy.adapters.docker.logs import ContainerOutput
from hershy.adapters.docker.port_pool import PortPool, Published, loopback_address, published_port
from hershy.adapters.docker.state_volumes import StateVolumes
from hershy.adapters.watcher_probe import LivenessProber
from hershy.domain import effects as fx
from hershy.domain import events as ev
from hershy.service.ports import Outbox

log = logging.getLogger(__name__)

#: Runs a docker SDK call on the runtime's threads.
Call = Callable[..., Awaitable[Any]]
#: A docker SDK list call, asked again while it raises NotFound.
Listed = Callable[..., Awaitable[Any]]


def cut_off_build(image: Mapping[str, Any], before: float) -> bool:
    """An image of a build cut off by the Host's death: labelled, never tagged, and older
    than this reconciliation (a build under way now is not taken for one)."""
    tags = [tag for tag in image.get("RepoTags") or [] if tag != "<none>:<none>"]
    return not tags and float(image.get("Created") or 0) < before - 1.0


class Reconciler:
    def __init__(
        self,
        *,
        host_id: str,
        call: Call,
        listed: Listed,
        client: Callable[[], docker.DockerClient],
        ports: PortPool,
        published: dict[str, Published],
        output: ContainerOutput,
        remove: Callable[[str], Awaitable[None]],
        volumes: StateVolumes,
        prober: LivenessProber,
    ) -> None:
        """`published`: the runtime's map of container id to its port, filled in here.
        `remove`: stops (gracefully) and removes a container, giving its port back.
        `prober`: keeps asking adopted running programs whether they are alive."""
        self._managed = {"label": [f"{LABEL_MANAGED}={host_id}"]}
        self._host_id = host_id
        self._call = call
        self._listed = listed
        self._client = client
        self._ports = ports
        self._published = published
        self._output = output
        self._remove = remove
        self._volumes = volumes
        self._prober = prober

    async def hold_published_ports(self) -> None:
        """Learn the ports this Host's containers publish (they outlive a Host restart)."""
        docker_client = self._client()
        # Tolerant of containers vanishing while listed (a kill -9 may leave removals going).
        for container in await self._listed(
            docker_client.containers.list, all=True, filters=self._managed
        ):
            port = published_port(container.attrs)
            if port is None:
                continue
            self._ports.hold(port)
            self._published[container.id] = Published(
                container.labels.get(LABEL_PROGRAM, ""),
                int(container.labels.get(LABEL_RUN, "0")),
                port,
            )

    async def reap(self, owned: Mapping[str, int]) -> None:
        """Reconcile with Docker after a Host restart, before any supervisor runs.

        Looks at every container carrying this Host's label: the output of those a
        program owns (its current run) is copied into its log from where the copy
        stopped (followed on if the container runs); the rest are removed, like
        images and `/state` volumes no program owns (Nomad's reaping). `owned` is
        read as each decision is made. A container or image that vanishes meanwhile
        is no error; any other Docker error raises, and the caller retries the
        whole step.
        """
        docker_client = self._client()
        orphans = []
        for container in await self._listed(
            docker_client.api.containers, all=True, filters=self._managed
        ):
            labels = container.get("Labels") or {}
            program_id = labels.get(LABEL_PROGRAM, "")
            run = labelled_run(labels)
            if run is not None and owned.get(program_id) == run:
                self._output.follow(program_id, run, container["Id"], resume=True)
            else:
                orphans.append(container["Id"])
        if orphans:
            log.info("removing %d containers no program owns", len(orphans))
        await asyncio.gather(*(self._remove(orphan) for orphan in orphans))
        # Their containers gone, the /state volumes of programs the store no longer has
        # (a Host that died between a program's deletion and its teardown): no loop
        # device or mount of theirs outlives the Host's word that they are gone.
        for program_id in await self._volumes.programs():
            if program_id not in owned:
                log.info("removing the /state volume of %s: no program owns it", program_id)
                await self._volumes.remove(program_id)
        reconciling_since = time.time()
        # Tags of programs the store no longer has: untagged, so an image another
        # program (or a base image) also names stays; it goes with its last tag.
        for image in await self._listed(
            docker_client.api.images, filters=host_images(self._host_id)
        ):
            for tag in tags_of(self._host_id, image):
                parsed = parse_tag(self._host_id, tag)
                if parsed is None or parsed[0] in owned:
                    continue
                log.info("removing image tag %s: no program owns it", tag)
                await self._remove_image(tag)
        # Labelled (a Dockerfile of only FROM, `image_labels`): of no program, or a build
        # the Host's death cut off.
        for image in await self._listed(docker_client.api.images, filters=self._managed):
            if (image.get("Labels") or {}).get(LABEL_PROGRAM) in owned and not cut_off_build(
                image, reconciling_since
            ):
                continue
            if tags_of(self._host_id, image):
                continue  # tagged for a program: the tags decide (above)
            log.info(
                "removing image %s: no program owns it (or its build was cut off)", image["Id"]
            )
            await self._remove_image(image["Id"])

    async def _remove_image(self, name: str) -> None:
        try:
            await self._call(self._client().images.remove, name, force=True)
        except ImageNotFound:
            pass  # gone meanwhile
        except APIError as error:
            if error.status_code != 409:  # 409: in use, or being removed already
                raise

    async def adopt(self, program_id: str, effect: fx.AdoptContainer, outbox: Outbox) -> None:
        """Take back a container that ran on while the Host was down: same container, no restart.

        Its output written meanwhile is copied into the log first (the reconciling
        `reap` began it); one that died meanwhile is reported after its last lines.
        """
        try:
            container = await self._call(self._client().containers.get, effect.container_id or "")
        except NotFound:
            outbox.emit(ev.ContainerExited(outbox.now(), effect.run, -1))
            return
        state = container.attrs.get("State", {})
        self._output.follow(program_id, effect.run, container.id, resume=True)
        if state.get("Running"):
            log.info("program %s: adopted its running container %s", program_id, container.id)
            published = self._published.get(container.id)
            if published is not None:
                self._prober.watch(
                    container.id,
                    program_id,
                    effect.run,
                    loopback_address(published.port),
                    effect.readiness,
                    outbox,
                )
            return
        await self._output.drained(container.id)
        outbox.emit(
            ev.ContainerExited(
                outbox.now(),
                effect.run,
                int(state.get("ExitCode", -1)),
                bool(state.get("OOMKilled", False)),
                container.id,
            )
        )
