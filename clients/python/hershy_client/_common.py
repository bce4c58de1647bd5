"""What the sync and the async client share: names, conversions, requests, channel setup.

Everything here is free of IO so both clients build byte-identical requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask

from hershy.v1 import program_pb2 as pb
from hershy.v1 import quota_pb2
from hershy_client import limits

#: Resource names are `programs/{id}`; the client accepts either form.
NAME_PREFIX = "programs/"
DEFAULT_TARGET = "127.0.0.1:9090"
#: Per-call deadline for unary calls (seconds); streams that follow have none.
DEFAULT_TIMEOUT = 30.0
#: WaitProgram's own timeout when none is given (the Host's default too).
DEFAULT_WAIT_TIMEOUT = limits.DEFAULT_WAIT_SECONDS
#: The gRPC deadline of a Wait exceeds its timeout by this much, so the Host's
#: answer (DEADLINE_EXCEEDED naming the state) arrives before the client gives up.
WAIT_DEADLINE_MARGIN = 5.0
#: Sources can be tens of MiB; gRPC's default limit is 4 MiB. Matches the Host.
MAX_MESSAGE_BYTES = limits.MAX_MESSAGE_BYTES

#: A program: its id (`prog-…`), its name (`programs/prog-…`), or the message.
ProgramRef = str | pb.Program
#: A state: the enum value, or its name with or without the prefix (`READY`, `STATE_READY`).
StateLike = int | str
#: A log stream: the enum value, or its name (`stdout`, `LOG_STREAM_STDOUT`).
LogStreamLike = int | str
Metadata = tuple[tuple[str, str], ...]


def program_name(program: ProgramRef) -> str:
    """`prog-x`, `programs/prog-x` or a Program -> `programs/prog-x`; an alias `bot` ->
    `programs/bot` (the caller's own program of that name); `users/u/programs/bot` as it is.

    An empty string stays empty so the Host reports the missing name
    (INVALID_ARGUMENT naming the field) instead of the client guessing.
    """
    if isinstance(program, pb.Program):
        return program.name
    if not program or program.startswith((NAME_PREFIX, "users/")):
        return program
    return NAME_PREFIX + program


def program_id(program: ProgramRef) -> str:
    """The id part of a program reference (`programs/prog-x` -> `prog-x`)."""
    name = program_name(program)
    return name[len(NAME_PREFIX) :] if name.startswith(NAME_PREFIX) else name


def _enum_value(value: int | str, prefix: str, enum: Any) -> int:
    if isinstance(value, str):
        key = value.strip().upper()
        if not key.startswith(prefix):
            key = prefix + key
        try:
            number: int = enum.Value(key)
        except ValueError:
            names = ", ".join(n.removeprefix(prefix) for n in enum.keys()[1:])
            raise ValueError(
                f"unknown {prefix.rstrip('_').lower()} {value!r}: one of {names}"
            ) from None
        return number
    return int(value)


def to_state(state: StateLike) -> pb.State.ValueType:
    """A state by value or name (`ready`, `READY`, `STATE_READY`)."""
    return pb.State.ValueType(_enum_value(state, "STATE_", pb.State))


def to_log_stream(stream: LogStreamLike) -> pb.LogStream.ValueType:
    """A log stream by value or name (`stdout`, `LOG_STREAM_STDOUT`)."""
    return pb.LogStream.ValueType(_enum_value(stream, "LOG_STREAM_", pb.LogStream))


def duration(seconds: float) -> Duration:
    message = Duration()
    message.FromNanoseconds(round(seconds * 1e9))
    return message


def auth_metadata(token: str | None) -> Metadata | None:
    """The metadata sent with every call: the bearer token, if any."""
    return (("authorization", f"Bearer {token}"),) if token else None


def channel_options(extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """Message limits like the Host's, and reconnects that keep up with watch_forever.

    gRPC's own reconnect backoff grows to 2 minutes by default: a Watch that
    retries every few seconds would still wait that long for the channel to
    dial a restarted Host again. Capping it at 5 s matches the Watch backoff.
    `extra` options come last and win.
    """
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 5000),
        *extra,
    ]


def channel_credentials(
    secure: bool, credentials: grpc.ChannelCredentials | None
) -> grpc.ChannelCredentials | None:
    """TLS credentials, or None for a plaintext channel (the default: auth comes later)."""
    if credentials is not None:
        return credentials
    return grpc.ssl_channel_credentials() if secure else None


def create_request(
    user_id: str,
    dockerfile: str,
    files: Mapping[str, bytes | str] | None,
    resources: pb.Resources | Mapping[str, int] | None,
    alias: str = "",
    env: Mapping[str, str] | None = None,
    readiness: pb.ReadinessCheck | None = None,
    restart_policy: pb.RestartPolicy | None = None,
    stop: pb.StopSettings | None = None,
) -> pb.CreateProgramRequest:
    """Text file contents are sent as UTF-8; resources may be a message or a dict of its fields.

    `readiness`, `restart_policy` and `stop` left out take the Host's defaults (Hersh's
    readiness, restart always, SIGTERM)."""
    src_files = {
        path: content.encode() if isinstance(content, str) else bytes(content)
        for path, content in (files or {}).items()
    }
    request = pb.CreateProgramRequest(
        user_id=user_id, dockerfile=dockerfile, src_files=src_files, alias=alias, env=env or {}
    )
    _set_settings(request, resources, readiness, restart_policy, stop)
    return request


def deploy_request(
    program: ProgramRef,
    dockerfile: str,
    files: Mapping[str, bytes | str] | None,
    resources: pb.Resources | Mapping[str, int] | None,
) -> pb.DeployProgramRequest:
    """As `create_request`; resources None keeps the program's."""
    made = create_request("", dockerfile, files, resources)
    request = pb.DeployProgramRequest(
        name=program_name(program), dockerfile=dockerfile, src_files=made.src_files
    )
    if resources is not None:
        request.resources.CopyFrom(made.resources)
    return request


def update_resources_request(
    program: ProgramRef, resources: Mapping[str, int]
) -> pb.UpdateProgramRequest:
    """UpdateProgram of the given resource fields only (`{"memory_bytes": ...}`)."""
    request = pb.UpdateProgramRequest(
        program=pb.Program(name=program_name(program), resources=pb.Resources(**resources))
    )
    request.update_mask.paths.extend(f"resources.{field}" for field in resources)
    return request


def update_request(
    program: ProgramRef,
    *,
    resources: pb.Resources | Mapping[str, int] | None = None,
    readiness: pb.ReadinessCheck | None = None,
    restart_policy: pb.RestartPolicy | None = None,
    stop: pb.StopSettings | None = None,
    update_mask: Iterable[str] | None = None,
) -> pb.UpdateProgramRequest:
    """UpdateProgram: the fields given; `update_mask` None means those fields (AIP-134)."""
    message = pb.Program(name=program_name(program))
    _set_settings(message, resources, readiness, restart_policy, stop)
    request = pb.UpdateProgramRequest(program=message)
    request.update_mask.paths.extend(update_mask or ())
    return request


def list_request(
    user_id: str | None, page_size: int | None, page_token: str
) -> pb.ListProgramsRequest:
    return pb.ListProgramsRequest(
        user_id=user_id or "", page_size=page_size or 0, page_token=page_token
    )


def wait_request(program: ProgramRef, state: StateLike, timeout: float) -> pb.WaitProgramRequest:
    return pb.WaitProgramRequest(
        name=program_name(program), state=to_state(state), timeout=duration(timeout)
    )


def logs_request(
    program: ProgramRef,
    tail: int | None,
    follow: bool,
    streams: Iterable[LogStreamLike] | None,
) -> pb.ReadProgramLogsRequest:
    request = pb.ReadProgramLogsRequest(
        name=program_name(program),
        follow=follow,
        streams=[to_log_stream(stream) for stream in streams or ()],
    )
    if tail is not None:
        request.tail = tail
    return request


def watch_request(
    program: ProgramRef | None, resume_revision: int | None
) -> pb.WatchProgramsRequest:
    """The snapshot asked for in batches (as many programs a message as the Host allows);
    the client hands them on one program at a time (`watch.per_program`)."""
    request = pb.WatchProgramsRequest(
        name=program_name(program) if program else "",
        snapshot_batch_size=limits.MAX_WATCH_SNAPSHOT_BATCH,
    )
    if resume_revision is not None:
        request.resume_revision = resume_revision
    return request


#: The limits of a UserQuota, as `update_user_quota` takes them.
QUOTA_LIMITS = ("max_programs", "max_memory_bytes", "max_milli_cpus", "max_state_bytes")


def quota_name(user_id: str) -> str:
    return f"users/{user_id}/quota"


def update_quota_request(user_id: str, limits: Mapping[str, int | None]) -> Any:
    """Only the limits given change; a limit given as None is removed (no limit)."""
    unknown = set(limits) - set(QUOTA_LIMITS)
    if unknown:
        raise ValueError(f"not quota limits: {sorted(unknown)}; use {QUOTA_LIMITS}")
    quota = quota_pb2.UserQuota(name=quota_name(user_id))
    for field, value in limits.items():
        if value is not None:
            setattr(quota, field, value)
    return quota_pb2.UpdateUserQuotaRequest(quota=quota, update_mask=FieldMask(paths=list(limits)))


def _set_settings(
    target: pb.CreateProgramRequest | pb.Program,
    resources: pb.Resources | Mapping[str, int] | None,
    readiness: pb.ReadinessCheck | None,
    restart_policy: pb.RestartPolicy | None,
    stop: pb.StopSettings | None,
) -> None:
    """Set on `target` (a request or a Program) the settings given; None leaves one unset."""
    if resources is not None:
        given = resources if isinstance(resources, pb.Resources) else pb.Resources(**resources)
        target.resources.CopyFrom(given)
    if readiness is not None:
        target.readiness.CopyFrom(readiness)
    if restart_policy is not None:
        target.restart_policy.CopyFrom(restart_policy)
    if stop is not None:
        target.stop.CopyFrom(stop)
