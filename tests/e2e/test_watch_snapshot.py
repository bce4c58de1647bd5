"""Watch snapshots are made from messages kept per program revision: never a stale one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hershy.v1 import program_pb2 as pb
from tests.e2e.test_grpc_fake import Watch, create, new_user, wait_for

if TYPE_CHECKING:
    from hershy.v1.program_pb2_grpc import ProgramServiceAsyncStub


async def snapshot_of(stub: ProgramServiceAsyncStub) -> dict[str, pb.Program]:
    watch = Watch(stub, pb.WatchProgramsRequest())
    snapshot, _ = await watch.synced()
    watch.cancel()
    return {message.program.name: message.program for message in snapshot}


async def test_each_snapshot_shows_programs_as_they_are_now(stub: ProgramServiceAsyncStub) -> None:
    user = new_user("snapshot")
    kept = await create(stub, user)
    gone = await create(stub, user)
    first = await snapshot_of(stub)
    assert first[kept.name] == kept
    assert first[gone.name] == gone

    await stub.StartProgram(pb.StartProgramRequest(name=kept.name), timeout=5)
    ready = await wait_for(stub, kept.name, pb.STATE_READY)
    await stub.DeleteProgram(pb.DeleteProgramRequest(name=gone.name), timeout=5)
    await wait_for(stub, gone.name, pb.STATE_DELETED)

    # Taken again: the new revision of the one, nothing of the other.
    second = await snapshot_of(stub)
    assert gone.name not in second
    now = await stub.GetProgram(pb.GetProgramRequest(name=kept.name), timeout=5)
    assert second[kept.name] == now
    assert second[kept.name].revision >= ready.revision > kept.revision
    assert second[kept.name].state == pb.STATE_READY
    # And a third time (from what the second kept): the same.
    assert (await snapshot_of(stub))[kept.name] == now
