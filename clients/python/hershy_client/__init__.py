"""Hershy API client: a thin sync and async wrapper over the generated `hershy.v1` stubs.

    from hershy_client import Client

    with Client("127.0.0.1:9090") as hershy:
        program = hershy.create("alice", "FROM scratch\\n", {"app.py": "print(1)"})
        hershy.start(program)
        hershy.wait(program, "READY")

Messages are the generated protobuf classes (`hershy.v1.program_pb2`, also
re-exported here as `pb`); failures raise `HershyError` subclasses. See
clients/python/README.md.
"""

from __future__ import annotations

from hershy.v1 import program_pb2 as pb
from hershy_client._common import (
    DEFAULT_TARGET,
    LogStreamLike,
    ProgramRef,
    StateLike,
    program_id,
    program_name,
)
from hershy_client.aio import AsyncClient
from hershy_client.client import Client
from hershy_client.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    HershyError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RevisionTooOld,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)
from hershy_client.watch import Resync, ResyncReason, WatchItem

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TARGET",
    "AsyncClient",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "HershyError",
    "InvalidArgument",
    "LogStreamLike",
    "NotFound",
    "PermissionDenied",
    "ProgramRef",
    "ResourceExhausted",
    "Resync",
    "ResyncReason",
    "RevisionTooOld",
    "StateLike",
    "Unauthenticated",
    "Unavailable",
    "WatchItem",
    "from_rpc_error",
    "pb",
    "program_id",
    "program_name",
]
