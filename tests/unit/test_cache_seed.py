"""The proxy's program cache, seeded in the Host's process: synced at once, and the Watch
resumes exactly after the seed's revision (nothing falls between); after a break, a
fresh snapshot as always (the seed is used once)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from hershy.domain import events as ev
from hershy.domain.model import Program
from hershy.domain.reducer import create
from hershy.entrypoints import convert
from hershy.entrypoints.rest.cache import ProgramCache
from hershy.v1 import program_pb2 as pb

Kind = pb.WatchProgramsResponse


def program(number: int, revision: int, alias: str = "") -> Program:
    made = create(ev.ProgramCreated(1.0, f"prog-{number:012x}", "alice", "b1", "", alias=alias))
    return replace(made, revision=revision)


class Stub:
    """Just WatchPrograms: each call gets the next script of messages, then the stream ends."""

    def __init__(self, scripts: list[list[pb.WatchProgramsResponse]]) -> None:
        self.scripts = scripts
        self.requests: list[pb.WatchProgramsRequest] = []
        self.done = asyncio.Event()

    def WatchPrograms(self, request: pb.WatchProgramsRequest, metadata: Any = ()) -> Any:  # noqa: N802
        self.requests.append(request)
        script = self.scripts.pop(0) if self.scripts else []
        return self._stream(script)

    async def _stream(self, script: list[pb.WatchProgramsResponse]) -> AsyncIterator[Any]:
        for message in script:
            yield message
        if not self.scripts:
            self.done.set()
            await asyncio.Event().wait()  # stays open


async def test_a_seeded_cache_is_synced_at_once_and_resumes_after_the_seed() -> None:
    seeded = [program(1, 3, alias="web"), program(2, 5)]
    later = convert.program_to_pb(program(3, 6), "fake")
    stub = Stub([[Kind(type=Kind.TYPE_CREATED, program=later, revision=6)]])
    cache = ProgramCache(stub, seed=lambda: (seeded, 5))  # type: ignore[arg-type]
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(stub.done.wait(), 5)
        assert cache.synced
        # One stream, resumed after the seed: no snapshot of every program was asked for.
        assert len(stub.requests) == 1
        assert stub.requests[0].HasField("resume_revision")
        assert stub.requests[0].resume_revision == 5
        first = cache.get("prog-000000000001")
        assert first is not None
        assert first.revision == 3
        assert first.state == pb.STATE_CREATED
        assert cache.named("alice", "web") == first
        assert cache.get("prog-000000000003") is not None  # what came after the seed
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_after_a_break_the_seed_is_not_used_again_but_a_snapshot() -> None:
    seeded = [program(1, 3)]
    fresh = convert.program_to_pb(program(9, 8), "fake")
    stub = Stub(
        [
            [],  # the resumed stream ends at once (the core restarted, say)
            [
                Kind(type=Kind.TYPE_SNAPSHOT, program=fresh, revision=8),
                Kind(type=Kind.TYPE_SYNCED, revision=8),
            ],
        ]
    )
    cache = ProgramCache(stub, seed=lambda: (seeded, 3))  # type: ignore[arg-type]
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(stub.done.wait(), 5)
        await asyncio.sleep(0)
        assert [r.HasField("resume_revision") for r in stub.requests] == [True, False]
        assert cache.synced
        assert cache.get("prog-000000000001") is None  # the seed's view was replaced whole
        assert cache.get("prog-000000000009") is not None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
