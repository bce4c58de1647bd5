"""Checks on what a user sends to create a program, and the build id.

Pure: the same request always gives the same answer. Every error names the
field that is wrong.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from hershy.domain import limits
from hershy.domain.errors import InvalidArgument, TooLarge
from hershy.domain.model import ReadinessCheck, Resources, RestartPolicy, StopSettings

#: The most of a client's value an error message repeats. Messages travel in gRPC
#: trailers and HTTP bodies: an unbounded echo of a huge value breaks the answer itself.
MAX_ECHO_CHARS = 80

USER_ID_PATTERN = re.compile(limits.USER_ID_PATTERN)
PROGRAM_ID_PATTERN = re.compile(limits.PROGRAM_ID_PATTERN)
DOCKERFILE_PATH = "Dockerfile"


@dataclass(frozen=True, slots=True)
class SourceLimits:
    """Size limits on a program's build inputs."""

    max_file_bytes: int = limits.MAX_SOURCE_FILE_BYTES
    max_total_bytes: int = limits.MAX_SOURCE_TOTAL_BYTES
    max_files: int = limits.MAX_SOURCE_FILES
    max_path_length: int = limits.MAX_SOURCE_PATH_BYTES
    max_path_depth: int = limits.MAX_SOURCE_PATH_DEPTH


@dataclass(frozen=True, slots=True)
class ProgramSource:
    """Validated build inputs: the Dockerfile and the files beside it."""

    dockerfile: bytes
    files: Mapping[str, bytes]

    def all_files(self) -> dict[str, bytes]:
        """The whole build context, Dockerfile included."""
        return {DOCKERFILE_PATH: self.dockerfile, **self.files}


def cut(value: str, limit: int = MAX_ECHO_CHARS) -> str:
    """A client's value as a message may show it: quoted, escaped, at most `limit` characters."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def validate_user_id(user_id: str, field: str = "user_id") -> str:
    if not user_id:
        raise InvalidArgument(field, "is required")
    if not USER_ID_PATTERN.fullmatch(user_id):
        raise InvalidArgument(
            field,
            f"{cut(user_id)} is not a valid user id: use 1-63 characters of a-z, 0-9, "
            "'_' and '-', starting with a letter or digit",
        )
    return user_id


def validate_program_id(program_id: str, field: str = "name") -> str:
    if not PROGRAM_ID_PATTERN.fullmatch(program_id):
        raise InvalidArgument(field, f"{cut(program_id)} is not a valid program id")
    return program_id


#: Any character below 0x20 (NUL included): none may appear in a path.
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f]")


def _path_field(path: str) -> str:
    return f"src_files[{cut(path)}]"


def validate_path(path: str, limits: SourceLimits) -> str:
    """A file path inside the build context: relative, normalised, no tricks."""
    problem = _path_problem(path, limits)
    if problem is not None:
        raise InvalidArgument(_path_field(path), problem)
    return path


def _path_problem(path: str, limits: SourceLimits) -> str | None:
    """What is wrong with a path, or None. Runs for every file: cheap checks, no message
    built unless there is a problem (10,000 files must not cost the loop much)."""
    if not path:
        return "a file path must not be empty"
    if "\x00" in path:
        return "a file path must not contain NUL"
    if "\\" in path:
        return "use '/' to separate directories, not '\\'"
    if path.startswith("/"):
        return "a file path must be relative, not absolute"
    if len(path) > limits.max_path_length or (
        not path.isascii() and len(path.encode()) > limits.max_path_length
    ):
        return f"a file path must be at most {limits.max_path_length} bytes"
    parts = path.split("/")
    if "" in parts or "." in parts or ".." in parts:
        return "a file path must not contain '..', '.' or empty segments"
    if len(parts) > limits.max_path_depth:
        return f"a file path must be at most {limits.max_path_depth} deep"
    if _CONTROL_CHARACTER.search(path):
        return "a file path must not contain control characters"
    return None


def validate_source(
    dockerfile: str | bytes, files: Mapping[str, bytes], limits: SourceLimits
) -> ProgramSource:
    """The build inputs, checked; raises InvalidArgument or TooLarge naming the field."""
    dockerfile_bytes = dockerfile.encode() if isinstance(dockerfile, str) else dockerfile
    if not dockerfile_bytes.strip():
        raise InvalidArgument("dockerfile", "is required: the Dockerfile's content")
    if len(dockerfile_bytes) > limits.max_file_bytes:
        raise TooLarge("dockerfile", f"is larger than {limits.max_file_bytes} bytes")
    if len(files) > limits.max_files:
        raise TooLarge("src_files", f"has {len(files)} files; at most {limits.max_files}")
    total = len(dockerfile_bytes)
    directories: set[str] = set()
    for path, content in files.items():
        validate_path(path, limits)
        if path == DOCKERFILE_PATH:
            raise InvalidArgument(_path_field(path), "pass the Dockerfile in the dockerfile field")
        if len(content) > limits.max_file_bytes:
            raise TooLarge(_path_field(path), f"is larger than {limits.max_file_bytes} bytes")
        total += len(content)
        parent = path.rpartition("/")[0]
        while parent and parent not in directories:
            directories.add(parent)
            parent = parent.rpartition("/")[0]
    if total > limits.max_total_bytes:
        raise TooLarge("src_files", f"total more than {limits.max_total_bytes} bytes")
    clash = directories.intersection(files)
    if clash:
        path = min(clash)
        raise InvalidArgument(_path_field(path), "is a file but also a directory of another file")
    return ProgramSource(dockerfile_bytes, dict(files))


def build_id(source: ProgramSource) -> str:
    """A content hash of the build inputs: the same inputs give the same id."""
    digest = hashlib.sha256()
    for path, content in sorted(source.all_files().items()):
        encoded = path.encode()
        # Length-prefix both parts so no two contexts share a byte stream.
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
        digest.update(len(content).to_bytes(8, "big") + content)
    return "b-" + digest.hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class ResourcePolicy:
    """The Host's defaults for program limits, and the most a program may ask for."""

    default: Resources = limits.DEFAULT_RESOURCES
    maximum: Resources = limits.MAX_RESOURCES
    minimum: Resources = limits.MIN_RESOURCES


#: The limits, in the order the API lists them.
RESOURCE_FIELDS = ("memory_bytes", "milli_cpus", "pids", "state_bytes")


def resolve_resources(
    memory_bytes: int,
    milli_cpus: int,
    pids: int,
    policy: ResourcePolicy,
    state_bytes: int = 0,
) -> Resources:
    """Asked-for limits (0: the default) checked against the Host's bounds."""
    asked = {
        "memory_bytes": memory_bytes,
        "milli_cpus": milli_cpus,
        "pids": pids,
        "state_bytes": state_bytes,
    }
    resolved: dict[str, int] = {}
    for name, value in asked.items():
        low, high = getattr(policy.minimum, name), getattr(policy.maximum, name)
        field = f"resources.{name}"
        if value < 0:
            raise InvalidArgument(field, "must not be negative (0 means the Host's default)")
        if value and not low <= value <= high:
            raise InvalidArgument(field, f"{value} is outside this Host's bounds [{low}, {high}]")
        resolved[name] = value or getattr(policy.default, name)
    return Resources(**resolved)


@dataclass(frozen=True, slots=True)
class HealthLimits:
    """Bounds on a program's readiness check, restart policy and stop settings."""

    max_path_length: int = 200
    max_field_length: int = 64
    max_values: int = 16
    max_value_length: int = 64
    max_ready_timeout: float = 3600.0
    max_settle: float = 60.0
    min_liveness_grace: float = 1.0
    max_liveness_grace: float = 3600.0
    max_restarts: int = 1000
    min_restart_window: float = 1.0
    max_restart_window: float = 7 * 86400.0
    max_stop_grace: float = 300.0
    #: The signals a program may ask to be stopped with (SIGKILL follows the grace anyway).
    stop_signals: frozenset[str] = frozenset(
        {"SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL"}
    )


FIELD_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]*")
READINESS_PATH_PATTERN = re.compile(r"/[A-Za-z0-9_.~/%?&=+-]*")


def _within(field: str, value: float, low: float, high: float, zero_ok: bool = False) -> None:
    if zero_ok and value == 0:
        return
    if not low <= value <= high:  # NaN is refused too
        also = " (or 0 for the default)" if zero_ok else ""
        raise InvalidArgument(field, f"{value:g} s is outside [{low:g}, {high:g}]{also}")


def validate_readiness(
    check: ReadinessCheck, limits: HealthLimits = HealthLimits()
) -> ReadinessCheck:
    if len(check.path) > limits.max_path_length or not READINESS_PATH_PATTERN.fullmatch(check.path):
        raise InvalidArgument(
            "readiness.path",
            f"{cut(check.path)} must be an absolute path of at most "
            f"{limits.max_path_length} URL characters",
        )
    if ".." in check.path.split("/"):
        raise InvalidArgument("readiness.path", f"{cut(check.path)} must not contain '..'")
    if len(check.field) > limits.max_field_length or not FIELD_NAME_PATTERN.fullmatch(check.field):
        raise InvalidArgument(
            "readiness.field",
            f"{cut(check.field)} must be at most {limits.max_field_length} of [A-Za-z0-9_.-]",
        )
    for name in ("ready_values", "failed_values"):
        values: tuple[str, ...] = getattr(check, name)
        if len(values) > limits.max_values:
            raise InvalidArgument(f"readiness.{name}", f"at most {limits.max_values} values")
        for value in values:
            if not value or len(value) > limits.max_value_length or not value.isprintable():
                raise InvalidArgument(
                    f"readiness.{name}",
                    f"{cut(value)} must be 1-{limits.max_value_length} printable characters",
                )
    if set(check.ready_values) & set(check.failed_values):
        raise InvalidArgument("readiness.failed_values", "a value cannot be ready and failed")
    _within("readiness.timeout", check.timeout_seconds, 1.0, limits.max_ready_timeout, True)
    _within("readiness.settle", check.settle_seconds, 0.0, limits.max_settle)
    _within(
        "readiness.liveness_grace",
        check.liveness_grace_seconds,
        limits.min_liveness_grace,
        limits.max_liveness_grace,
    )
    return check


def validate_restart_policy(
    policy: RestartPolicy, limits: HealthLimits = HealthLimits()
) -> RestartPolicy:
    if not 0 <= policy.max_restarts <= limits.max_restarts:
        raise InvalidArgument(
            "restart_policy.max_restarts",
            f"{policy.max_restarts} is outside [0, {limits.max_restarts}] (0: no limit)",
        )
    _within(
        "restart_policy.window",
        policy.window_seconds,
        limits.min_restart_window,
        limits.max_restart_window,
    )
    return policy


def validate_stop(stop: StopSettings, limits: HealthLimits = HealthLimits()) -> StopSettings:
    if stop.signal not in limits.stop_signals:
        raise InvalidArgument(
            "stop.signal",
            f"{cut(stop.signal)} is not one of {', '.join(sorted(limits.stop_signals))}",
        )
    _within("stop.grace", stop.grace_seconds, 0.0, limits.max_stop_grace, True)
    return stop
