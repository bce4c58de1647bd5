"""Where each program's WatcherAPI is, kept current by one Watch stream.

The proxy looks a program up here on every request, so a proxied request
costs no gRPC call. The stream is list-then-watch: a snapshot (ended by
SYNCED), then every change; after a RESYNC, or after the stream breaks and is
opened again, a fresh snapshot replaces what was known.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc

from hershy.domain.limits import MAX_WATCH_SNAPSHOT_BATCH
from hershy.domain.model import Program
from hershy.entrypoints.convert import state_to_pb
from hershy.entrypoints.rest.auth import Metadata
from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

Kind = pb.WatchProgramsResponse
#: Reconnect delays after the stream breaks: doubling from the first to the cap.
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 5.0


@dataclass(frozen=True, slots=True)
class Target:
    """What the proxy needs to know about one program."""

    state: pb.State.ValueType
    proxy_target: str
    revision: int
    #: The owner: only they (and the admin) may reach its WatcherAPI.
    user_id: str
    #: The name the owner chose ("" if none): `/programs/{alias}/...` reaches it too.
    alias: str = ""
    program_id: str = ""

    @classmethod
    def of(cls, program: pb.Program) -> Target:
        return cls(
            program.state,
            program.proxy_target,
            program.revision,
            program.user_id,
            program.alias,
            program.id,
        )

    @classmethod
    def of_program(cls, program: Program) -> Target:
        """The same, from the core's own record (the shim in the Host's process)."""
        return cls(
            state_to_pb(program.state),
            program.proxy_target,
            program.revision,
            program.user_id,
            program.alias,
            program.id,
        )


#: Every live program the core holds and the revision they are at, read in one step:
#: a shim in the Host's process starts from it instead of a Watch snapshot of them all.
Seed = Callable[[], tuple[Iterable[Program], int]]


class ProgramCache:
    def __init__(
        self,
        stub: pb_grpc.ProgramServiceAsyncStub,
        metadata: Metadata = (),
        seed: Seed | None = None,
    ) -> None:
        """`metadata`: the shim's own credentials (it watches every program).

        `seed`: where the first view comes from, if not from a Watch snapshot; the
        stream then resumes after the seed's revision (so nothing falls between).
        Used once: after a break, a fresh snapshot replaces what was known, as always.
        """
        self._stub = stub
        self._metadata = metadata
        self._seed = seed
        self._targets: dict[str, Target] = {}
        #: (owner, alias) -> program id, for the programs in `_targets` that have a name.
        self._aliases: dict[tuple[str, str], str] = {}
        #: True while the map is a faithful copy of the core's (between SYNCED and a break).
        self.synced = False
        self._synced_event = asyncio.Event()

    def get(self, program_id: str) -> Target | None:
        """The program as last seen, or None when unknown (or while not synced)."""
        return self._targets.get(program_id) if self.synced else None

    def named(self, user_id: str, alias: str) -> Target | None:
        """The user's program of that name as last seen, or None (also while not synced)."""
        program_id = self._aliases.get((user_id, alias)) if self.synced else None
        return self._targets.get(program_id) if program_id is not None else None

    def _put(self, target: Target) -> None:
        self._drop(target.program_id)
        self._targets[target.program_id] = target
        if target.alias:
            self._aliases[(target.user_id, target.alias)] = target.program_id

    def _drop(self, program_id: str) -> None:
        known = self._targets.pop(program_id, None)
        if known is None or not known.alias:
            return
        if self._aliases.get((known.user_id, known.alias)) == program_id:
            del self._aliases[(known.user_id, known.alias)]

    def observe(self, program: pb.Program) -> Target:
        """A fresher answer from the core (e.g. GetProgram) than the stream brought so far."""
        known = self._targets.get(program.id)
        target = Target.of(program)
        if self.synced and (known is None or known.revision < program.revision):
            self._put(target)
        return target

    async def wait_synced(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self._synced_event.wait()
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """Follow the core until cancelled, reconnecting with backoff when the stream breaks."""
        delay = BACKOFF_FIRST
        while True:
            try:
                await self._follow()
                log.debug("program watch ended; watching again")
            except grpc.aio.AioRpcError as error:
                log.warning("program watch failed (%s); retrying in %.1f s", error.code(), delay)
            if self.synced:  # that stream worked for a while: start the backoff anew
                delay = BACKOFF_FIRST
            self._unsync()
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_CAP)

    def _take_seed(self) -> int | None:
        """The seed's programs as the view (synced at once); the revision to resume after."""
        if self._seed is None:
            return None
        programs, revision = self._seed()
        self._seed = None
        self._targets = {program.id: Target.of_program(program) for program in programs}
        self._aliases = {
            (target.user_id, target.alias): target.program_id
            for target in self._targets.values()
            if target.alias
        }
        self.synced = True
        self._synced_event.set()
        return revision

    def _unsync(self) -> None:
        self.synced = False
        self._synced_event.clear()
        self._targets = {}
        self._aliases = {}

    async def _follow(self) -> None:
        pending: dict[str, Target] = {}
        resume = self._take_seed()
        # A snapshot (the first without a seed, any after a RESYNC) in batches: 10,000
        # programs in ten messages, not 10,000 (grpc.aio's cost is per message).
        request = pb.WatchProgramsRequest(
            resume_revision=resume, snapshot_batch_size=MAX_WATCH_SNAPSHOT_BATCH
        )
        call = self._stub.WatchPrograms(request, metadata=self._metadata)
        async for message in call:
            program = message.program
            match message.type:
                case Kind.TYPE_SNAPSHOT if message.snapshot_programs:
                    for each in message.snapshot_programs:
                        pending[each.id] = Target.of(each)
                case Kind.TYPE_SNAPSHOT:
                    pending[program.id] = Target.of(program)
                case Kind.TYPE_SYNCED:
                    # Swap in the fresh map whole: until now the old one kept serving.
                    self._targets, pending = pending, {}
                    self._aliases = {
                        (target.user_id, target.alias): target.program_id
                        for target in self._targets.values()
                        if target.alias
                    }
                    self.synced = True
                    self._synced_event.set()
                case Kind.TYPE_RESYNC:
                    pending = {}
                case Kind.TYPE_CREATED | Kind.TYPE_UPDATED:
                    self._put(Target.of(program))
                case Kind.TYPE_DELETED:
                    self._drop(program.id)
