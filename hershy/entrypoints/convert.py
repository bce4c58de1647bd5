"""Domain objects to and from their protobuf messages (hershy.v1), and the API's resource
names (`programs/{id}`, `tokens/{id}`, `users/{user_id}/quota`) to and from the ids inside."""

from __future__ import annotations

from typing import Literal, assert_never

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from hershy.domain import events as ev
from hershy.domain import revisions
from hershy.domain.auth import TokenRecord
from hershy.domain.config import SecretInfo
from hershy.domain.errors import InvalidArgument
from hershy.domain.model import (
    Health,
    LogLine,
    LogStream,
    Program,
    ReadinessCheck,
    Resources,
    RestartMode,
    RestartPolicy,
    Revision,
    Rollout,
    RunSettings,
    State,
    StopSettings,
)
from hershy.domain.quotas import QUOTA_NAMES, Usage, UserQuota
from hershy.domain.validation import cut, validate_program_id, validate_user_id
from hershy.service.watch import Change, ChangeKind
from hershy.v1 import config_pb2 as config_pb
from hershy.v1 import program_pb2 as pb
from hershy.v1 import quota_pb2 as quota_pb
from hershy.v1 import token_pb2 as token_pb

#: Resource names' prefixes (not to be confused with a token secret's `hershy_`).
PROGRAM_NAME_PREFIX = "programs/"
TOKEN_NAME_PREFIX = "tokens/"

CHANGE_TYPES = {
    ChangeKind.CREATED: pb.WatchProgramsResponse.TYPE_CREATED,
    ChangeKind.UPDATED: pb.WatchProgramsResponse.TYPE_UPDATED,
    ChangeKind.DELETED: pb.WatchProgramsResponse.TYPE_DELETED,
}


def program_id_from_name(name: str, field: str = "name") -> str:
    """`programs/{id}` -> `{id}`; INVALID_ARGUMENT naming the field otherwise."""
    if not name:
        raise InvalidArgument(field, "is required: programs/{id}")
    if not name.startswith(PROGRAM_NAME_PREFIX):
        raise InvalidArgument(field, f"{cut(name)} is not of the form programs/{{id}}")
    return validate_program_id(name[len(PROGRAM_NAME_PREFIX) :], field)


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
    return Resources(message.memory_bytes, message.milli_cpus, message.pids, message.state_bytes)


def resources_to_pb(resources: Resources) -> pb.Resources:
    return pb.Resources(
        memory_bytes=resources.memory_bytes,
        milli_cpus=resources.milli_cpus,
        pids=resources.pids,
        state_bytes=resources.state_bytes,
    )


def _seconds(duration: Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def duration(seconds: float) -> Duration:
    message = Duration()
    message.FromNanoseconds(round(seconds * 1e9))
    return message


def readiness_from_pb(message: pb.ReadinessCheck) -> ReadinessCheck:
    """As asked, with the Hersh defaults for what is unset (checked by the registry)."""
    default = ReadinessCheck()
    return ReadinessCheck(
        path=message.path or default.path,
        field=message.field if message.HasField("field") else default.field,
        ready_values=tuple(message.ready_values) or default.ready_values,
        failed_values=tuple(message.failed_values) or default.failed_values,
        timeout_seconds=_seconds(message.timeout),
        settle_seconds=_seconds(message.settle)
        if message.HasField("settle")
        else default.settle_seconds,
        liveness_grace_seconds=_seconds(message.liveness_grace) or default.liveness_grace_seconds,
    )


def readiness_to_pb(check: ReadinessCheck) -> pb.ReadinessCheck:
    return pb.ReadinessCheck(
        path=check.path,
        field=check.field,
        ready_values=check.ready_values,
        failed_values=check.failed_values,
        timeout=duration(check.timeout_seconds),
        settle=duration(check.settle_seconds),
        liveness_grace=duration(check.liveness_grace_seconds),
    )


def restart_policy_from_pb(message: pb.RestartPolicy) -> RestartPolicy:
    default = RestartPolicy()
    try:
        mode = RestartMode(message.mode) if message.mode else default.mode
    except ValueError:
        raise InvalidArgument("restart_policy.mode", f"{message.mode} is not a mode") from None
    return RestartPolicy(
        mode=mode,
        max_restarts=message.max_restarts,
        window_seconds=_seconds(message.window) or default.window_seconds,
    )


def restart_policy_to_pb(policy: RestartPolicy) -> pb.RestartPolicy:
    return pb.RestartPolicy(
        mode=pb.RestartMode.ValueType(policy.mode.value),
        max_restarts=policy.max_restarts,
        window=duration(policy.window_seconds),
    )


def stop_from_pb(message: pb.StopSettings) -> StopSettings:
    return StopSettings(
        signal=message.signal or StopSettings().signal, grace_seconds=_seconds(message.grace)
    )


def stop_to_pb(stop: StopSettings) -> pb.StopSettings:
    return pb.StopSettings(signal=stop.signal, grace=duration(stop.grace_seconds))


def health_to_pb(health: Health) -> pb.Health.ValueType:
    return pb.Health.ValueType(health.value)


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
        name=PROGRAM_NAME_PREFIX + program.id,
        id=program.id,
        user_id=program.user_id,
        build_id=program.build_id,
        state=state_to_pb(program.state),
        image_id=program.image_id or "",
        container_id=program.container_id or "",
        proxy_target=program.proxy_target,
        node=program.node,
        pod=program.pod,
        error_message=program.error or "",
        restart_count=program.restart_count,
        create_time=timestamp(program.created_at),
        update_time=timestamp(program.updated_at),
        revision=program.revision,
        run=program.run,
        restart_pending=program.restart_pending,
        runtime=runtime,
        resources=resources_to_pb(program.resources),
        status_note=program.note,
        alias=program.alias,
        env=dict(program.env),
        readiness=readiness_to_pb(program.readiness),
        restart_policy=restart_policy_to_pb(program.restart_policy),
        stop=stop_to_pb(program.stop),
        watcher_state=program.watcher_state,
        health=health_to_pb(program.health),
        health_reason=program.health_reason,
        revision_number=program.version,
        latest_revision_number=program.latest_version,
    )
    for field, value in (
        ("watcher_answer_time", program.watcher_answered_at),
        ("watcher_state_time", program.watcher_state_since),
        ("unhealthy_time", program.unhealthy_since),
    ):
        if value is not None:
            getattr(message, field).CopyFrom(timestamp(value))
    if program.rollout is not None:
        message.rollout.CopyFrom(rollout_to_pb(program.rollout))
    if program.last_exit_code is not None:
        message.last_exit_code = program.last_exit_code
    if program.next_restart_at is not None:
        message.next_restart_time.CopyFrom(timestamp(program.next_restart_at))
    if program.ready_since is not None:
        message.ready_time.CopyFrom(timestamp(program.ready_since))
    return message


def rollout_to_pb(rollout: Rollout) -> pb.Rollout:
    message = pb.Rollout(
        target_revision_number=rollout.target.number,
        previous_revision_number=rollout.previous.number,
        phase=pb.RolloutPhase.ValueType(rollout.phase.value),
        reason=rollout.reason,
        start_time=timestamp(rollout.started_at),
        target_build_id=rollout.target.build_id,
    )
    if rollout.finished_at is not None:
        message.end_time.CopyFrom(timestamp(rollout.finished_at))
    return message


def revision_name(program_id: str, number: int) -> str:
    return f"{PROGRAM_NAME_PREFIX}{program_id}/revisions/{number}"


def _settings_into(message: pb.ProgramRevision | pb.DeployRequested, settings: RunSettings) -> None:
    message.readiness.CopyFrom(readiness_to_pb(settings.readiness))
    message.restart_policy.CopyFrom(restart_policy_to_pb(settings.restart_policy))
    message.stop.CopyFrom(stop_to_pb(settings.stop))


def configuration_from_pb(program: pb.Program) -> revisions.Configuration:
    """What an UpdateProgram request asks for, unset fields at their defaults."""
    return revisions.Configuration(
        resources_from_pb(program.resources),
        RunSettings(
            readiness_from_pb(program.readiness),
            restart_policy_from_pb(program.restart_policy),
            stop_from_pb(program.stop),
        ),
    )


def revision_to_pb(
    revision: Revision, *, kept: bool, current: bool, before: Revision | None = None
) -> pb.ProgramRevision:
    message = pb.ProgramRevision(
        name=revision_name(revision.program_id, revision.number),
        number=revision.number,
        build_id=revision.build_id,
        resources=resources_to_pb(revision.resources),
        create_user=revision.created_by,
        create_time=timestamp(revision.created_at),
        description=revision.description,
        kept=kept,
        current=current,
        changed_fields=revisions.changes(before, revision),
    )
    if revision.settings is not None:
        _settings_into(message, revision.settings)
    return message


def revisions_to_pb(
    program: Program, records: list[Revision], kept: frozenset[str]
) -> pb.ListProgramRevisionsResponse:
    """`records` newest first, each with what it changed from the one before it."""
    by_number = {record.number: record for record in records}
    return pb.ListProgramRevisionsResponse(
        revisions=[
            revision_to_pb(
                revision,
                kept=revision.build_id in kept,
                current=revision.number == program.version,
                before=by_number.get(revision.number - 1),
            )
            for revision in records
        ]
    )


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
                    alias=event.alias,
                    env=dict(event.env),
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
        case ev.BuildQueued():
            message.build_queued.ahead = event.ahead
        case ev.BuildFailed():
            message.build_failed.reason = event.reason
        case ev.ContainerCreated():
            message.container_created.container_id = event.container_id
            message.container_created.address = event.address
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
        case ev.HostRestarted():
            message.host_restarted.SetInParent()
        case ev.AliasChanged():
            message.alias_changed.alias = event.alias
        case ev.EnvChanged():
            message.env_changed.env.update(dict(event.env))
            message.env_changed.SetInParent()
        case ev.WatcherProbed():
            message.watcher_probed.CopyFrom(
                pb.WatcherProbed(answered=event.answered, state=event.state, detail=event.detail)
            )
        case ev.DeployRequested():
            message.deploy_requested.CopyFrom(
                pb.DeployRequested(
                    build_id=event.build_id,
                    resources=resources_to_pb(event.resources),
                    requested_by=event.by,
                    description=event.description,
                )
            )
            if event.settings is not None:
                _settings_into(message.deploy_requested, event.settings)
        case ev.CandidateBuilt():
            message.candidate_built.revision_number = event.version
            message.candidate_built.image_id = event.image_id
        case ev.CandidateBuildFailed():
            message.candidate_build_failed.revision_number = event.version
            message.candidate_build_failed.reason = event.reason
        case _:
            assert_never(event)
    return message


def change_to_pb(change: Change, runtime: str) -> pb.WatchProgramsResponse:
    return pb.WatchProgramsResponse(
        type=CHANGE_TYPES[change.kind],
        program=program_to_pb(change.program, runtime),
        revision=change.revision,
        event=event_to_pb(change.event),
    )


def token_id_from_name(name: str) -> str:
    if not name.startswith(TOKEN_NAME_PREFIX) or not name[len(TOKEN_NAME_PREFIX) :]:
        raise InvalidArgument("name", f"{cut(name)} is not of the form tokens/{{id}}")
    return name[len(TOKEN_NAME_PREFIX) :]


def token_to_pb(record: TokenRecord) -> token_pb.Token:
    message = token_pb.Token(
        name=TOKEN_NAME_PREFIX + record.id if record.id else "",
        id=record.id,
        user_id=record.user_id,
        admin=record.admin,
        create_time=timestamp(record.created_at),
    )
    if record.revoked_at is not None:
        message.revoke_time.CopyFrom(timestamp(record.revoked_at))
    return message


USERS_PREFIX = "users/"
QUOTA_SUFFIX = "/quota"
QuotaField = Literal["max_programs", "max_memory_bytes", "max_milli_cpus", "max_state_bytes"]
#: UpdateUserQuota's mask paths: the `max_` field of each quota.
QUOTA_FIELDS: dict[QuotaField, str] = {
    "max_programs": "programs",
    "max_memory_bytes": "memory_bytes",
    "max_milli_cpus": "milli_cpus",
    "max_state_bytes": "state_bytes",
}
assert tuple(QUOTA_FIELDS.values()) == QUOTA_NAMES


def quota_name(user_id: str) -> str:
    return f"{USERS_PREFIX}{user_id}{QUOTA_SUFFIX}"


def user_id_from_quota_name(name: str, field: str = "name") -> str:
    """`users/{user_id}/quota` -> `{user_id}`; INVALID_ARGUMENT naming the field otherwise."""
    if not name.startswith(USERS_PREFIX) or not name.endswith(QUOTA_SUFFIX):
        raise InvalidArgument(field, f"{name[:80]!r} is not of the form users/{{user_id}}/quota")
    return validate_user_id(name[len(USERS_PREFIX) : -len(QUOTA_SUFFIX)], field)


def quota_to_pb(user_id: str, quota: UserQuota, usage: Usage) -> quota_pb.UserQuota:
    message = quota_pb.UserQuota(
        name=quota_name(user_id),
        user_id=user_id,
        usage=quota_pb.QuotaUsage(
            programs=usage.programs,
            memory_bytes=usage.memory_bytes,
            milli_cpus=usage.milli_cpus,
            state_bytes=usage.state_bytes,
        ),
    )
    for field, name in QUOTA_FIELDS.items():
        limit = getattr(quota, name)
        if limit is not None:
            setattr(message, field, limit)
    return message


def quota_from_pb(message: quota_pb.UserQuota, mask: list[str], current: UserQuota) -> UserQuota:
    """`current` with the masked limits taken from `message` (unset: no limit); no mask: all."""
    for path in mask:
        if path not in QUOTA_FIELDS:
            raise InvalidArgument(
                "update_mask", f"{path[:80]!r} is not a limit: use {', '.join(QUOTA_FIELDS)}"
            )
    limits = {}
    for field, name in QUOTA_FIELDS.items():
        if mask and field not in mask:
            limits[name] = getattr(current, name)
        else:
            limits[name] = getattr(message, field) if message.HasField(field) else None
    return UserQuota(**limits)


#: `{program}/secrets/{secret_id}`: the segment between a program's name and a secret's.
SECRETS_SEGMENT = "/secrets/"


def secret_to_pb(program_id: str, secret: SecretInfo, note: str = "") -> config_pb.Secret:
    """A secret as the API shows it: name, version and times, never its value."""
    return config_pb.Secret(
        name=f"{PROGRAM_NAME_PREFIX}{program_id}{SECRETS_SEGMENT}{secret.name}",
        secret_id=secret.name,
        version=secret.version,
        create_time=timestamp(secret.created_at),
        update_time=timestamp(secret.updated_at),
        status_note=note,
    )


def split_secret_name(name: str, field: str = "name") -> tuple[str, str]:
    """`{program}/secrets/{secret_id}` -> (the program's name, the secret's id)."""
    program, found, secret = name.rpartition(SECRETS_SEGMENT)
    if not found or not program or not secret:
        raise InvalidArgument(
            field, f"{cut(name)} is not of the form programs/{{id}}/secrets/{{name}}"
        )
    return program, secret
