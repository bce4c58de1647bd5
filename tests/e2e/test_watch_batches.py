"""A Watch snapshot taken in batches (`snapshot_batch_size`) against the real
`hershy serve --runtime fake`: the same programs and revision as one message per
program; old clients (field unset) get exactly today's stream; resumes send no
snapshot; another tenant's program is never in a batch; the clients hand batches
on one program at a time."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from hershy.domain import limits
from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from hershy_client import AsyncClient, Client
from tests.e2e.conftest import ServerProcess
from tests.e2e.rest_support import RestHost, running_rest_server
from tests.e2e.test_grpc_fake import create, new_user
from tests.e2e.test_rest_auth import make_user

Response = pb.WatchProgramsResponse
PROGRAMS = 45
BATCH = 7


async def snapshot(
    stub: pb_grpc.ProgramServiceAsyncStub, request: pb.WatchProgramsRequest, metadata: Any = ()
) -> tuple[list[Response], Response]:
    """The SNAPSHOT messages as sent, and the SYNCED that ends them."""
    call = stub.WatchPrograms(request, metadata=metadata)
    sent: list[Response] = []
    try:
        async with asyncio.timeout(20):
            async for message in call:
                if message.type == Response.TYPE_SYNCED:
                    return sent, message
                assert message.type == Response.TYPE_SNAPSHOT, Response.Type.Name(message.type)
                sent.append(message)
    finally:
        call.cancel()
    raise AssertionError("the stream ended before SYNCED")


def unbatched(messages: list[Response]) -> dict[str, pb.Program]:
    return {message.program.id: message.program for message in messages}


def batched(messages: list[Response]) -> dict[str, pb.Program]:
    return {program.id: program for message in messages for program in message.snapshot_programs}


@pytest.fixture(scope="module")
def programs(server: ServerProcess) -> list[pb.Program]:
    async def make() -> list[pb.Program]:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.ProgramServiceStub(channel)
            users = [new_user("batch"), new_user("batch")]
            return [await create(stub, users[n % 2]) for n in range(PROGRAMS)]

    return asyncio.run(make())


async def test_a_batched_snapshot_holds_the_same_programs_and_revision(
    stub: pb_grpc.ProgramServiceAsyncStub, programs: list[pb.Program]
) -> None:
    plain, plain_synced = await snapshot(stub, pb.WatchProgramsRequest())
    batches, synced = await snapshot(stub, pb.WatchProgramsRequest(snapshot_batch_size=BATCH))
    assert synced == plain_synced  # the same revision (nothing changed in between)
    assert batched(batches) == unbatched(plain)
    assert {p.id for p in programs} <= batched(batches).keys()
    # In the order of the unbatched snapshot, BATCH a message, `program` and `revision` unset.
    order = [p.id for message in batches for p in message.snapshot_programs]
    assert order == [message.program.id for message in plain]
    assert len(batches) == math.ceil(len(plain) / BATCH)
    assert all(0 < len(m.snapshot_programs) <= BATCH for m in batches)
    assert all(not m.HasField("program") and m.revision == 0 for m in batches)
    # Each program keeps its own revision: the one today's message carries.
    assert all(m.revision == m.program.revision for m in plain)


async def test_a_client_that_does_not_ask_gets_todays_stream(
    stub: pb_grpc.ProgramServiceAsyncStub, programs: list[pb.Program]
) -> None:
    """An old client's request has no field 3: one message per program, as built before."""
    old_request = pb.WatchProgramsRequest.FromString(pb.WatchProgramsRequest().SerializeToString())
    assert old_request.snapshot_batch_size == 0
    plain, _ = await snapshot(stub, old_request)
    for message in plain:
        now = Response(
            type=Response.TYPE_SNAPSHOT, program=message.program, revision=message.program.revision
        )
        assert message == now
        assert message.SerializeToString() == now.SerializeToString()
        assert not message.snapshot_programs


async def test_the_hosts_cap_bounds_a_batch_and_a_negative_size_is_refused(
    stub: pb_grpc.ProgramServiceAsyncStub, programs: list[pb.Program]
) -> None:
    plain, _ = await snapshot(stub, pb.WatchProgramsRequest())
    batches, _ = await snapshot(stub, pb.WatchProgramsRequest(snapshot_batch_size=2**31 - 1))
    assert len(batches) == math.ceil(len(plain) / limits.MAX_WATCH_SNAPSHOT_BATCH)
    assert all(len(m.snapshot_programs) <= limits.MAX_WATCH_SNAPSHOT_BATCH for m in batches)
    assert batched(batches) == unbatched(plain)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await snapshot(stub, pb.WatchProgramsRequest(snapshot_batch_size=-1))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "snapshot_batch_size" in (refused.value.details() or "")


async def test_a_resumed_batched_watch_replays_changes_and_no_snapshot(
    stub: pb_grpc.ProgramServiceAsyncStub, programs: list[pb.Program]
) -> None:
    _, synced = await snapshot(stub, pb.WatchProgramsRequest(snapshot_batch_size=BATCH))
    made = await create(stub, new_user("batch"))
    for size in (0, BATCH):
        call = stub.WatchPrograms(
            pb.WatchProgramsRequest(resume_revision=synced.revision, snapshot_batch_size=size)
        )
        try:
            async with asyncio.timeout(10):
                first = await call.read()
        finally:
            call.cancel()
        assert isinstance(first, Response)
        assert first.type == Response.TYPE_CREATED
        assert first.program.id == made.id
        assert first.revision > synced.revision
    # One program watched, batched: a batch of that one.
    batches, _ = await snapshot(
        stub, pb.WatchProgramsRequest(name=made.name, snapshot_batch_size=BATCH)
    )
    assert [[p.id for p in m.snapshot_programs] for m in batches] == [[made.id]]


async def test_the_clients_hand_batches_on_one_program_at_a_time(
    server: ServerProcess, stub: pb_grpc.ProgramServiceAsyncStub, programs: list[pb.Program]
) -> None:
    plain, plain_synced = await snapshot(stub, pb.WatchProgramsRequest())

    async def async_items() -> list[Any]:
        async with AsyncClient(server.address) as client:
            items: list[Any] = []
            async for item in client.watch_forever():
                items.append(item)
                if isinstance(item, Response) and item.type == Response.TYPE_SYNCED:
                    return items
        raise AssertionError("no SYNCED")

    def sync_items() -> list[Any]:
        with Client(server.address) as client:
            stream = client.watch()
            items = []
            for item in stream:
                items.append(item)
                if item.type == Response.TYPE_SYNCED:
                    stream.close()
                    return items
        raise AssertionError("no SYNCED")

    for items in (await async_items(), await asyncio.to_thread(sync_items)):
        assert items == [*plain, plain_synced]


# --- tenants -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def rest_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestHost]:
    with running_rest_server(tmp_path_factory.mktemp("hershy-batches"), auth=True) as host:
        yield host


@pytest.fixture
async def auth_stub(rest_host: RestHost) -> AsyncIterator[pb_grpc.ProgramServiceAsyncStub]:
    async with grpc.aio.insecure_channel(rest_host.grpc_address) as channel:
        yield pb_grpc.ProgramServiceStub(channel)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_a_batch_never_carries_another_tenants_program(
    rest_host: RestHost, auth_stub: pb_grpc.ProgramServiceAsyncStub
) -> None:
    """The attack: ask for the biggest batches the Host gives, interleaved with another
    user's programs (created alternately, so every batch would straddle them), on the
    whole stream, resumed from 0 with a RESYNC-free replay, and on the other's program."""
    alice, bob = await make_user(rest_host, "alice"), await make_user(rest_host, "bob")
    made: dict[str, list[pb.Program]] = {alice.user_id: [], bob.user_id: []}
    for number in range(24):
        owner = (alice, bob)[number % 2]
        request = pb.CreateProgramRequest(dockerfile="FROM scratch\n")
        program = await auth_stub.CreateProgram(request, metadata=bearer(owner.token), timeout=10)
        made[owner.user_id].append(program)
    for size in (1, 5, limits.MAX_WATCH_SNAPSHOT_BATCH):
        for user in (alice, bob):
            batches, _ = await snapshot(
                auth_stub, pb.WatchProgramsRequest(snapshot_batch_size=size), bearer(user.token)
            )
            seen = [p for message in batches for p in message.snapshot_programs]
            assert {p.id for p in seen} == {p.id for p in made[user.user_id]}
            assert {p.user_id for p in seen} == {user.user_id}
            assert all(not m.HasField("program") for m in batches)
    # The admin sees both users' programs, in batches too.
    admin_batches, _ = await snapshot(
        auth_stub, pb.WatchProgramsRequest(snapshot_batch_size=5), bearer(rest_host.admin_token)
    )
    everyone = {p.id for message in admin_batches for p in message.snapshot_programs}
    assert everyone >= {p.id for programs in made.values() for p in programs}
    # Bob's program by name, batched: NOT_FOUND, as for one that never existed.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await snapshot(
            auth_stub,
            pb.WatchProgramsRequest(name=made[bob.user_id][0].name, snapshot_batch_size=5),
            bearer(alice.token),
        )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
