"""Domain objects to and from their protobuf messages (hershy.v1)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from hershy.domain import events as ev
from hershy.domain.auth import TokenRecord
from hershy.domain.errors import InvalidArgument
from hershy.domain.model import LogLine, LogStream, Program, Resources, State
from hershy.domain.validation import cut, validate_program_id
from hershy.service.watch import Change, ChangeKind
from hershy.v1 import program_pb2 as pb
from hershy.v1 import token_pb2 as token_pb

NAME_PREFIX = "programs/"
TOKEN_PREFIX = "tokens/"

CHANGE_TYPES = {
    ChangeKind.CREATED: pb.WatchProgramsResponse.TYPE_CREATED,
    ChangeKind.UPDATED: pb.WatchProgramsResponse.TYPE_UPDATED,
    ChangeKind.DELETED: pb.WatchProgramsResponse.TYPE_DELETED,
}


def program_id_from_name(name: str, field: str = "name") -> str:
    """`programs/{id}` -> `{id}`; INVALID_ARGUMENT naming the field otherwise."""
    if not name:
        raise InvalidArgument(field, "is required: programs/{id}")
    if not name.startswith(NAME_PREFIX):
        raise InvalidArgument(field, f"{cut(name)} is not of the form programs/{{id}}")
    return validate_program_id(name[len(NAME_PREFIX) :], field)


def timestamp(seconds: float) -> Timestamp:
    whole = int(seconds)
    return Timestamp(seconds=whole, nanos=round((seconds - whole) * 1e9) % 1_000_000_000)


def state_to_pb(state: State) -> pb.State.ValueType:
    return pb.State.ValueType(state.value)


def state_from_pb(value: int, field: str = "state") -> State:
    try:
        return State(value)
    except ValueError:
        raise InvalidArgument(field, "is required: a state other than STATE_UNSPECIFIED") from None


def resources_from_pb(message: pb.Resources) -> Resources:
    """As asked: zeros stand for the Host's defaults and are resolved by the registry."""
    return Resources(message.memory_bytes, message.milli_cpus, message.pids)


def resources_to_pb(resources: Resources) -> pb.Resources:
    return pb.Resources(
        memory_bytes=resources.memory_bytes, milli_cpus=resources.milli_cpus, pids=resources.pids
    )


def log_stream_from_pb(value: int, field: str) -> LogStream:
    try:
        return LogStream(value)
    except ValueError:
        raise InvalidArgument(field, f"{value} is not a log stream") from None


def log_line_to_pb(line: LogLine) -> pb.LogEntry:
    return pb.LogEntry(
        time=timestamp(line.at),
        stream=pb.LogStream.ValueType(line.stream.value),
        run=line.run,
        line=line.text,
    )


def program_to_pb(program: Program, runtime: str) -> pb.Program:
    message = pb.Program(
        name=NAME_PREFIX + program.id,
        id=program.id,
        user_id=program.user_id,
        build_id=program.build_id,
        state=state_to_pb(program.state),
        image_id=program.image_id or "",
        container_id=program.container_id or "",
        proxy_target=program.proxy_target,
        error_message=program.error or "",
        restart_count=program.restart_count,
        create_time=timestamp(program.created_at),
        update_time=timestamp(program.updated_at),
        revision=program.revision,
        run=program.run,
        restart_pending=program.restart_pending,
        runtime=runtime,
        resources=resources_to_pb(program.resources),
    )
    if program.last_exit_code is not None:
        message.last_exit_code = program.last_exit_code
    if program.next_restart_at is not None:
        message.next_restart_time.CopyFrom(timestamp(program.next_restart_at))
    if program.ready_since is not None:
        message.ready_time.CopyFrom(timestamp(program.ready_since))
    return message


def event_to_pb(event: ev.Event) -> pb.ProgramEvent:
    message = pb.ProgramEvent(time=timestamp(event.at), run=getattr(event, "run", 0))
    match event:
        case ev.ProgramCreated():
            message.created.CopyFrom(
                pb.ProgramCreated(
                    program_id=event.program_id,
                    user_id=event.user_id,
                    build_id=event.build_id,
                    proxy_target=event.proxy_target,
                    resources=resources_to_pb(event.resources),
                )
            )
        case ev.StartRequested():
            message.start_requested.SetInParent()
        case ev.StopRequested():
            message.stop_requested.SetInParent()
        case ev.RestartRequested():
            message.restart_requested.SetInParent()
        case ev.DeleteRequested():
            message.delete_requested.SetInParent()
        case ev.BuildSucceeded():
            message.build_succeeded.image_id = event.image_id
        case ev.BuildFailed():
            message.build_failed.reason = event.reason
        case ev.ContainerCreated():
            message.container_created.container_id = event.container_id
        case ev.ContainerReady():
            message.container_ready.SetInParent()
        case ev.StartFailed():
            message.start_failed.reason = event.reason
        case ev.ContainerExited():
            message.container_exited.exit_code = event.exit_code
            message.container_exited.oom_killed = event.oom_killed
            message.container_exited.container_id = event.container_id or ""
        case ev.ContainerStopped():
            message.container_stopped.SetInParent()
        case ev.StopFailed():
            message.stop_failed.reason = event.reason
        case ev.RestartTimerFired():
            message.restart_timer_fired.SetInParent()
        case ev.TornDown():
            message.torn_down.SetInParent()
        case ev.TeardownFailed():
            message.teardown_failed.reason = event.reason
    return message


def change_to_pb(change: Change, runtime: str) -> pb.WatchProgramsResponse:
    return pb.WatchProgramsResponse(
        type=CHANGE_TYPES[change.kind],
        program=program_to_pb(change.program, runtime),
        revision=change.revision,
        event=event_to_pb(change.event),
    )


def token_id_from_name(name: str) -> str:
    if not name.startswith(TOKEN_PREFIX) or not name[len(TOKEN_PREFIX) :]:
        raise InvalidArgument("name", f"{cut(name)} is not of the form tokens/{{id}}")
    return name[len(TOKEN_PREFIX) :]


def token_to_pb(record: TokenRecord) -> token_pb.Token:
    message = token_pb.Token(
        name=TOKEN_PREFIX + record.id if record.id else "",
        id=record.id,
        user_id=record.user_id,
        admin=record.admin,
        create_time=timestamp(record.created_at),
    )
    if record.revoked_at is not None:
        message.revoke_time.CopyFrom(timestamp(record.revoked_at))
    return message
