"""The one place Host errors become gRPC statuses (AIP-193: ErrorInfo, BadRequest)."""

from __future__ import annotations

from typing import cast

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from hershy.domain import errors

ERROR_DOMAIN = "hershy.dev"

CODES: dict[type[errors.HershyError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.TooLarge: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.RevisionTooOld: grpc.StatusCode.OUT_OF_RANGE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def code_for(error: errors.HershyError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in CODES:
            return CODES[kind]
    return grpc.StatusCode.INTERNAL


def to_status(error: Exception) -> grpc.Status:
    """The rich status for an error; unexpected errors become INTERNAL without details."""
    if not isinstance(error, errors.HershyError):
        internal = status_pb2.Status(
            code=code_pb2.INTERNAL, message="internal error; see the Host log"
        )
        return cast(grpc.Status, rpc_status.to_status(internal))
    code = code_for(error)
    metadata: dict[str, str] = {}
    details: list[any_pb2.Any] = []
    if isinstance(error, errors.InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=error.field, description=error.description
                )
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
    if isinstance(error, errors.FailedPrecondition):
        metadata["state"] = error.state
    if isinstance(error, errors.QuotaExceeded):
        metadata.update(quota=error.quota, limit=str(error.limit), usage=str(error.usage))
    if isinstance(error, errors.RevisionTooOld):
        metadata["oldest_revision"] = str(error.oldest)
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata)
    )
    details.insert(0, info)
    status = status_pb2.Status(code=code.value[0], message=error.message, details=details)
    return cast(grpc.Status, rpc_status.to_status(status))
