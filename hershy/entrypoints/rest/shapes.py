"""The REST API's JSON shapes, from the core's protobuf messages.

The keys are the original Go system's (`program_id`, `proxy_url`, `created_at`,
`error_msg`, `files`, ...), states are spelled like it (`Ready`), times are
RFC 3339 in UTC. Hershy's own keys sit beside the original's: a key the
original's clients read is never removed or given another meaning.
"""

from __future__ import annotations

import base64
import enum
import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp

from hershy.domain.errors import InvalidArgument
from hershy.domain.validation import cut, validate_program_id
from hershy.entrypoints.rest.errors import ApiError, bad_request, state_label
from hershy.v1 import program_pb2 as pb

NAME_PREFIX = "programs/"
#: The Dockerfile's name in the original's `files`.
DOCKERFILE_NAME = "Dockerfile"

#: `?state=` values: any case of `ready`, `READY` or `STATE_READY`.
_STATES = {
    name.removeprefix("STATE_").lower(): value
    for name, value in pb.State.items()
    if value != pb.STATE_UNSPECIFIED
}
STATE_LABELS = [state_label(value) for value in _STATES.values()]

_LOG_STREAMS = {
    name.removeprefix("LOG_STREAM_").lower(): value
    for name, value in pb.LogStream.items()
    if value != pb.LOG_STREAM_UNSPECIFIED
}
LOG_STREAM_NAMES = list(_LOG_STREAMS)

#: What a Host header must look like to be echoed back in `proxy_url`.
_HOST_PATTERN = re.compile(r"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


def program_name(program_id: str) -> str:
    """`{id}` -> `programs/{id}`, refusing a malformed id with a 400 naming it."""
    try:
        validate_program_id(program_id, "program_id")
    except InvalidArgument as error:
        raise bad_request(error.field, error.description) from None
    return NAME_PREFIX + program_id


def rfc3339(stamp: Timestamp) -> str:
    return stamp.ToJsonString()


def optional_time(message: Any, field: str) -> str | None:
    return rfc3339(getattr(message, field)) if message.HasField(field) else None


def base_url(request: web.Request, fallback_host: str) -> str:
    """`http://{Host}`, as the client called us; a Host header that is not a host is ignored."""
    host = request.host
    if not _HOST_PATTERN.fullmatch(host):
        host = fallback_host
    return f"{request.scheme}://{host}"


def program_json(program: pb.Program, base: str) -> dict[str, Any]:
    return {
        "program_id": program.id,
        "user_id": program.user_id,
        "build_id": program.build_id,
        "state": state_label(program.state),
        # `${proxy_url}/watcher/status` is what clients call: the prefix under
        # which any path reaches the program (proxy.py).
        "proxy_url": f"{base}/programs/{program.id}/proxy",
        "proxy_target": program.proxy_target,
        "node": program.node,
        "pod": program.pod,
        "created_at": rfc3339(program.create_time),
        "updated_at": rfc3339(program.update_time),
        "image_id": program.image_id,
        "container_id": program.container_id,
        "error": program.error_message,
        # The original's name for the same text.
        "error_msg": program.error_message,
        "restart_count": program.restart_count,
        "last_exit_code": (program.last_exit_code if program.HasField("last_exit_code") else None),
        "revision": program.revision,
        "run": program.run,
        "runtime": program.runtime,
        "resources": {
            "memory_bytes": program.resources.memory_bytes,
            "milli_cpus": program.resources.milli_cpus,
            "pids": program.resources.pids,
            "state_bytes": program.resources.state_bytes,
        },
        "next_restart_at": optional_time(program, "next_restart_time"),
        "ready_at": optional_time(program, "ready_time"),
        "restart_pending": program.restart_pending,
        "status_note": program.status_note,
        "alias": program.alias,
        "environment": dict(program.env),
        # The program's own view, from its WatcherAPI (issue #14).
        "watcher_state": program.watcher_state,
        "health": pb.Health.Name(program.health).removeprefix("HEALTH_").lower(),
        "health_reason": program.health_reason,
        "watcher_answered_at": optional_time(program, "watcher_answer_time"),
        "watcher_state_since": optional_time(program, "watcher_state_time"),
        "unhealthy_since": optional_time(program, "unhealthy_time"),
        "readiness": readiness_json(program.readiness),
        "restart_policy": restart_policy_json(program.restart_policy),
        "stop": stop_json(program.stop),
        "revision_number": program.revision_number,
        "latest_revision_number": program.latest_revision_number,
        "rollout": rollout_json(program.rollout) if program.HasField("rollout") else None,
    }


def rollout_json(rollout: pb.Rollout) -> dict[str, Any]:
    return {
        "target_revision_number": rollout.target_revision_number,
        "previous_revision_number": rollout.previous_revision_number,
        "phase": pb.RolloutPhase.Name(rollout.phase).removeprefix("ROLLOUT_PHASE_"),
        "reason": rollout.reason,
        "target_build_id": rollout.target_build_id,
        "started_at": rfc3339(rollout.start_time),
        "ended_at": optional_time(rollout, "end_time"),
    }


def revision_json(revision: pb.ProgramRevision) -> dict[str, Any]:
    return {
        "number": revision.number,
        "build_id": revision.build_id,
        "resources": {
            "memory_bytes": revision.resources.memory_bytes,
            "milli_cpus": revision.resources.milli_cpus,
            "pids": revision.resources.pids,
            "state_bytes": revision.resources.state_bytes,
        },
        "created_by": revision.create_user,
        "created_at": rfc3339(revision.create_time),
        "description": revision.description,
        "kept": revision.kept,
        "current": revision.current,
        # Absent from revisions recorded before revisions carried them.
        "readiness": readiness_json(revision.readiness) if revision.HasField("readiness") else None,
        "restart_policy": restart_policy_json(revision.restart_policy)
        if revision.HasField("restart_policy")
        else None,
        "stop": stop_json(revision.stop) if revision.HasField("stop") else None,
        "changed_fields": [_REST_PATH.get(path, path) for path in revision.changed_fields],
    }


#: Field paths as the REST API names them (durations are numbers of seconds here).
_REST_PATH = {
    "readiness.timeout": "readiness.timeout_seconds",
    "readiness.settle": "readiness.settle_seconds",
    "readiness.liveness_grace": "readiness.liveness_grace_seconds",
    "restart_policy.window": "restart_policy.window_seconds",
    "stop.grace": "stop.grace_seconds",
}


def readiness_json(check: pb.ReadinessCheck) -> dict[str, Any]:
    return {
        "path": check.path,
        "field": check.field,
        "ready_values": list(check.ready_values),
        "failed_values": list(check.failed_values),
        "timeout_seconds": seconds(check.timeout),
        "settle_seconds": seconds(check.settle),
        "liveness_grace_seconds": seconds(check.liveness_grace),
    }


def restart_policy_json(policy: pb.RestartPolicy) -> dict[str, Any]:
    return {
        "mode": RESTART_MODE_NAMES.get(policy.mode, "always"),
        "max_restarts": policy.max_restarts,
        "window_seconds": seconds(policy.window),
    }


def stop_json(stop: pb.StopSettings) -> dict[str, Any]:
    return {"signal": stop.signal, "grace_seconds": seconds(stop.grace)}


RESTART_MODE_NAMES = {
    pb.RESTART_MODE_ALWAYS: "always",
    pb.RESTART_MODE_ON_FAILURE: "on-failure",
    pb.RESTART_MODE_NEVER: "never",
}


def seconds(duration: Any) -> float:
    return float(duration.seconds + duration.nanos / 1e9)


def lifecycle_json(program: pb.Program, base: str, message: str) -> dict[str, Any]:
    """A start/stop/restart/delete answer: the program, and the original's `message`."""
    return {**program_json(program, base), "message": message}


def log_json(entry: pb.LogEntry) -> dict[str, Any]:
    return {
        "time": rfc3339(entry.time),
        "stream": pb.LogStream.Name(entry.stream).removeprefix("LOG_STREAM_").lower(),
        "run": entry.run,
        "line": entry.line,
    }


def log_text(entries: list[pb.LogEntry]) -> str:
    """The original's `logs`: the lines as one string, each ending in a newline."""
    return "".join(entry.line + "\n" for entry in entries)


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def source_json(source: pb.ProgramSource, program_id: str, retrieved_at: str) -> dict[str, Any]:
    """Text files as text; files that are not UTF-8 as base64, under their own key.

    `files` is the original's shape: every text file with the Dockerfile among
    them as `Dockerfile` (the core refuses a source file of that name, so it
    cannot collide). Binary files are only in `src_files_base64`: `files`
    holds text, as the original's clients expect.
    """
    text: dict[str, str] = {}
    binary: dict[str, str] = {}
    for path, content in sorted(source.src_files.items()):
        try:
            text[path] = content.decode("utf-8")
        except UnicodeDecodeError:
            binary[path] = base64.b64encode(content).decode("ascii")
    return {
        "program_id": program_id,
        "dockerfile": source.dockerfile,
        "src_files": text,
        "src_files_base64": binary,
        "build_id": source.build_id,
        "files": {DOCKERFILE_NAME: source.dockerfile, **text},
        "retrieved_at": retrieved_at,
    }


NDJSON = "application/x-ndjson"


class LogsFormat(enum.Enum):
    #: The original's `{program_id, container_id, logs, timestamp}`, the last lines.
    JSON = "json"
    #: One LogEntry object a line, as they come (and on with `follow`).
    NDJSON = "ndjson"


def logs_format(request: web.Request, follow: bool) -> LogsFormat:
    """`?format=` wins; else NDJSON if `Accept` names it or the client follows; else JSON.

    `follow` needs a stream, which one JSON document cannot be: it implies
    NDJSON, and `?format=json&follow=1` is a 400 rather than a follow ignored.
    """
    raw = request.query.get("format", "")
    if raw:
        try:
            chosen = LogsFormat(raw.lower())
        except ValueError:
            raise bad_request(
                "format", f"{cut(raw)} is not a log format: use json or ndjson"
            ) from None
        if chosen is LogsFormat.JSON and follow:
            raise bad_request("format", "json cannot follow: use format=ndjson with follow")
        return chosen
    if NDJSON in request.headers.get("Accept", "").lower() or follow:
        return LogsFormat.NDJSON
    return LogsFormat.JSON


def parse_state(value: str, field: str = "state") -> pb.State.ValueType:
    state = _STATES.get(value.lower().removeprefix("state_"))
    if state is None:
        raise bad_request(field, f"{cut(value)} is not a state: one of {', '.join(STATE_LABELS)}")
    return state


def parse_log_streams(value: str, field: str = "stream") -> list[pb.LogStream.ValueType]:
    streams = []
    for name in filter(None, (part.strip().lower() for part in value.split(","))):
        stream = _LOG_STREAMS.get(name)
        if stream is None:
            raise bad_request(
                field, f"{cut(name)} is not a log stream: use {', '.join(LOG_STREAM_NAMES)}"
            )
        streams.append(stream)
    return streams


def parse_int(
    request: web.Request, field: str, default: int | None, low: int, high: int
) -> int | None:
    raw = request.query.get(field)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(field, f"{cut(raw)} is not an integer") from None
    if not low <= value <= high:
        raise bad_request(field, f"must be between {low} and {high}")
    return value


def parse_seconds(request: web.Request, field: str, default: float, high: float) -> float:
    raw = request.query.get(field)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise bad_request(field, f"{cut(raw)} is not a number of seconds") from None
    if not 0 < value <= high:  # also refuses nan and inf
        raise bad_request(field, f"must be more than 0 and at most {high:g} seconds")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def parse_bool(request: web.Request, field: str) -> bool:
    raw = request.query.get(field, "").lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise bad_request(field, f"{cut(raw)} is not a boolean: use 1/0 or true/false")


def not_ready(state: str) -> ApiError:
    return ApiError(
        503,
        "PROGRAM_NOT_READY",
        f"the program is {state}, not Ready: its WatcherAPI is not reachable now",
        state=state,
    )
