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
from hershy.domain.model import Resources

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
