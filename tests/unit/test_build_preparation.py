"""A build's preparation (the user's images listed, the context packed, its cgroup made at
once): when one part fails, the cgroup made meanwhile goes with the failure."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from hershy.adapters.docker.build import BuildLimits, DockerBuilder
from hershy.domain import effects as fx
from hershy.domain.build_policy import BuildPlan
from hershy.domain.validation import ProgramSource


class _Cgroups:
    def __init__(self) -> None:
        self.made: set[str] = set()

    def create(self, name: str) -> str:
        self.made.add(name)
        return f"/parent/{name}"

    def remove(self, name: str) -> None:
        self.made.discard(name)


class _Api:
    def images(self, **_: Any) -> list[dict[str, Any]]:
        raise OSError("the Engine went away")


class _Client:
    api = _Api()


async def _on_a_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(function, *args, **kwargs)


async def test_a_failed_image_listing_leaves_no_cgroup_behind() -> None:
    builder = DockerBuilder(
        call=_on_a_thread,
        client=lambda: _Client(),
        engine=None,  # type: ignore[arg-type]
        files=None,  # type: ignore[arg-type]
        logs=None,  # type: ignore[arg-type]
        host_id="h",
        limits=BuildLimits(),
        timeout=10,
    )
    cgroups = _Cgroups()
    builder.cgroups = cgroups  # type: ignore[assignment]
    source = ProgramSource(b"FROM scratch\nCOPY a /a\n", {"a": b"x" * 1024})
    with pytest.raises(OSError, match="went away"):
        await builder._build(
            "p-1",
            fx.Build(run=1, build_id="b-" + "0" * 24, user_id="alice"),
            None,  # type: ignore[arg-type]
            "hershy/p-1:b",
            source,
            BuildPlan(frozenset()),
            lambda _: None,
        )
    assert cgroups.made == set()
