"""Batched Watch snapshots through the real registry and gRPC server in this process:
a RESYNC's fresh snapshot comes in batches too, and the REST shim's program cache (not
seeded) asks for batches and knows every program from them."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import grpc

from hershy.domain import limits
from hershy.entrypoints.rest.cache import ProgramCache
from hershy.service.registry import Registry
from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from tests.unit.test_watch_encoding import serving_registry

Response = pb.WatchProgramsResponse
BATCH = 4


async def make(registry: Registry, count: int) -> set[str]:
    made = set()
    for number in range(count):
        program = await registry.create(f"user{number % 2}", "FROM scratch\n", {})
        made.add(program.id)
    return made


async def read_snapshot(call: Any) -> tuple[list[Response], Response]:
    sent: list[Response] = []
    async with asyncio.timeout(10):
        while True:
            message = await call.read()
            assert message is not grpc.aio.EOF, "the stream ended"
            if message.type == Response.TYPE_SYNCED:
                return sent, message
            sent.append(message)


async def test_the_snapshot_after_a_resync_comes_in_batches_too(tmp_path: Path) -> None:
    async with serving_registry(tmp_path) as (registry, stub):
        made = await make(registry, 10)
        call = stub.WatchPrograms(pb.WatchProgramsRequest(snapshot_batch_size=BATCH))
        try:
            first, _ = await read_snapshot(call)
            assert [len(m.snapshot_programs) for m in first] == [4, 4, 2]
            # Fault injection: the subscriber fell behind (its buffer overflowed).
            [subscription] = registry.hub._watching_all
            subscription._overflowed = True
            subscription._wakeup.set()
            async with asyncio.timeout(10):
                resync = await call.read()
            assert isinstance(resync, Response)
            assert resync.type == Response.TYPE_RESYNC
            fresh, synced = await read_snapshot(call)
            assert all(m.type == Response.TYPE_SNAPSHOT for m in fresh)
            assert all(0 < len(m.snapshot_programs) <= BATCH for m in fresh)
            assert all(not m.HasField("program") for m in fresh)
            ids = [p.id for m in fresh for p in m.snapshot_programs]
            assert sorted(ids) == sorted(made)
            assert synced.revision == registry.hub.revision
        finally:
            call.cancel()


class RecordingStub:
    """The real stub, remembering each Watch request the cache makes."""

    def __init__(self, stub: pb_grpc.ProgramServiceAsyncStub) -> None:
        self._stub = stub
        self.requests: list[pb.WatchProgramsRequest] = []

    def WatchPrograms(self, request: pb.WatchProgramsRequest, **kwargs: Any) -> Any:  # noqa: N802
        self.requests.append(request)
        return self._stub.WatchPrograms(request, **kwargs)


async def test_the_shims_cache_takes_its_snapshot_in_batches(tmp_path: Path) -> None:
    async with serving_registry(tmp_path) as (registry, stub):
        made = await make(registry, 2 * limits.MAX_WATCH_SNAPSHOT_BATCH // 100 + 3)
        recording = RecordingStub(stub)
        cache = ProgramCache(recording)  # type: ignore[arg-type]
        task = asyncio.create_task(cache.run())
        try:
            assert await cache.wait_synced(10)
            [request] = recording.requests
            assert request.snapshot_batch_size == limits.MAX_WATCH_SNAPSHOT_BATCH
            assert not request.HasField("resume_revision")
            for program_id in made:
                target = cache.get(program_id)
                assert target is not None
                assert target.program_id == program_id
                assert target.revision == registry.get(program_id).revision
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
