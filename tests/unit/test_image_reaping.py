"""Reaping after a Host restart goes by tag: only this Host's tags of programs it no longer
has go, and an image another program (or a base image) also names stays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from docker.errors import ImageNotFound

from hershy.adapters.docker.image_names import image_tag
from hershy.domain import limits
from tests.unit.test_recovery import HOST_ID, RacingDocker, racing_handler


def tag_of(program_id: str, build_id: str) -> str:
    return image_tag(HOST_ID, "alice", program_id, build_id)


async def test_reaping_untags_what_no_program_owns_and_nothing_else(tmp_path: Path) -> None:
    fake = RacingDocker(
        containers=[],
        images=[
            {"Id": "img-owned", "RepoTags": [tag_of("prog-1", "b-1")]},
            # A user's same-inputs programs share an image: only the gone one's tag goes.
            {"Id": "img-shared", "RepoTags": [tag_of("prog-1", "b-2"), tag_of("prog-gone", "b-2")]},
            {"Id": "img-orphan", "RepoTags": [tag_of("prog-gone", "b-3")]},
            # Another Host's on the same daemon, and an image that is none of ours.
            {"Id": "img-other-host", "RepoTags": [image_tag("otherhost", "a", "prog-gone", "b")]},
            {"Id": "img-base", "RepoTags": ["hershy-busybox:latest"]},
            {"Id": "img-vanished", "RepoTags": [tag_of("prog-gone", "vanished")]},
        ],
    )
    fake.list_failures = 0
    listed = fake.images_listed

    def images(filters: dict[str, list[str]], **_: Any) -> list[dict[str, Any]]:
        # As dockerd: a label filter lists only images with that label (a tag filter is
        # left to the adapter's own parsing, which must then tell its tags apart).
        wanted = [item.partition("=") for item in filters.get("label", [])]
        return [
            image
            for image in listed
            if all((image.get("Labels") or {}).get(key) == value for key, _, value in wanted)
        ]

    def remove(name: str, force: bool = False) -> None:
        if name == tag_of("prog-gone", "vanished"):
            raise ImageNotFound("gone")
        fake.images_removed.append(name)

    fake.api.images = images  # type: ignore[method-assign,assignment]
    fake.images.remove = remove  # type: ignore[method-assign,assignment]
    handler = racing_handler(fake, tmp_path)
    try:
        await handler.reap({"prog-1": 1})
    finally:
        handler._pool.shutdown()
    assert fake.images_removed == [
        tag_of("prog-gone", "b-2"),
        tag_of("prog-gone", "b-3"),
    ]


@pytest.mark.parametrize(
    ("cores", "memory_gib", "builds", "starts"),
    [(1, 2, 1, 8), (2, 24, 2, 16), (16, 8, 2, 128), (64, 512, 64, 512)],
)
def test_the_bounds_fit_the_machine(cores: int, memory_gib: int, builds: int, starts: int) -> None:
    assert limits.machine_builds_at_once(cores, memory_gib * limits.GiB) == builds
    assert limits.machine_starts_at_once(cores) == starts
    assert limits.machine_builds_at_once(2, 24 * limits.GiB) == limits.BUILDS_AT_ONCE
