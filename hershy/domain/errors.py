"""Errors the Host reports to callers, independent of the transport.

Each maps to exactly one gRPC status code (entrypoints/grpc_errors.py) and
one HTTP status (the REST shim). Messages are written for a person: they say
what is wrong and, where it helps, what to do.
"""

from __future__ import annotations


class HershyError(Exception):
    """Base of every error a caller may see."""

    #: A stable, machine-readable reason (google.rpc.ErrorInfo.reason).
    reason = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(HershyError):
    """A request field is malformed. `field` names it (e.g. `src_files["a/../b"]`)."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


class TooLarge(InvalidArgument):
    """A request is over a size limit (HTTP 413)."""

    reason = "TOO_LARGE"


class NotFound(HershyError):
    reason = "PROGRAM_NOT_FOUND"


class AlreadyExists(HershyError):
    """A name the caller chose is taken (by one of their own programs: nobody else's shows)."""

    reason = "ALREADY_EXISTS"


class Unauthenticated(HershyError):
    """No token, or one the Host does not know or has revoked."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(HershyError):
    """A valid token that may not do this (only the admin manages tokens)."""

    reason = "PERMISSION_DENIED"


class FailedPrecondition(HershyError):
    """The program's state does not allow the request. `state` is its current state name."""

    reason = "WRONG_STATE"

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state = state


class RevisionTooOld(HershyError):
    """A Watch resume point older than the Host remembers."""

    reason = "REVISION_COMPACTED"

    def __init__(self, message: str, oldest: int) -> None:
        super().__init__(message)
        self.oldest = oldest


class ResourceExhausted(HershyError):
    reason = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(HershyError):
    reason = "TIMEOUT"


class Unavailable(HershyError):
    reason = "UNAVAILABLE"


class QuotaExceeded(ResourceExhausted):
    """A user's quota would be passed. `quota` names it; `limit` and `usage` in its units."""

    reason = "QUOTA_EXCEEDED"

    def __init__(self, message: str, *, quota: str, limit: int, usage: int) -> None:
        super().__init__(message)
        self.quota = quota
        self.limit = limit
        self.usage = usage
