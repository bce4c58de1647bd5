"""The names a Host gives the images it builds: whose an image is, said by its tag.

Docker's legacy builder turns each label of the build API's `labels` into a
`LABEL` step of its own at the end of the Dockerfile (moby's
`buildLabelOptions`): a container made and committed per label, never reused
across programs (the values differ). Measured on this machine: a cached build
71 ms with no labels, 130 ms with one, 257 ms with three. So the images a Host
builds carry none of its labels, and their tag says whose they are:

    hershy/<program id>:<build id>.<host>.<user>

The Host owns every image whose tag ends in `.<host>.<anything>` (reaping), the
program the tags of its repository (teardown, older revisions), the user the
tags ending in `.<host>.<user>` (the only cache their builds may use). No part
holds a `.` (build ids are `b-<hex>`, user ids `[a-z0-9_-]`, the host part is
made so), so the last two dot-separated parts are always the host and the user.

A user's programs built from the same inputs at the same time share one image
under several tags, and a Dockerfile of only FROM would give the base image
itself: an image goes by untagging its tag, never by its id.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

REPOSITORY = "hershy"
_HOST_PART = re.compile(r"[a-z0-9]{1,24}")
_TAG = re.compile(
    rf"{REPOSITORY}/(?P<program>[a-z0-9][a-z0-9-]*):"
    r"(?P<build>[A-Za-z0-9_-]+)\.(?P<host>[a-z0-9]+)\.(?P<user>[a-z0-9_-]*)"
)


def host_part(host_id: str) -> str:
    """The host id as it goes in a tag: as it is when it can, else a digest of it."""
    if _HOST_PART.fullmatch(host_id):
        return host_id
    return "x" + hashlib.sha256(host_id.encode()).hexdigest()[:16]


def image_tag(host_id: str, user_id: str, program_id: str, build_id: str) -> str:
    return f"{REPOSITORY}/{program_id}:{build_id}.{host_part(host_id)}.{user_id}"


# Docker's `reference` filter matches with Go's path.Match: `*` never crosses a `/`.


def host_images(host_id: str) -> dict[str, list[str]]:
    """The `images` list filter: every image this Host tagged."""
    return {"reference": [f"{REPOSITORY}/*:*.{host_part(host_id)}.*"]}


def user_images(host_id: str, user_id: str) -> dict[str, list[str]]:
    """The `images` list filter: every image this Host tagged for `user_id`."""
    return {"reference": [f"{REPOSITORY}/*:*.{host_part(host_id)}.{user_id}"]}


def program_images(host_id: str, program_id: str) -> dict[str, list[str]]:
    """The `images` list filter: every image this Host tagged for `program_id`."""
    return {"reference": [f"{REPOSITORY}/{program_id}:*.{host_part(host_id)}.*"]}


def parse_tag(host_id: str, tag: str) -> tuple[str, str, str] | None:
    """(program, build, user) of a tag this Host gave; None for any other tag."""
    found = _TAG.fullmatch(tag)
    if found is None or found["host"] != host_part(host_id):
        return None
    return found["program"], found["build"], found["user"]


def tags_of(host_id: str, image: Mapping[str, object]) -> list[str]:
    """The tags of a listed image (`api.images`) that this Host gave it."""
    tags = image.get("RepoTags") or []
    assert isinstance(tags, list)
    return [str(tag) for tag in tags if parse_tag(host_id, str(tag)) is not None]
