"""The gRPC API: `hershy.v1.ProgramService` on top of the registry, plus health and reflection."""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Protocol, TypeVar, cast

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hershy.domain import revisions
from hershy.domain.errors import HershyError, InvalidArgument, NotFound, Unauthenticated
from hershy.domain.limits import (
    DEFAULT_WAIT_SECONDS,
    MAX_MESSAGE_BYTES,
    MAX_WATCH_SNAPSHOT_BATCH,
    MAX_WATCH_SNAPSHOT_BATCH_BYTES,
)
from hershy.domain.model import ACTIVE_STATES, Program
from hershy.domain.validation import validate_user_id
from hershy.entrypoints import convert, watch_bytes
from hershy.entrypoints.grpc_errors import code_for, to_status
from hershy.service import auth as access
from hershy.service.auth import Authenticator, Principal, StreamGrant
from hershy.service.fairness import MAX_CREATES_IN_PROGRESS_PER_USER, PerUserLimit
from hershy.service.metrics import Metrics
from hershy.service.registry import Registry, WatchStart
from hershy.service.watch import Change, ChangeKind, Closed, Resync, Subscription
from hershy.v1 import config_pb2 as config_pb
from hershy.v1 import config_pb2_grpc as config_pb_grpc
from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from hershy.v1 import quota_pb2 as quota_pb
from hershy.v1 import quota_pb2_grpc as quota_pb_grpc
from hershy.v1 import token_pb2 as token_pb
from hershy.v1 import token_pb2_grpc as token_pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ProgramService"].full_name
TOKEN_SERVICE_NAME = token_pb.DESCRIPTOR.services_by_name["TokenService"].full_name
QUOTA_SERVICE_NAME = quota_pb.DESCRIPTOR.services_by_name["QuotaService"].full_name
CONFIG_SERVICE_NAME = config_pb.DESCRIPTOR.services_by_name["ProgramConfigService"].full_name

Context = grpc.aio.ServicerContext[Any, Any]
Method = TypeVar("Method", bound=Callable[..., Awaitable[Any]])
T = TypeVar("T")


class _Counted(Protocol):
    """A servicer that counts its calls (hershy_grpc_requests_total)."""

    def _count(self, method: str, code: grpc.StatusCode) -> None: ...


def authorization(context: Context) -> str | None:
    """The call's `authorization` metadata, if it has one."""
    value = dict(context.invocation_metadata() or ()).get("authorization")
    return value if isinstance(value, str) else None


def _unary(method: Method) -> Method:
    """Maps Host errors to statuses (the one place, for unary calls) and counts each call."""

    @functools.wraps(method)
    async def wrapper(self: _Counted, request: Message, context: Context) -> Any:
        try:
            answer = await method(self, request, context)
        except HershyError as error:
            self._count(method.__name__, code_for(error))
            await context.abort_with_status(to_status(error))
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            log.exception("%s failed", method.__name__)
            self._count(method.__name__, grpc.StatusCode.INTERNAL)
            await context.abort_with_status(to_status(error))
        else:
            self._count(method.__name__, grpc.StatusCode.OK)
            return answer
        raise AssertionError("abort_with_status returned")  # pragma: no cover

    return cast(Method, wrapper)


#: SNAPSHOT messages kept past twice the programs of the last snapshot (see `_snapshot`).
SNAPSHOT_CACHE_SLACK = 1024
#: The Watch method, served with messages serialised once (see `WatchSerialisedOnce`).
WATCH_METHOD = f"/{SERVICE_NAME}/WatchPrograms"

#: A Watch message as it goes on the wire: serialised once, whoever it is sent to.
Encoded = bytes


class ProgramService(pb_grpc.ProgramServiceServicer):
    def __init__(self, registry: Registry, auth: Authenticator) -> None:
        self._registry = registry
        self._auth = auth
        self._rpcs = registry.metrics.rpcs
        # Changes are encoded once, however many subscribers there are.
        # Serialised too: 1,000 watchers of one change cost one SerializeToString.
        self._encoded: OrderedDict[int, Encoded] = OrderedDict()
        #: Each program serialised at its revision, length-prefixed (dropped when it is
        #: deleted): its SNAPSHOT message, or its place in a batch, is a concatenation.
        self._snapshot_programs: dict[str, tuple[int, bytes]] = {}
        #: One user's creates (big sources to write) cannot crowd out everyone else's work.
        self._creates = PerUserLimit(MAX_CREATES_IN_PROGRESS_PER_USER, "creates")

    def _count(self, method: str, code: grpc.StatusCode) -> None:
        self._rpcs.labels(method, code.name).inc()

    def _pb(self, program: Program) -> pb.Program:
        return convert.program_to_pb(program, self._registry.runtime)

    def _caller(self, context: Context) -> Principal:
        """Who calls: from the `authorization` metadata (UNAUTHENTICATED if missing or bad)."""
        return self._auth.authenticate(authorization(context))

    def _own(self, caller: Principal, name: str) -> str:
        """The id in `name`, if the caller may see that program; NOT_FOUND otherwise.

        Another user's program answers exactly like one that does not exist.
        """
        return self._registry.resolve(name, caller.user_id, admin=caller.admin)

    @_unary
    async def CreateProgram(self, request: pb.CreateProgramRequest, context: Context) -> pb.Program:
        user_id = access.creator(self._caller(context), request.user_id)
        validate_user_id(user_id)
        with self._creates.slot(user_id):
            program = await self._registry.create(
                user_id,
                request.dockerfile,
                # As it is: copied in the registry's checks, off the loop.
                request.src_files,
                convert.resources_from_pb(request.resources),
                alias=request.alias,
                env=dict(request.env),
                readiness=convert.readiness_from_pb(request.readiness),
                restart_policy=convert.restart_policy_from_pb(request.restart_policy),
                stop=convert.stop_from_pb(request.stop),
            )
        return self._pb(program)

    @_unary
    async def GetProgram(self, request: pb.GetProgramRequest, context: Context) -> pb.Program:
        caller = self._caller(context)
        return self._pb(self._registry.get(self._own(caller, request.name)))

    @_unary
    async def ListPrograms(
        self, request: pb.ListProgramsRequest, context: Context
    ) -> pb.ListProgramsResponse:
        user_id = access.listed_user(self._caller(context), request.user_id)
        if user_id is None:
            return pb.ListProgramsResponse()  # nobody else's programs, not even a count
        page = self._registry.list_programs(request.page_size, request.page_token, user_id)
        return pb.ListProgramsResponse(
            programs=[self._pb(program) for program in page.programs],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    @_unary
    async def DeleteProgram(self, request: pb.DeleteProgramRequest, context: Context) -> pb.Program:
        caller = self._caller(context)
        return self._pb(await self._registry.delete(self._own(caller, request.name)))

    @_unary
    async def StartProgram(self, request: pb.StartProgramRequest, context: Context) -> pb.Program:
        caller = self._caller(context)
        return self._pb(await self._registry.start(self._own(caller, request.name)))

    @_unary
    async def StopProgram(self, request: pb.StopProgramRequest, context: Context) -> pb.Program:
        caller = self._caller(context)
        return self._pb(await self._registry.stop(self._own(caller, request.name)))

    @_unary
    async def RestartProgram(
        self, request: pb.RestartProgramRequest, context: Context
    ) -> pb.Program:
        caller = self._caller(context)
        return self._pb(await self._registry.restart(self._own(caller, request.name)))

    @_unary
    async def DeployProgram(self, request: pb.DeployProgramRequest, context: Context) -> pb.Program:
        caller = self._caller(context)
        program_id = self._own(caller, request.name)
        resources = (
            convert.resources_from_pb(request.resources) if request.HasField("resources") else None
        )
        owner = self._registry.get(program_id).user_id
        # A new source is as big as a create's: the same per-user limit.
        with self._creates.slot(owner):
            program = await self._registry.deploy(
                program_id, request.dockerfile, request.src_files, resources, caller.user_id
            )
        return self._pb(program)

    @_unary
    async def UpdateProgram(self, request: pb.UpdateProgramRequest, context: Context) -> pb.Program:
        caller = self._caller(context)
        program_id = self._own(caller, request.program.name)
        paths = list(request.update_mask.paths) or [
            # AIP-134: no mask means the fields that are set.
            field
            for field in revisions.UPDATE_FIELDS
            if request.program.HasField(field)
        ]
        program = await self._registry.update(
            program_id, paths, convert.configuration_from_pb(request.program), caller.user_id
        )
        return self._pb(program)

    @_unary
    async def ListProgramRevisions(
        self, request: pb.ListProgramRevisionsRequest, context: Context
    ) -> pb.ListProgramRevisionsResponse:
        program_id = self._own(self._caller(context), request.name)
        return convert.revisions_to_pb(
            self._registry.get(program_id),
            self._registry.revisions(program_id),
            self._registry.kept_builds(program_id),
        )

    @_unary
    async def RollbackProgram(
        self, request: pb.RollbackProgramRequest, context: Context
    ) -> pb.Program:
        caller = self._caller(context)
        program_id = self._own(caller, request.name)
        program = await self._registry.rollback(program_id, request.revision_number, caller.user_id)
        return self._pb(program)

    @_unary
    async def WaitProgram(self, request: pb.WaitProgramRequest, context: Context) -> pb.Program:
        program_id = self._own(self._caller(context), request.name)
        state = convert.state_from_pb(request.state)
        timeout = DEFAULT_WAIT_SECONDS
        if request.HasField("timeout"):
            timeout = request.timeout.ToTimedelta().total_seconds()
        return self._pb(await self._registry.wait(program_id, state, timeout))

    async def WatchPrograms(
        self, request: pb.WatchProgramsRequest, context: Context
    ) -> AsyncIterator[pb.WatchProgramsResponse]:
        """The stream as messages (the server sends `watch_encoded`'s bytes as they are)."""
        async for data in self.watch_encoded(request, context):
            yield pb.WatchProgramsResponse.FromString(data)

    async def watch_encoded(
        self, request: pb.WatchProgramsRequest, context: Context
    ) -> AsyncIterator[Encoded]:
        """Ownership is checked at the start (resumed or not) and on every change sent;
        revoking the token ends the stream with UNAUTHENTICATED, at once."""
        grant: StreamGrant | None = None
        try:
            grant = self._auth.open_stream(authorization(context))
            caller = grant.principal
            resume = request.resume_revision if request.HasField("resume_revision") else None
            batch = _snapshot_batch(request.snapshot_batch_size)
            program_id = self._watched(caller, request.name, resumed=resume is not None)
            start = self._registry.watch(program_id, resume, caller.only_user)
        except HershyError as error:
            if grant is not None:
                self._auth.close_stream(grant)
            self._count("WatchPrograms", code_for(error))
            await context.abort_with_status(to_status(error))
            return
        self._count("WatchPrograms", grpc.StatusCode.OK)
        subscription = start.subscription
        # Wakes a stream waiting for its next change, so the revocation ends it now.
        grant.on_revoke = subscription.close
        try:
            # Accepted: say so now, so a client need not wait for the first change to know.
            await context.send_initial_metadata(())
            for message in self._watch_messages(start, subscription, caller, batch):
                if grant.revoked:
                    break
                yield message
            while not grant.revoked:
                item = await subscription.next()
                if grant.revoked:
                    break
                if isinstance(item, Change):
                    if caller.sees(item.program.user_id):
                        yield self._encode(item)
                elif item is Resync.RESYNC:
                    yield _RESYNC
                    programs = [
                        p for p in self._registry.snapshot(subscription) if caller.sees(p.user_id)
                    ]
                    revision = self._registry.hub.revision
                    for message in self._snapshot(programs, revision, batch):
                        if grant.revoked:
                            break
                        yield message
                elif item is Closed.CLOSED:
                    break
        finally:
            subscription.unsubscribe()
            self._auth.close_stream(grant)
        if grant.revoked:
            await self._end_revoked(context, "WatchPrograms")

    def _watched(self, caller: Principal, name: str, *, resumed: bool) -> str:
        """The program a Watch follows ("" for all): a name of any form; a resumed Watch
        may follow a deleted program by its id (the registry checks whose it was)."""
        if not name:
            return ""
        try:
            return self._registry.resolve(name, caller.user_id, admin=caller.admin)
        except NotFound:
            if not resumed:
                raise
            return convert.program_id_from_name(name)

    def _watch_messages(
        self, start: WatchStart, subscription: Subscription, caller: Principal, batch: int
    ) -> Iterator[Encoded]:
        """What a Watch sends before it goes live: the snapshot, or the replay; only
        what the caller may see (the registry filtered it already: this is the second lock)."""
        if start.snapshot is not None:
            programs = [program for program in start.snapshot if caller.sees(program.user_id)]
            yield from self._snapshot(programs, start.revision, batch)
        for change in start.replay:
            if subscription.wants(change) and caller.sees(change.program.user_id):
                yield self._encode(change)

    async def _end_revoked(self, context: Context, method: str) -> None:
        error = Unauthenticated("the token this stream was opened with was revoked")
        self._count(method, code_for(error))
        await context.abort_with_status(to_status(error))

    @_unary
    async def GetProgramSource(
        self, request: pb.GetProgramSourceRequest, context: Context
    ) -> pb.ProgramSource:
        program_id = self._own(self._caller(context), request.name)
        source = await self._registry.source(program_id)
        return pb.ProgramSource(
            name=request.name,
            dockerfile=source.dockerfile.decode("utf-8", errors="replace"),
            src_files=dict(source.files),
            build_id=self._registry.get(program_id).build_id,
        )

    async def ReadProgramLogs(
        self, request: pb.ReadProgramLogsRequest, context: Context
    ) -> AsyncIterator[pb.LogEntry]:
        """Revoking the token ends the read (a follow too) with UNAUTHENTICATED, at once."""
        grant: StreamGrant | None = None
        try:
            grant = self._auth.open_stream(authorization(context))
            program_id = self._own(grant.principal, request.name)
            streams = frozenset(
                convert.log_stream_from_pb(value, "streams") for value in request.streams
            )
            tail = request.tail if request.HasField("tail") else None
            lines = self._registry.logs(program_id, tail, streams, request.follow)
        except HershyError as error:
            if grant is not None:
                self._auth.close_stream(grant)
            self._count("ReadProgramLogs", code_for(error))
            await context.abort_with_status(to_status(error))
            return
        self._count("ReadProgramLogs", grpc.StatusCode.OK)
        try:
            await context.send_initial_metadata(())
            async for line in until_revoked(grant, lines):
                yield convert.log_line_to_pb(line)
        finally:
            self._auth.close_stream(grant)
        if grant.revoked:
            await self._end_revoked(context, "ReadProgramLogs")

    def _snapshot(self, programs: list[Program], revision: int, batch: int = 0) -> list[Encoded]:
        """The snapshot's messages: one per program, or (`batch` > 0) batches of up to
        `batch` programs; then SYNCED. `programs` are only those the caller may see."""
        if len(self._snapshot_programs) > 2 * len(programs) + SNAPSHOT_CACHE_SLACK:
            # Programs deleted while no one watched: keep what this snapshot holds.
            kept = {program.id for program in programs}
            self._snapshot_programs = {
                key: value for key, value in self._snapshot_programs.items() if key in kept
            }
        serialised = [self._serialised(program) for program in programs]
        if batch:
            messages = list(
                watch_bytes.snapshot_batches(serialised, batch, MAX_WATCH_SNAPSHOT_BATCH_BYTES)
            )
        else:
            messages = [
                watch_bytes.snapshot_message(data, program.revision)
                for program, data in zip(programs, serialised, strict=True)
            ]
        synced = pb.WatchProgramsResponse(
            type=pb.WatchProgramsResponse.TYPE_SYNCED, revision=revision
        ).SerializeToString()
        messages.append(synced)
        return messages

    def _serialised(self, program: Program) -> bytes:
        """The program serialised and length-prefixed, made once per revision of it (a
        snapshot of 10,000 programs spent 0.5 s converting them, every time one was taken)."""
        cached = self._snapshot_programs.get(program.id)
        if cached is not None and cached[0] == program.revision:
            return cached[1]
        data = watch_bytes.length_prefixed(self._pb(program).SerializeToString())
        self._snapshot_programs[program.id] = (program.revision, data)
        return data

    def _encode(self, change: Change) -> Encoded:
        if change.kind is ChangeKind.DELETED:
            self._snapshot_programs.pop(change.program.id, None)  # never in a snapshot again
        message = self._encoded.get(change.revision)
        if message is None:
            message = convert.change_to_pb(change, self._registry.runtime).SerializeToString()
            self._encoded[change.revision] = message
            if len(self._encoded) > 4096:
                self._encoded.popitem(last=False)
        return message


_RESYNC: Encoded = pb.WatchProgramsResponse(
    type=pb.WatchProgramsResponse.TYPE_RESYNC
).SerializeToString()


def _snapshot_batch(asked: int) -> int:
    """Programs per SNAPSHOT message: 0 (one message each, today's stream) unless the
    caller asked for batches; never more than the Host's cap."""
    if asked < 0:
        raise InvalidArgument("snapshot_batch_size", f"must not be negative (got {asked})")
    return min(asked, MAX_WATCH_SNAPSHOT_BATCH)


def _as_sent(message: Encoded) -> bytes:
    """The Watch stream's serialiser: its messages are serialised already."""
    return message


class WatchSerialisedOnce(grpc.GenericRpcHandler):
    """Serves WatchPrograms with messages serialised once for every stream sending
    them (the generated handler would serialise each change again per watcher)."""

    def __init__(self, service: ProgramService) -> None:
        self.handler = grpc.unary_stream_rpc_method_handler(
            service.watch_encoded,
            request_deserializer=pb.WatchProgramsRequest.FromString,
            response_serializer=_as_sent,
        )

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        if handler_call_details.method == WATCH_METHOD:
            return self.handler
        return None


class _WithWatchSerialisedOnce:
    """The server as the generated registration sees it: its WatchPrograms handler is
    swapped for `WatchSerialisedOnce`'s, both where it registers the method by name
    (looked up first) and among the generic handlers (ours first: the first wins)."""

    def __init__(self, server: grpc.aio.Server, watch: WatchSerialisedOnce) -> None:
        self._server = server
        self._watch = watch

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self._server.add_generic_rpc_handlers((self._watch, *handlers))

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        swapped = {**handlers, "WatchPrograms": self._watch.handler}
        self._server.add_registered_method_handlers(service, swapped)


class _Ended(enum.Enum):
    ENDED = "ended"


#: How many log lines a read may have fetched ahead of what it has sent.
READ_AHEAD_LINES = 256


async def until_revoked(grant: StreamGrant, source: AsyncIterator[T]) -> AsyncIterator[T]:
    """`source`'s items until it ends or the grant's token is revoked, whichever is first.

    The source is read by a task of this generator's own, so a revocation can
    stop it wherever it waits (a follow waits for new lines for hours); what
    it had read ahead is dropped, never sent.
    """
    ahead: asyncio.Queue[T | _Ended] = asyncio.Queue(READ_AHEAD_LINES)
    failure: list[BaseException] = []

    async def read() -> None:
        try:
            async for item in source:
                await ahead.put(item)
        except Exception as error:
            failure.append(error)
        await ahead.put(_Ended.ENDED)

    reader = asyncio.create_task(read(), name="log-read")

    def revoked() -> None:
        reader.cancel()
        while not ahead.empty():
            ahead.get_nowait()
        ahead.put_nowait(_Ended.ENDED)

    grant.on_revoke = revoked
    try:
        while True:
            item = await ahead.get()
            if isinstance(item, _Ended) or grant.revoked:
                break
            yield item
        if failure:
            raise failure[0]
    finally:
        grant.on_revoke = None
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


class TokenService(token_pb_grpc.TokenServiceServicer):
    """API tokens; the admin's token only."""

    def __init__(self, auth: Authenticator, metrics: Metrics) -> None:
        self._auth = auth
        self._rpcs = metrics.rpcs

    def _count(self, method: str, code: grpc.StatusCode) -> None:
        self._rpcs.labels(method, code.name).inc()

    def _admin(self, context: Context) -> None:
        self._auth.require_admin(self._auth.authenticate(authorization(context)))

    @_unary
    async def CreateToken(
        self, request: token_pb.CreateTokenRequest, context: Context
    ) -> token_pb.Token:
        self._admin(context)
        record, secret = await self._auth.create(request.user_id)
        message = convert.token_to_pb(record)
        message.secret = secret
        return message

    @_unary
    async def ListTokens(
        self, request: token_pb.ListTokensRequest, context: Context
    ) -> token_pb.ListTokensResponse:
        self._admin(context)
        return token_pb.ListTokensResponse(
            tokens=[convert.token_to_pb(record) for record in self._auth.tokens()]
        )

    @_unary
    async def GetCurrentToken(
        self, request: token_pb.GetCurrentTokenRequest, context: Context
    ) -> token_pb.Token:
        return convert.token_to_pb(self._auth.record_for(authorization(context)))

    @_unary
    async def RevokeToken(
        self, request: token_pb.RevokeTokenRequest, context: Context
    ) -> token_pb.Token:
        self._admin(context)
        token_id = convert.token_id_from_name(request.name)
        return convert.token_to_pb(await self._auth.revoke(token_id))


class QuotaService(quota_pb_grpc.QuotaServiceServicer):
    """Per-user quotas: the admin sets them; a user may read their own."""

    def __init__(self, registry: Registry, auth: Authenticator) -> None:
        self._registry = registry
        self._auth = auth
        self._rpcs = registry.metrics.rpcs

    def _count(self, method: str, code: grpc.StatusCode) -> None:
        self._rpcs.labels(method, code.name).inc()

    def _answer(self, user_id: str) -> quota_pb.UserQuota:
        quota = self._registry.quotas.get(user_id)
        return convert.quota_to_pb(user_id, quota, self._registry.usage(user_id))

    @_unary
    async def GetUserQuota(
        self, request: quota_pb.GetUserQuotaRequest, context: Context
    ) -> quota_pb.UserQuota:
        caller = self._auth.authenticate(authorization(context))
        user_id = convert.user_id_from_quota_name(request.name)
        access.require_quota_reader(caller, user_id)
        return self._answer(user_id)

    @_unary
    async def UpdateUserQuota(
        self, request: quota_pb.UpdateUserQuotaRequest, context: Context
    ) -> quota_pb.UserQuota:
        access.require_admin(self._auth.authenticate(authorization(context)), "sets quotas")
        user_id = convert.user_id_from_quota_name(request.quota.name, "quota.name")
        current = self._registry.quotas.get(user_id)
        quota = convert.quota_from_pb(request.quota, list(request.update_mask.paths), current)
        await self._registry.quotas.set(user_id, quota)
        return self._answer(user_id)


class ProgramConfigService(config_pb_grpc.ProgramConfigServiceServicer):
    """Names, environment variables and secrets; never a secret's value in an answer."""

    def __init__(self, registry: Registry, auth: Authenticator) -> None:
        self._registry = registry
        self._auth = auth
        self._rpcs = registry.metrics.rpcs

    def _count(self, method: str, code: grpc.StatusCode) -> None:
        self._rpcs.labels(method, code.name).inc()

    def _own(self, context: Context, name: str, field: str = "name") -> str:
        caller = self._auth.authenticate(authorization(context))
        return self._registry.resolve(name, caller.user_id, admin=caller.admin, field=field)

    def _pb(self, program: Program) -> pb.Program:
        return convert.program_to_pb(program, self._registry.runtime)

    def _note(self, program_id: str) -> str:
        if self._registry.get(program_id).state in ACTIVE_STATES:
            return "the program runs with what it had: restart it to hand this over"
        return ""

    @_unary
    async def RenameProgram(
        self, request: config_pb.RenameProgramRequest, context: Context
    ) -> pb.Program:
        program_id = self._own(context, request.name)
        return self._pb(await self._registry.rename(program_id, request.alias))

    @_unary
    async def SetProgramEnv(
        self, request: config_pb.SetProgramEnvRequest, context: Context
    ) -> pb.Program:
        program_id = self._own(context, request.name)
        program = await self._registry.set_env(program_id, dict(request.set), list(request.unset))
        return self._pb(program)

    @_unary
    async def SetSecret(
        self, request: config_pb.SetSecretRequest, context: Context
    ) -> config_pb.Secret:
        program_id = self._own(context, request.parent, "parent")
        secret = await self._registry.set_secret(program_id, request.secret_id, request.value)
        return convert.secret_to_pb(program_id, secret, self._note(program_id))

    @_unary
    async def ListSecrets(
        self, request: config_pb.ListSecretsRequest, context: Context
    ) -> config_pb.ListSecretsResponse:
        program_id = self._own(context, request.parent, "parent")
        secrets = self._registry.list_secrets(program_id)
        return config_pb.ListSecretsResponse(
            secrets=[convert.secret_to_pb(program_id, secret) for secret in secrets]
        )

    @_unary
    async def DeleteSecret(
        self, request: config_pb.DeleteSecretRequest, context: Context
    ) -> config_pb.Secret:
        parent, secret_id = convert.split_secret_name(request.name)
        program_id = self._own(context, parent)
        secret = await self._registry.delete_secret(program_id, secret_id)
        return convert.secret_to_pb(program_id, secret, self._note(program_id))


class GrpcServer:
    """The server with ProgramService, TokenService, health checking and reflection."""

    def __init__(self, registry: Registry, auth: Authenticator, address: str) -> None:
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
                # No BDP probing of what clients send: with it, a 6 MiB CreateProgram
                # from the REST shim over loopback took 150-340 ms (the receive window
                # grown probe by probe, each a round trip through a busy loop), without
                # it 16-32 ms (load 16-20, 2 cores). Messages stay bounded as above.
                ("grpc.http2.bdp_probe", 0),
            ]
        )
        programs = ProgramService(registry, auth)
        registering = _WithWatchSerialisedOnce(self.server, WatchSerialisedOnce(programs))
        pb_grpc.add_ProgramServiceServicer_to_server(programs, cast(grpc.aio.Server, registering))
        token_pb_grpc.add_TokenServiceServicer_to_server(
            TokenService(auth, registry.metrics), self.server
        )
        quota_pb_grpc.add_QuotaServiceServicer_to_server(QuotaService(registry, auth), self.server)
        config_pb_grpc.add_ProgramConfigServiceServicer_to_server(
            ProgramConfigService(registry, auth), self.server
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                TOKEN_SERVICE_NAME,
                QUOTA_SERVICE_NAME,
                CONFIG_SERVICE_NAME,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as error:  # grpcio raises where older versions returned 0
            raise OSError(f"cannot listen on {address}: {error}") from None
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        self.address = f"{address.rsplit(':', 1)[0]}:{self.port}"

    async def start(self) -> None:
        await self.server.start()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 5.0) -> None:
        """Callers end Watch streams first (closing the hub), or stop waits the whole grace."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
