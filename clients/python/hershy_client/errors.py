"""Typed errors: a failed call becomes one exception class per status code.

The Host attaches a `google.rpc.Status` to every error it reports (AIP-193):
an `ErrorInfo` (domain `hershy.dev`) whose `reason` is stable and
machine-readable, its `metadata` (e.g. `state` for a FAILED_PRECONDITION),
and, for bad input, a `BadRequest` naming the field. Callers branch on the
class and read those fields instead of parsing messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.rpc import error_details_pb2
from grpc_status import rpc_status

#: The ErrorInfo domain the Host uses; details from other domains are ignored.
ERROR_DOMAIN = "hershy.dev"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One entry of a `google.rpc.BadRequest`: which field is wrong, and why."""

    field: str
    description: str


class HershyError(Exception):
    """Base of every error the client raises for a failed call.

    `code` is the gRPC status code; `reason` the ErrorInfo reason (None when
    the status carried none, e.g. a client-side deadline or an unreachable
    Host); `field` the first BadRequest field, if any; `state` the program's
    state for a FAILED_PRECONDITION (ErrorInfo metadata `state`).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations = violations

    @property
    def field(self) -> str | None:
        """The (first) request field the Host rejected, from BadRequest."""
        return self.violations[0].field if self.violations else None

    @property
    def state(self) -> str | None:
        """The program's state when the request was refused (e.g. `READY`)."""
        return self.metadata.get("state")

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, "
            f"message={self.message!r}, field={self.field!r}, state={self.state!r})"
        )


class InvalidArgument(HershyError):
    """A request field is malformed or over a limit; `field` names it."""


class NotFound(HershyError):
    """No such program (or it was deleted)."""


class FailedPrecondition(HershyError):
    """The program's state does not allow the request; `state` names it."""


class RevisionTooOld(HershyError):
    """A Watch `resume_revision` the Host does not know (too old, or ahead of it).

    Watch again without it, starting from a fresh snapshot; `watch_forever`
    does this by itself.
    """

    @property
    def oldest_revision(self) -> int | None:
        """The oldest revision the Host can still resume after, when it said."""
        value = self.metadata.get("oldest_revision")
        return int(value) if value is not None and value.lstrip("-").isdigit() else None


class ResourceExhausted(HershyError):
    """The Host ran out of something (e.g. WatcherAPI ports)."""


class Unauthenticated(HershyError):
    """No valid token was sent."""


class PermissionDenied(HershyError):
    """The token is valid but does not allow the request."""


class Unavailable(HershyError):
    """The Host cannot be reached (or is shutting down); retrying may help."""


class DeadlineExceeded(HershyError):
    """The call (or `WaitProgram`'s own timeout) ran out of time."""


#: The class for each status code; codes not listed become a plain HershyError.
ERRORS_BY_CODE: dict[grpc.StatusCode, type[HershyError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.OUT_OF_RANGE: RevisionTooOld,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def from_rpc_error(error: grpc.RpcError) -> HershyError:
    """The typed error for a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`).

    The rich status travels in the trailing metadata (`grpc-status-details-bin`);
    `rpc_status.from_call` decodes it and checks it matches the call's status.
    """
    if not isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        # Only calls carry a status; anything else is a transport-level failure.
        return HershyError(grpc.StatusCode.UNKNOWN, str(error))
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    reason: str | None = None
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    try:
        status: Any = rpc_status.from_call(error)
    except ValueError:  # a status that contradicts the call's: trust the call
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                if info.domain == ERROR_DOMAIN:
                    reason = info.reason
                    metadata.update(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad_request.field_violations
                )
    kind = ERRORS_BY_CODE.get(code, HershyError)
    return kind(code, message, reason=reason, metadata=metadata, violations=tuple(violations))
