"""Programs' images on Kubernetes: built on the Host as on Docker, pushed to the Host's registry.

The build is the Docker runtime's (`DockerBuilder`: gVisor build steps, the
build policy, the per-user cache, the caps); the image is then tagged
`REGISTRY/hershy/<host>/<program>:<build>` and pushed, and the Pod names it by
the digest the registry answered (`REGISTRY/...@sha256:...`), so a node runs
exactly the bytes the Host built and nothing is pulled from anywhere else.
Deleting a program deletes its manifests from the registry (the registry's
garbage collector reclaims the blobs) and its local images.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import docker
from docker.errors import APIError, ImageNotFound, NotFound

from hershy.adapters.docker.build import DockerBuilder
from hershy.adapters.docker.image_names import host_images, image_tag, parse_tag, tags_of
from hershy.adapters.kubernetes.pod_spec import repository
from hershy.domain import effects as fx
from hershy.domain import events as ev
from hershy.domain.model import LogLine, LogStream
from hershy.service.ports import LogStore, Outbox

log = logging.getLogger(__name__)

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
#: The manifest types a registry is asked for (what Docker pushes).
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)

Call = Callable[..., Awaitable[Any]]


class PushFailed(Exception):
    """The image could not be pushed to the Host's registry."""


class _HeldBack:
    """The builder's outbox, holding back its `BuildSucceeded` until the image is pushed."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self.succeeded: ev.BuildSucceeded | None = None

    def now(self) -> float:
        return self._outbox.now()

    def emit(self, event: ev.EffectResult) -> None:
        if isinstance(event, ev.BuildSucceeded):
            self.succeeded = event
        else:
            self._outbox.emit(event)


def image_reference(registry: str, host_id: str, program_id: str, digest: str) -> str:
    return f"{registry}/{repository(host_id, program_id)}@{digest}"


class RegistryImages:
    """Builds (through the Docker builder), pushes and deletes programs' images."""

    def __init__(
        self,
        *,
        builder: DockerBuilder,
        call: Call,
        client: Callable[[], docker.DockerClient],
        logs: LogStore,
        registry: str,
        host_id: str,
    ) -> None:
        self.builder = builder
        self._call = call
        self._client = client
        self._logs = logs
        self.registry = registry
        self._host_id = host_id

    def local_tag(self, program_id: str, user_id: str, build_id: str) -> str:
        """The tag the Docker builder gives the image: it says whose it is (`image_names`)."""
        return image_tag(self._host_id, user_id, program_id, build_id)

    def remote(self, program_id: str) -> str:
        return f"{self.registry}/{repository(self._host_id, program_id)}"

    async def build(self, program_id: str, effect: fx.Build, outbox: Outbox) -> None:
        held = _HeldBack(outbox)
        await self.builder.build(
            program_id, effect, held, self.local_tag(program_id, effect.user_id, effect.build_id)
        )
        if held.succeeded is None:
            return  # the builder reported its failure itself
        digest = await self._push(program_id, effect.build_id, held.succeeded.image_id)
        reference = f"{self.remote(program_id)}@{digest}"
        self._logs.write(
            program_id,
            LogLine(outbox.now(), LogStream.BUILD, effect.run, f"pushed {reference}"),
        )
        outbox.emit(ev.BuildSucceeded(held.succeeded.at, effect.run, reference))

    async def _push(self, program_id: str, build_id: str, image_id: str) -> str:
        remote = self.remote(program_id)
        api = self._client().api
        await self._call(api.tag, image_id, remote, build_id)
        try:
            digest: str = await self._call(_push_for_digest, api, remote, build_id)
            return digest
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._call(api.remove_image, f"{remote}:{build_id}"))
            raise

    async def delete(self, program_id: str, keep_builds: frozenset[str] = frozenset()) -> None:
        """Remove the program's manifests in the registry (but those of `keep_builds`) and
        its local images (all of them when nothing is kept)."""
        await self.delete_remote(program_id, keep_builds)
        # The images carry no labels: found by their tags, the builder's and the pushed one,
        # and removed a tag at a time (an image goes with its last tag, never a base image).
        api = self._client().api
        remote = self.remote(program_id) + ":"
        for image in await self._call(api.images):
            for tag in image.get("RepoTags") or []:
                parsed = parse_tag(self._host_id, tag)
                if parsed is not None and parsed[0] == program_id:
                    build = parsed[1]
                elif tag.startswith(remote):
                    build = tag[len(remote) :]
                else:
                    continue
                if build not in keep_builds:
                    with contextlib.suppress(ImageNotFound, NotFound, APIError):
                        await self._call(api.remove_image, tag, force=True, noprune=False)

    async def programs_with_images(self) -> set[str]:
        """The programs this Host holds built images of (what reaping looks at)."""
        api = self._client().api
        images = await self._call(api.images, filters=host_images(self._host_id))
        return {
            parsed[0]
            for image in images
            for tag in tags_of(self._host_id, image)
            if (parsed := parse_tag(self._host_id, tag)) is not None
        }

    async def delete_remote(self, program_id: str, keep_builds: frozenset[str]) -> None:
        name = repository(self._host_id, program_id)
        async with aiohttp.ClientSession(
            f"http://{self.registry}", timeout=aiohttp.ClientTimeout(total=30)
        ) as http:
            tags = await registry_tags(http, name)
            kept_digests = set()
            for tag in keep_builds & set(tags):
                digest = await _manifest_digest(http, name, tag)
                if digest:
                    kept_digests.add(digest)
            for tag in tags:
                digest = await _manifest_digest(http, name, tag)
                if digest is None or digest in kept_digests:
                    continue
                async with http.delete(f"/v2/{name}/manifests/{digest}") as response:
                    if response.status not in (200, 202, 404):
                        raise PushFailed(
                            f"the registry refused to delete {name}@{digest}: HTTP "
                            f"{response.status} {await response.text()} (is deleting enabled?)"
                        )


async def registry_tags(http: aiohttp.ClientSession, name: str) -> list[str]:
    """The tags of a repository in the registry; none if it does not exist."""
    async with http.get(f"/v2/{name}/tags/list") as response:
        if response.status == 404:
            return []
        response.raise_for_status()
        body = await response.json()
    return [str(tag) for tag in body.get("tags") or []]


async def _manifest_digest(http: aiohttp.ClientSession, name: str, tag: str) -> str | None:
    async with http.head(
        f"/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}
    ) as response:
        if response.status == 404:
            return None
        response.raise_for_status()
        return response.headers.get("Docker-Content-Digest")


def _push_for_digest(api: Any, remote: str, tag: str) -> str:
    """Push (on a worker thread) and return the digest the registry gave the manifest."""
    digest = None
    for message in api.push(remote, tag=tag, stream=True, decode=True):
        if "error" in message:
            raise PushFailed(f"pushing {remote}:{tag} failed: {message['error']}")
        aux = message.get("aux") or {}
        if aux.get("Digest"):
            digest = str(aux["Digest"])
        elif digest is None:
            found = DIGEST.search(str(message.get("status") or ""))
            if found:
                digest = found.group(0)
    if digest is None:
        raise PushFailed(f"pushing {remote}:{tag} gave no digest")
    return digest
