"""`POST /programs` bodies (JSON, or a tar of the build context) to a CreateProgramRequest.

Only the shape is checked here (types, tar members that are not plain files);
what a valid program is (user ids, paths, sizes) is the core's to say, so there
is one copy of those rules. Unknown top-level keys of a JSON body are ignored,
as the original system did, and named back in a `Warning` header (see
`ignored_keys_warning`); unknown keys inside `resources` stay a 400, because a
misspelt limit silently ignored would run the program without it.
"""

from __future__ import annotations

import binascii
import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf.duration_pb2 import Duration

from hershy.domain import limits
from hershy.domain.validation import MAX_ECHO_CHARS, cut
from hershy.entrypoints.rest.errors import bad_request, too_large
from hershy.service.work_queue import WorkQueue
from hershy.v1 import program_pb2 as pb

#: The core's limit on all files together; base64 (4/3) and JSON escaping or
#: tar headers make a body bigger than its files, so the shim allows that much
#: more and leaves the exact limit to the core.
MAX_BODY_BYTES = limits.MAX_CREATE_BODY_BYTES
TAR_TYPES = frozenset({"application/x-tar", "application/tar"})
DOCKERFILE = "Dockerfile"
#: int64 fields of Resources: bigger values would not fit the protobuf field.
_INT64_MAX = 2**63 - 1

#: Parsing a body of 10,000 files is ~100 ms of CPU: on threads of its own, so the
#: shim's loop (every other tenant's requests) is not held that long.
PARSE_WORKERS = 2
PARSE_BACKLOG = 8

_KEYS = frozenset(
    {
        "user_id",
        "dockerfile",
        "src_files",
        "src_files_base64",
        "resources",
        "alias",
        "environment",
        "readiness",
        "restart_policy",
        "stop",
    }
)
#: The REST spelling of restart modes.
RESTART_MODES = {
    "always": pb.RESTART_MODE_ALWAYS,
    "on-failure": pb.RESTART_MODE_ON_FAILURE,
    "never": pb.RESTART_MODE_NEVER,
}
#: The most seconds a duration field may hold here (the core checks its own bounds).
_MAX_SECONDS = 10**9
_RESOURCE_KEYS = ("memory_bytes", "milli_cpus", "pids", "state_bytes")
#: The `Warning` header names at most this many ignored keys, each cut to
#: MAX_IGNORED_KEY_CHARS: a body of a million keys gets a header of bounded size.
MAX_IGNORED_KEYS_NAMED = 10
MAX_IGNORED_KEY_CHARS = 40
#: What may appear of a key in the header: printable ASCII but `"` and `\\`
#: (a quoted-string's delimiters); anything else becomes `?`, so no key can
#: break the header or inject another.
_HEADER_SAFE = frozenset(chr(code) for code in range(0x20, 0x7F)) - {'"', "\\"}


@dataclass(frozen=True, slots=True)
class CreateBody:
    """What a POST /programs body asks for, and the JSON keys it held that were ignored."""

    request: pb.CreateProgramRequest
    ignored_keys: tuple[str, ...] = field(default=())


def ignored_keys_warning(keys: tuple[str, ...]) -> str | None:
    """An RFC 7234 `Warning` (299: a persistent warning) naming the ignored keys, bounded."""
    if not keys:
        return None
    named = [
        "".join(char if char in _HEADER_SAFE else "?" for char in key[:MAX_IGNORED_KEY_CHARS])
        for key in sorted(keys)[:MAX_IGNORED_KEYS_NAMED]
    ]
    more = len(keys) - len(named)
    listed = ", ".join(named) + (f" and {more} more" if more > 0 else "")
    return f'299 - "unknown keys ignored: {listed}"'


async def read_body(request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole body, or 413 as soon as it is known to be over `limit` (unread if possible)."""
    length = request.content_length
    if length is not None and length > limit:
        raise too_large("body", f"is {length} bytes; at most {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise too_large("body", f"is more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class Uploads:
    """POST /programs bodies parsed off the event loop."""

    def __init__(self) -> None:
        self._parsing = WorkQueue("hershy-rest-uploads", PARSE_WORKERS, PARSE_BACKLOG)

    async def create_request(self, request: web.Request) -> CreateBody:
        """The request a POST /programs describes: a tar by its Content-Type, else JSON.

        Any other Content-Type is read as JSON, as the original system did: its
        clients (and `curl -d`) do not always say application/json.
        """
        if request.content_type.lower() in TAR_TYPES:
            user_id = request.query.get("user_id", "")
            message = await self._parsing.run(from_tar, user_id, await read_body(request))
            return CreateBody(message)
        return await self._parsing.run(from_json, await read_body(request))

    def close(self) -> None:
        self._parsing.close()


def from_json(body: bytes) -> CreateBody:
    if not body.strip():
        raise bad_request("body", "is empty: send a JSON object with user_id and dockerfile")
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise bad_request("body", "is not UTF-8") from None
    except json.JSONDecodeError as error:
        raise bad_request("body", f"is not valid JSON: {error}") from None
    except RecursionError:
        raise bad_request("body", "is nested too deeply") from None
    if not isinstance(data, dict):
        raise bad_request("body", f"must be a JSON object, not {_json_type(data)}")
    ignored = tuple(key for key in data if key not in _KEYS)
    user_id = _string(data, "user_id")
    dockerfile = _string(data, "dockerfile")
    files = {
        path: _utf8(text, f"src_files[{cut(path)}]")
        for path, text in _object(data, "src_files").items()
    }
    for path, encoded in _object(data, "src_files_base64").items():
        field = f"src_files_base64[{cut(path)}]"
        if path in files:
            raise bad_request(field, "is also in src_files: give each file once")
        try:
            # As strict as b64decode(validate=True), at half its cost: the regex it
            # checks the whole text with first took a fifth of a 6 MiB create's time.
            files[path] = binascii.a2b_base64(encoded, strict_mode=True)
        except (binascii.Error, ValueError):
            raise bad_request(field, "is not valid base64") from None
    request = pb.CreateProgramRequest(
        user_id=user_id,
        dockerfile=dockerfile,
        src_files=files,
        alias=_string(data, "alias"),
        # `environment`, not `env`: old UIs send an `env` of their own, ignored as before.
        env=_object(data, "environment"),
    )
    _set_settings(request, data)
    return CreateBody(request, ignored)


def _set_settings(target: pb.CreateProgramRequest | pb.Program, data: dict[str, Any]) -> None:
    """Set on `target` the resources, readiness, restart policy and stop settings `data`
    gives (each checked); an absent or null one stays unset."""
    if data.get("resources") is not None:
        target.resources.CopyFrom(_resources(data["resources"]))
    if data.get("readiness") is not None:
        target.readiness.CopyFrom(_readiness(data["readiness"]))
    if data.get("restart_policy") is not None:
        target.restart_policy.CopyFrom(_restart_policy(data["restart_policy"]))
    if data.get("stop") is not None:
        target.stop.CopyFrom(_stop(data["stop"]))


def from_tar(user_id: str, body: bytes) -> pb.CreateProgramRequest:
    """A build context as a tar: `Dockerfile` at the top, plain files and folders only.

    A member whose data the body does not hold (a truncated tar), or anything
    but end-of-archive zeros after the last member read (a corrupt header,
    which tarfile takes for the end), is refused naming the member: never a
    file silently dropped.
    """
    if not user_id:
        raise bad_request("user_id", "is required: POST /programs?user_id=...")
    if not body:
        raise bad_request("body", "is empty: send a tar of the build context")
    dockerfile: bytes | None = None
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as archive:
            for member in archive:
                path = _member_path(member)
                if member.isdir():
                    continue
                field = f"tar member {cut(member.name)}"
                if not member.isreg():
                    raise bad_request(
                        field, "is not a regular file (links, devices and fifos are refused)"
                    )
                if member.offset_data + member.size > len(body):
                    raise bad_request(
                        field,
                        f"is truncated: it claims {member.size} bytes, the tar holds "
                        f"{max(0, len(body) - member.offset_data)} of them",
                    )
                if path in files or (path == DOCKERFILE and dockerfile is not None):
                    raise bad_request(field, "appears twice")
                content = archive.extractfile(member)
                data = content.read() if content is not None else b""
                if path == DOCKERFILE:
                    dockerfile = data
                else:
                    files[path] = data
            _check_the_end(body, archive.offset)
    except tarfile.TarError as error:
        raise bad_request("body", f"is not a valid tar archive: {cut(str(error))}") from None
    if dockerfile is None:
        raise bad_request("dockerfile", "the tar has no Dockerfile at its top level")
    try:
        dockerfile_text = dockerfile.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("dockerfile", "is not UTF-8 text") from None
    return pb.CreateProgramRequest(user_id=user_id, dockerfile=dockerfile_text, src_files=files)


def _check_the_end(body: bytes, end: int) -> None:
    """After the last member tarfile read there may only be zeros (the end-of-archive
    blocks): tarfile stops quietly at a header it cannot read, dropping what follows."""
    rest = body[end:]
    if not rest.strip(b"\0"):
        return
    name = rest[:100].split(b"\0", 1)[0].decode("utf-8", errors="replace")
    raise bad_request(
        f"tar member {cut(name)}" if name else "body",
        f"is corrupt or truncated: its header at byte {end} cannot be read",
    )


def _member_path(member: tarfile.TarInfo) -> str:
    """The member's path in the build context; absolute and `..` names are refused."""
    name = member.name
    field = f"tar member {cut(name)}"
    if name.startswith("/"):
        raise bad_request(field, "has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise bad_request(field, "has a '..' segment")
    # tarfile keeps undecodable bytes of a name as surrogates: no valid path.
    _utf8(name, field)
    # `tar -C dir -c .` writes `./Dockerfile`: the same file as `Dockerfile`.
    return "/".join(parts)


def _json_type(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case _:
            return "an object"


def _utf8(text: str, field: str) -> bytes:
    """JSON may carry lone surrogates (`"\\ud800"`), which are no text at all."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(field, "is not valid Unicode text (a lone surrogate?)") from None


def _string(data: dict[str, Any], key: str) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise bad_request(key, f"must be a string, not {_json_type(value)}")
    _utf8(value, key)
    return value


def _object(data: dict[str, Any], key: str) -> dict[str, str]:
    """A map of path -> string (`{}` when absent)."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(key, f"must be an object of path -> content, not {_json_type(value)}")
    for path, content in value.items():
        field = f"{key}[{cut(path)}]"
        _utf8(path, field)
        if not isinstance(content, str):
            raise bad_request(field, f"must be a string, not {_json_type(content)}")
    return value


def _resources(value: Any) -> pb.Resources:
    if not isinstance(value, dict):
        raise bad_request("resources", f"must be an object, not {_json_type(value)}")
    resources = pb.Resources()
    for key, amount in value.items():
        field = f"resources.{key}"[:MAX_ECHO_CHARS]
        if key not in _RESOURCE_KEYS:
            raise bad_request(field, f"is not a known field: use {', '.join(_RESOURCE_KEYS)}")
        if amount is None:
            continue
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise bad_request(field, f"must be an integer, not {_json_type(amount)}")
        if not 0 <= amount <= _INT64_MAX:
            raise bad_request(field, "must be between 0 (the Host's default) and 2^63-1")
        setattr(resources, key, amount)
    return resources


def _settings(value: Any, key: str, known: tuple[str, ...]) -> dict[str, Any]:
    """An object of known keys (a misspelt setting is a 400, never silently ignored)."""
    if not isinstance(value, dict):
        raise bad_request(key, f"must be an object, not {_json_type(value)}")
    for name in value:
        if name not in known:
            raise bad_request(
                f"{key}.{name}"[:MAX_ECHO_CHARS], f"is not a known field: use {', '.join(known)}"
            )
    return {name: item for name, item in value.items() if item is not None}


def _seconds(value: Any, field: str) -> Duration:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(field, f"must be a number of seconds, not {_json_type(value)}")
    if not 0 <= value <= _MAX_SECONDS:  # NaN fails too
        raise bad_request(field, f"must be between 0 and {_MAX_SECONDS} seconds")
    duration = Duration()
    duration.FromNanoseconds(round(value * 1e9))
    return duration


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise bad_request(field, f"must be a string, not {_json_type(value)}")
    _utf8(value, field)
    return value


def _texts(value: Any, field: str) -> list[str]:
    if not isinstance(value, list):
        raise bad_request(field, f"must be an array of strings, not {_json_type(value)}")
    return [_text(item, f"{field}[{index}]") for index, item in enumerate(value)]


_READINESS_KEYS = (
    "path",
    "field",
    "ready_values",
    "failed_values",
    "timeout_seconds",
    "settle_seconds",
    "liveness_grace_seconds",
)


def _readiness(value: Any) -> pb.ReadinessCheck:
    data = _settings(value, "readiness", _READINESS_KEYS)
    check = pb.ReadinessCheck()
    if "path" in data:
        check.path = _text(data["path"], "readiness.path")
    if "field" in data:
        check.field = _text(data["field"], "readiness.field")
    for name in ("ready_values", "failed_values"):
        if name in data:
            getattr(check, name).extend(_texts(data[name], f"readiness.{name}"))
    for name, target in (
        ("timeout_seconds", check.timeout),
        ("settle_seconds", check.settle),
        ("liveness_grace_seconds", check.liveness_grace),
    ):
        if name in data:
            target.CopyFrom(_seconds(data[name], f"readiness.{name}"))
    return check


def _restart_policy(value: Any) -> pb.RestartPolicy:
    data = _settings(value, "restart_policy", ("mode", "max_restarts", "window_seconds"))
    policy = pb.RestartPolicy()
    if "mode" in data:
        mode = data["mode"]
        if not isinstance(mode, str) or mode not in RESTART_MODES:
            raise bad_request("restart_policy.mode", f"must be one of {', '.join(RESTART_MODES)}")
        policy.mode = RESTART_MODES[mode]
    if "max_restarts" in data:
        limit = data["max_restarts"]
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit < 2**31:
            raise bad_request("restart_policy.max_restarts", "must be an integer, 0 for no limit")
        policy.max_restarts = limit
    if "window_seconds" in data:
        policy.window.CopyFrom(_seconds(data["window_seconds"], "restart_policy.window_seconds"))
    return policy


def _stop(value: Any) -> pb.StopSettings:
    data = _settings(value, "stop", ("signal", "grace_seconds"))
    stop = pb.StopSettings()
    if "signal" in data:
        stop.signal = _text(data["signal"], "stop.signal")
    if "grace_seconds" in data:
        stop.grace.CopyFrom(_seconds(data["grace_seconds"], "stop.grace_seconds"))
    return stop


#: REST names of updatable fields whose proto (and update_mask) name differs: durations
#: are numbers of seconds here, `Duration`s there.
_REST_TO_MASK_PATH = {
    "readiness.timeout_seconds": "readiness.timeout",
    "readiness.settle_seconds": "readiness.settle",
    "readiness.liveness_grace_seconds": "readiness.liveness_grace",
    "restart_policy.window_seconds": "restart_policy.window",
    "stop.grace_seconds": "stop.grace",
}

_UPDATABLE = ("resources", "readiness", "restart_policy", "stop")


def update_request(name: str, body: bytes, mask: str) -> pb.UpdateProgramRequest:
    """PATCH /programs/{id}: some of `resources`, `readiness`, `restart_policy`, `stop`.

    The mask is `update_mask` (comma-separated; REST or proto names) or, without it, the
    fields the body names: each key of each object (`{"stop": {"signal": ...}}` is
    `stop.signal`), an empty object standing for the whole field (its defaults).
    """
    if not body.strip():
        raise bad_request("body", 'is empty: send a JSON object such as {"resources": {...}}')
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise bad_request("body", "is not a JSON object") from None
    if not isinstance(data, dict):
        raise bad_request("body", f"must be a JSON object, not {_json_type(data)}")
    unknown = [key for key in data if key not in _UPDATABLE]
    if unknown:
        raise bad_request(cut(unknown[0]), f"cannot be updated: use {', '.join(_UPDATABLE)}")
    program = pb.Program(name=name)
    _set_settings(program, data)
    paths: list[str] = []
    for key in _UPDATABLE:
        given = data.get(key)
        if isinstance(given, dict):
            paths += [f"{key}.{field}" for field in given] or [key]
    if mask:
        paths = [path.strip() for path in mask.split(",") if path.strip()]
    request = pb.UpdateProgramRequest(program=program)
    request.update_mask.paths.extend(_REST_TO_MASK_PATH.get(path, path) for path in paths)
    return request
