"""The blocking client: one method per RPC, typed errors, a Watch that survives restarts."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from hershy.v1 import config_pb2, config_pb2_grpc, quota_pb2, quota_pb2_grpc
from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from hershy_client import _common as common
from hershy_client._common import LogStreamLike, ProgramRef, StateLike
from hershy_client.errors import HershyError, RevisionTooOld, from_rpc_error
from hershy_client.watch import (
    INITIAL_BACKOFF,
    MAX_BACKOFF,
    RETRYABLE,
    Backoff,
    WatchCursor,
    WatchItem,
    per_program,
)

Request = TypeVar("Request")
Response = TypeVar("Response")


class Client:
    """A connection to a Host's ProgramService (blocking; safe to share between threads).

    Every call sends `authorization: Bearer <token>` when a token is given and
    raises a `HershyError` subclass when it fails. Programs may be named by
    id (`prog-…`), by name (`programs/prog-…`) or by a `Program` message.

    >>> with Client("127.0.0.1:9090") as hershy:
    ...     program = hershy.create("alice", "FROM scratch\\n", {"app.py": "print(1)"})
    ...     hershy.start(program)
    ...     hershy.wait(program, "READY")
    """

    def __init__(
        self,
        target: str = common.DEFAULT_TARGET,
        *,
        token: str | None = None,
        timeout: float | None = common.DEFAULT_TIMEOUT,
        secure: bool = False,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        wait_for_ready: bool = False,
    ) -> None:
        """`timeout` bounds each unary call (None: no deadline). TLS is off unless
        `secure` (system roots) or `credentials` say otherwise. With
        `wait_for_ready`, calls made while the Host is unreachable (e.g.
        restarting) wait for it, up to their timeout, instead of failing at
        once with Unavailable. `options` are extra gRPC channel options."""
        self.target = target
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready
        self._metadata = common.auth_metadata(token)
        #: Set by close(): ends watch_forever loops (in any thread) instead of retrying.
        self._closed = threading.Event()
        creds = common.channel_credentials(secure, credentials)
        channel_options = common.channel_options(options)
        self.channel: grpc.Channel = (
            grpc.secure_channel(target, creds, options=channel_options)
            if creds is not None
            else grpc.insecure_channel(target, options=channel_options)
        )
        #: The generated stub, for anything the wrapper does not cover.
        self.stub = pb_grpc.ProgramServiceStub(self.channel)
        #: Per-user quotas (QuotaService).
        self.quota_stub = quota_pb2_grpc.QuotaServiceStub(self.channel)
        #: Names, environment variables and secrets (ProgramConfigService).
        self.config_stub = config_pb2_grpc.ProgramConfigServiceStub(self.channel)

    def close(self) -> None:
        """Close the channel; calls in flight fail with CANCELLED, `watch_forever` returns.

        Closing from another thread is how to stop a watcher blocked waiting for changes.
        """
        self._closed.set()
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- unary calls --------------------------------------------------------------

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[Request, Response],
        request: Request,
        deadline: float | None = None,
    ) -> Response:
        """One unary call with the token, `deadline` (else the client timeout), typed errors."""
        try:
            return method(
                request,
                timeout=self.timeout if deadline is None else deadline,
                metadata=self._metadata,
                wait_for_ready=self.wait_for_ready,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    def create(
        self,
        user_id: str,
        dockerfile: str,
        files: Mapping[str, bytes | str] | None = None,
        resources: pb.Resources | Mapping[str, int] | None = None,
        *,
        alias: str = "",
        env: Mapping[str, str] | None = None,
        readiness: pb.ReadinessCheck | None = None,
        restart_policy: pb.RestartPolicy | None = None,
        stop: pb.StopSettings | None = None,
    ) -> pb.Program:
        """Register a program (state CREATED). `files` maps relative paths to contents;
        `alias` names it (`programs/{alias}` then finds it), `env` sets its variables;
        `readiness`, `restart_policy`, `stop`: its health settings (unset: the defaults)."""
        request = common.create_request(
            user_id,
            dockerfile,
            files,
            resources,
            alias=alias,
            env=env,
            readiness=readiness,
            restart_policy=restart_policy,
            stop=stop,
        )
        return self._call(self.stub.CreateProgram, request)

    def deploy(
        self,
        program: ProgramRef,
        dockerfile: str,
        files: Mapping[str, bytes | str] | None = None,
        resources: pb.Resources | Mapping[str, int] | None = None,
    ) -> pb.Program:
        """Roll out a new revision from new source in place (same id, same `/state`).

        On a READY program it builds while the current revision runs, then
        switches; a failure reverts by itself (`program.rollout` says why).
        `resources` None keeps the program's.
        """
        request = common.deploy_request(program, dockerfile, files, resources)
        return self._call(self.stub.DeployProgram, request)

    def update_resources(self, program: ProgramRef, **resources: int) -> pb.Program:
        """UpdateProgram of the named resource fields (e.g. `memory_bytes=...`), as a rollout."""
        request = common.update_resources_request(program, resources)
        return self._call(self.stub.UpdateProgram, request)

    def update(
        self,
        program: ProgramRef,
        *,
        resources: pb.Resources | Mapping[str, int] | None = None,
        readiness: pb.ReadinessCheck | None = None,
        restart_policy: pb.RestartPolicy | None = None,
        stop: pb.StopSettings | None = None,
        update_mask: Iterable[str] | None = None,
    ) -> pb.Program:
        """UpdateProgram: a new revision with these fields, rolled out like a deploy.

        `update_mask` None changes the fields given; with a mask (`["stop.grace"]`) only
        its paths change, a field it names but left unset taking its default.
        """
        request = common.update_request(
            program,
            resources=resources,
            readiness=readiness,
            restart_policy=restart_policy,
            stop=stop,
            update_mask=update_mask,
        )
        return self._call(self.stub.UpdateProgram, request)

    def revisions(self, program: ProgramRef) -> list[pb.ProgramRevision]:
        """The program's revisions, newest first."""
        request = pb.ListProgramRevisionsRequest(name=common.program_name(program))
        return list((self._call(self.stub.ListProgramRevisions, request)).revisions)

    def rollback(self, program: ProgramRef, revision: int = 0) -> pb.Program:
        """Roll out a kept revision again (0: the one before the current)."""
        request = pb.RollbackProgramRequest(
            name=common.program_name(program), revision_number=revision
        )
        return self._call(self.stub.RollbackProgram, request)

    def get(self, program: ProgramRef) -> pb.Program:
        return self._call(
            self.stub.GetProgram, pb.GetProgramRequest(name=common.program_name(program))
        )

    def list(
        self, user_id: str | None = None, page_size: int | None = None
    ) -> Generator[pb.Program, None, None]:
        """Every program (of `user_id`, if given) in creation order, fetching page after page.

        Pages are fetched as the iterator advances, so a long listing starts at once.
        """
        token = ""
        while True:
            page = self._call(
                self.stub.ListPrograms, common.list_request(user_id, page_size, token)
            )
            yield from page.programs
            token = page.next_page_token
            if not token:
                return

    def start(self, program: ProgramRef) -> pb.Program:
        return self._call(
            self.stub.StartProgram, pb.StartProgramRequest(name=common.program_name(program))
        )

    def stop(self, program: ProgramRef) -> pb.Program:
        return self._call(
            self.stub.StopProgram, pb.StopProgramRequest(name=common.program_name(program))
        )

    def restart(self, program: ProgramRef) -> pb.Program:
        return self._call(
            self.stub.RestartProgram, pb.RestartProgramRequest(name=common.program_name(program))
        )

    def delete(self, program: ProgramRef) -> pb.Program:
        """Stop and remove everything the program owns; returns it in DELETING."""
        return self._call(
            self.stub.DeleteProgram, pb.DeleteProgramRequest(name=common.program_name(program))
        )

    def wait(
        self,
        program: ProgramRef,
        state: StateLike,
        timeout: float = common.DEFAULT_WAIT_TIMEOUT,
    ) -> pb.Program:
        """Block until the program is in `state` (e.g. `"READY"`); DeadlineExceeded after `timeout`.

        The Host enforces the timeout, so the error names the state the program was in.
        """
        return self._call(
            self.stub.WaitProgram,
            common.wait_request(program, state, timeout),
            deadline=timeout + common.WAIT_DEADLINE_MARGIN,
        )

    def get_user_quota(self, user_id: str) -> quota_pb2.UserQuota:
        """A user's quota limits and usage (the admin: anyone's; a user: their own)."""
        return self._call(
            self.quota_stub.GetUserQuota,
            quota_pb2.GetUserQuotaRequest(name=common.quota_name(user_id)),
        )

    def update_user_quota(self, user_id: str, **limits: int | None) -> quota_pb2.UserQuota:
        """Set some of a user's limits (the admin's token), e.g. `max_programs=3`;
        None removes a limit; the others stay as they are."""
        return self._call(
            self.quota_stub.UpdateUserQuota, common.update_quota_request(user_id, limits)
        )

    def source(self, program: ProgramRef) -> pb.ProgramSource:
        """The Dockerfile and files the program was created from."""
        return self._call(
            self.stub.GetProgramSource,
            pb.GetProgramSourceRequest(name=common.program_name(program)),
        )

    # --- names, environment variables and secrets (ProgramConfigService) ------------

    def rename(self, program: ProgramRef, alias: str) -> pb.Program:
        """Give the program a new name (`""`: none); unique among the user's programs."""
        request = config_pb2.RenameProgramRequest(name=common.program_name(program), alias=alias)
        return self._call(self.config_stub.RenameProgram, request)

    def set_env(
        self,
        program: ProgramRef,
        set: Mapping[str, str] | None = None,
        unset: Iterable[str] = (),
    ) -> pb.Program:
        """Set and remove environment variables; the next start uses them."""
        request = config_pb2.SetProgramEnvRequest(
            name=common.program_name(program), set=dict(set or {}), unset=list(unset)
        )
        return self._call(self.config_stub.SetProgramEnv, request)

    def set_secret(self, program: ProgramRef, name: str, value: bytes | str) -> config_pb2.Secret:
        """Create or replace a secret (at /run/secrets/NAME in the program from its next
        start). The answer never carries the value."""
        data = value.encode() if isinstance(value, str) else bytes(value)
        request = config_pb2.SetSecretRequest(
            parent=common.program_name(program), secret_id=name, value=data
        )
        return self._call(self.config_stub.SetSecret, request)

    def secrets(self, program: ProgramRef) -> Sequence[config_pb2.Secret]:
        """The program's secrets: names, versions, times; never values."""
        request = config_pb2.ListSecretsRequest(parent=common.program_name(program))
        return list(self._call(self.config_stub.ListSecrets, request).secrets)

    def delete_secret(self, program: ProgramRef, name: str) -> config_pb2.Secret:
        request = config_pb2.DeleteSecretRequest(
            name=f"{common.program_name(program)}/secrets/{name}"
        )
        return self._call(self.config_stub.DeleteSecret, request)

    # --- streams ------------------------------------------------------------------

    def _stream(
        self,
        method: grpc.UnaryStreamMultiCallable[Request, Response],
        request: Request,
        deadline: float | None,
    ) -> Generator[Response, None, None]:
        """The responses; closing the iterator (or leaving a `for` early) cancels the call.

        Closing the client ends the stream quietly (from any thread).
        """
        call = method(
            request, timeout=deadline, metadata=self._metadata, wait_for_ready=self.wait_for_ready
        )
        try:
            yield from call
        except grpc.RpcError as error:
            if self._closed.is_set():
                return
            raise from_rpc_error(error) from error
        finally:
            call.cancel()

    def logs(
        self,
        program: ProgramRef,
        tail: int | None = None,
        follow: bool = False,
        streams: Iterable[LogStreamLike] | None = None,
    ) -> Generator[pb.LogEntry, None, None]:
        """Log lines (builds, stdout, stderr, Host notes); with `follow`, new ones as they come.

        `streams` filters, e.g. `["stdout", "stderr"]`; `tail` keeps the last lines only.
        A followed stream has no deadline: close the iterator to stop.
        """
        request = common.logs_request(program, tail, follow, streams)
        return self._stream(self.stub.ReadProgramLogs, request, None if follow else self.timeout)

    def watch(
        self, resume_revision: int | None = None, program_id: ProgramRef | None = None
    ) -> Generator[pb.WatchProgramsResponse, None, None]:
        """The raw Watch stream: a snapshot then every change, or the changes after a revision.

        It ends when the Host shuts down and raises when the connection breaks;
        `watch_forever` handles both.
        """
        request = common.watch_request(program_id, resume_revision)
        return self._per_program(self._stream(self.stub.WatchPrograms, request, None))

    @staticmethod
    def _per_program(
        stream: Generator[pb.WatchProgramsResponse, None, None],
    ) -> Generator[pb.WatchProgramsResponse, None, None]:
        """The stream with batched snapshots handed on one program at a time; closing
        this closes (cancels) the call at once."""
        with contextlib.closing(stream):
            for message in stream:
                yield from per_program(message)

    def watch_forever(
        self,
        resume_revision: int | None = None,
        program_id: ProgramRef | None = None,
        *,
        initial_backoff: float = INITIAL_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
    ) -> Generator[WatchItem, None, None]:
        """Watch across disconnects and Host restarts, never repeating or skipping a change.

        Yields the stream's messages and, when the caller must rebuild its
        view from the snapshot that follows, a `Resync` marker (see
        hershy_client.watch). Reconnects resume after the last revision seen,
        waiting `initial_backoff` doubling to `max_backoff` between attempts.
        Raises only errors a retry cannot fix (e.g. NotFound, InvalidArgument);
        returns once the client is closed.
        """
        cursor = WatchCursor(program_id, resume_revision, Backoff(initial_backoff, max_backoff))
        while not self._closed.is_set():
            call = self.stub.WatchPrograms(cursor.request(), metadata=self._metadata)
            failure: HershyError | None = None
            try:
                for message in call:
                    for each in per_program(message):
                        item = cursor.on_message(each)
                        if item is not None:
                            yield item
            except grpc.RpcError as rpc_error:
                if self._closed.is_set():
                    return
                failure = from_rpc_error(rpc_error)
                if isinstance(failure, RevisionTooOld) and cursor.revision is not None:
                    yield cursor.on_revision_too_old(failure)
                    continue
                if failure.code not in RETRYABLE:
                    raise failure from rpc_error
            finally:
                call.cancel()
            delay, marker = cursor.on_disconnect(failure)
            if marker is not None:
                yield marker
            self._closed.wait(delay)
