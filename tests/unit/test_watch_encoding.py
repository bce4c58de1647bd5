"""The gRPC Watch encodes each change once, for every subscriber and every later resume."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from hershy.adapters.sqlite_store import SqliteEventLog
from hershy.entrypoints import convert, grpc_server
from hershy.entrypoints.grpc_server import GrpcServer
from hershy.service.auth import Authenticator
from hershy.service.registry import Registry
from hershy.service.watch import Change
from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from tests.unit.test_sqlite_store import host
from tests.unit.test_supervisor import SequentialIds, TestClock

SUBSCRIBERS = 8
Stream = grpc.aio.UnaryStreamCall[pb.WatchProgramsRequest, pb.WatchProgramsResponse]


@contextlib.asynccontextmanager
async def serving_registry(
    data_dir: Path,
) -> AsyncIterator[tuple[Registry, pb_grpc.ProgramServiceAsyncStub]]:
    """The real registry and gRPC server in this process, on a loopback port (tokens off)."""
    tokens = SqliteEventLog(data_dir / "tokens")
    tokens.open()
    try:
        async with host(data_dir / "host") as registry:
            auth = Authenticator(tokens, TestClock(), SequentialIds(), enabled=False)
            server = GrpcServer(registry, auth, "127.0.0.1:0")
            await server.start()
            try:
                async with grpc.aio.insecure_channel(server.address) as channel:
                    yield registry, pb_grpc.ProgramServiceStub(channel)
            finally:
                registry.hub.close()
                await server.stop(grace=1)
    finally:
        tokens.close()


@contextlib.asynccontextmanager
async def serving(data_dir: Path) -> AsyncIterator[pb_grpc.ProgramServiceAsyncStub]:
    """As `serving_registry`, the stub only."""
    async with serving_registry(data_dir) as (_, stub):
        yield stub


async def until_synced(stream: Stream) -> int:
    async with asyncio.timeout(10):
        async for message in stream:
            if message.type == pb.WatchProgramsResponse.TYPE_SYNCED:
                return message.revision
    raise AssertionError("the stream ended before SYNCED")


async def changes_until(stream: Stream, revision: int) -> list[pb.WatchProgramsResponse]:
    changes = []
    async with asyncio.timeout(10):
        async for message in stream:
            changes.append(message)
            if message.revision >= revision:
                return changes
    raise AssertionError(f"the stream ended at {changes[-1:]} before revision {revision}")


async def test_each_change_is_encoded_once_for_all_subscribers_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded: Counter[int] = Counter()
    convert_change = convert.change_to_pb

    def counting(change: Change, runtime: str) -> pb.WatchProgramsResponse:
        encoded[change.revision] += 1
        return convert_change(change, runtime)

    monkeypatch.setattr(convert, "change_to_pb", counting)
    async with serving(tmp_path) as stub:
        live = [stub.WatchPrograms(pb.WatchProgramsRequest()) for _ in range(SUBSCRIBERS)]
        synced = {await until_synced(stream) for stream in live}
        assert len(synced) == 1
        (before,) = synced
        program = await stub.CreateProgram(
            pb.CreateProgramRequest(user_id="alice", dockerfile="FROM scratch\n")
        )
        await stub.StartProgram(pb.StartProgramRequest(name=program.name))
        await stub.WaitProgram(pb.WaitProgramRequest(name=program.name, state=pb.STATE_READY))
        last = (await stub.GetProgram(pb.GetProgramRequest(name=program.name))).revision
        seen = [await changes_until(stream, last) for stream in live]
        # Later subscribers resume from before the changes, with other calls in between.
        for _ in range(SUBSCRIBERS):
            stream = stub.WatchPrograms(pb.WatchProgramsRequest(resume_revision=before))
            seen.append(await changes_until(stream, last))
            stream.cancel()
            await stub.GetProgram(pb.GetProgramRequest(name=program.name))
        for stream in live:
            stream.cancel()
    changes = list(range(before + 1, last + 1))
    assert len(changes) >= 4  # created, building, starting, ready
    assert all([m.revision for m in messages] == changes for messages in seen)
    assert all(messages == seen[0] for messages in seen)
    assert encoded == dict.fromkeys(changes, 1)


async def test_each_change_is_serialised_once_and_sent_as_is_to_every_subscriber(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server sends the same bytes to every watcher (no SerializeToString per stream):
    what goes on the wire is the one object made for that change."""
    sent: dict[bytes, set[int]] = {}

    def as_sent(message: bytes) -> bytes:
        assert isinstance(message, bytes)  # serialised before, never here
        sent.setdefault(message, set()).add(id(message))
        return message

    monkeypatch.setattr(grpc_server, "_as_sent", as_sent)
    async with serving(tmp_path) as stub:
        live = [stub.WatchPrograms(pb.WatchProgramsRequest()) for _ in range(SUBSCRIBERS)]
        for stream in live:
            await until_synced(stream)
        program = await stub.CreateProgram(
            pb.CreateProgramRequest(user_id="alice", dockerfile="FROM scratch\n")
        )
        seen = [await changes_until(stream, program.revision) for stream in live]
        for stream in live:
            stream.cancel()
    created = [
        m for messages in seen for m in messages if m.type == pb.WatchProgramsResponse.TYPE_CREATED
    ]
    assert len(created) == SUBSCRIBERS
    assert all(m.program.id == program.id for m in created)
    wire = created[0].SerializeToString()
    assert wire in sent
    assert len(sent[wire]) == 1
