"""The one place gRPC statuses (and the shim's own refusals) become HTTP errors.

Every error the REST API returns has the body `{"error", "code", "message"}`:
`error` is a stable machine-readable reason (the core's `ErrorInfo.reason`
where there is one), `code` the HTTP status, `message` a sentence for a
person. Some carry more keys: `field` for bad input, `state` for a request the
program's state does not allow.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Mapping
from typing import Any

import grpc
from aiohttp import web
from aiohttp.typedefs import Handler
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from hershy.v1 import program_pb2 as pb

log = logging.getLogger(__name__)

#: The core marks a size limit with this ErrorInfo reason (INVALID_ARGUMENT on the wire).
TOO_LARGE_REASON = "TOO_LARGE"
#: A user's quota would be passed (RESOURCE_EXHAUSTED on the wire): HTTP 429.
QUOTA_REASON = "QUOTA_EXCEEDED"

#: gRPC code -> (HTTP status, the reason used when the core sent no ErrorInfo).
_STATUSES: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "INVALID_ARGUMENT"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "UNAUTHENTICATED"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "PERMISSION_DENIED"),
    grpc.StatusCode.NOT_FOUND: (404, "PROGRAM_NOT_FOUND"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "WRONG_STATE"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "ALREADY_EXISTS"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "OUT_OF_RANGE"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (503, "RESOURCE_EXHAUSTED"),
    grpc.StatusCode.UNAVAILABLE: (503, "UNAVAILABLE"),
}


#: Every JSON body the shim writes: compact, as the original system's were, so its
#: scripts' `grep -o '"program_id":"[^"]*"'` finds the fields.
dumps = functools.partial(json.dumps, separators=(",", ":"))


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON answer in the shim's one (compact) encoding."""
    return web.json_response(data, status=status, headers=headers, dumps=dumps)


class ApiError(Exception):
    """An HTTP error answer; raised anywhere in a handler, rendered by the middleware."""

    def __init__(self, status: int, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "code": self.status, "message": self.message, **self.extra}

    def response(self, headers: Mapping[str, str] | None = None) -> web.Response:
        response = web.Response(
            status=self.status,
            text=dumps(self.body()),
            content_type="application/json",
            headers=headers,
        )
        if self.status == 401:  # RFC 9110 11.6.1: say how to authenticate
            response.headers["WWW-Authenticate"] = 'Bearer realm="hershy"'
        return response


def bad_request(field: str, message: str) -> ApiError:
    """400 naming the field, worded like the core's INVALID_ARGUMENT messages."""
    return ApiError(400, "INVALID_ARGUMENT", f"{field}: {message}", field=field)


def unauthenticated(message: str) -> ApiError:
    return ApiError(401, "UNAUTHENTICATED", message)


def forbidden(message: str) -> ApiError:
    return ApiError(403, "PERMISSION_DENIED", message)


def too_large(field: str, message: str) -> ApiError:
    return ApiError(413, TOO_LARGE_REASON, f"{field}: {message}", field=field)


def state_label(value: int | str) -> str:
    """`4`, `STATE_READY` or `READY` -> `Ready`: the original system's spelling."""
    if isinstance(value, int):
        try:
            value = pb.State.Name(pb.State.ValueType(value))
        except ValueError:
            return str(value)
    return value.removeprefix("STATE_").capitalize()


def _rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    try:
        status: status_pb2.Status | None = rpc_status.from_call(error)
    except ValueError:  # details that do not match the status: ignore them
        return None
    return status


def from_rpc_error(
    error: grpc.aio.AioRpcError, *, out_of_range_status: int = 400, timeout_status: int = 408
) -> ApiError:
    """The HTTP answer for a failed gRPC call.

    `out_of_range_status` is 410 for a Watch resume point the core no longer
    remembers (the client must start over), `timeout_status` 408 for a wait
    that timed out (what fly.io's wait endpoint answers).
    """
    code = error.code()
    message = error.details() or code.name
    info = error_details_pb2.ErrorInfo()
    bad_request_detail = error_details_pb2.BadRequest()
    has_info = False
    rich = _rich_status(error)
    for detail in rich.details if rich is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            has_info = detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            detail.Unpack(bad_request_detail)
    extra: dict[str, Any] = {}
    for violation in bad_request_detail.field_violations[:1]:
        extra["field"] = violation.field
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        if has_info:  # the core's own timeout (WaitProgram), not our deadline on the call
            return ApiError(timeout_status, info.reason, message, **extra)
        return ApiError(504, "CORE_TIMEOUT", "the Host core did not answer in time")
    mapped = _STATUSES.get(code)
    if mapped is None:
        if code != grpc.StatusCode.CANCELLED:
            log.error("gRPC call failed with %s: %s", code.name, message)
        # Never leak the text of an unexpected failure to the client.
        return ApiError(500, "INTERNAL", "internal error; see the Host log")
    status, reason = mapped
    if has_info:
        reason = info.reason
    if code == grpc.StatusCode.INVALID_ARGUMENT and reason == TOO_LARGE_REASON:
        status = 413
    if code == grpc.StatusCode.OUT_OF_RANGE:
        status = out_of_range_status
        if "oldest_revision" in info.metadata:
            extra["oldest_revision"] = int(info.metadata["oldest_revision"])
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and reason == QUOTA_REASON:
        # A user's quota, not the Host running out: Too Many Requests, naming it.
        status = 429
        extra["quota"] = info.metadata.get("quota", "")
        for key in ("limit", "usage"):
            if info.metadata.get(key, "").isdigit():
                extra[key] = int(info.metadata[key])
    if code == grpc.StatusCode.FAILED_PRECONDITION and "state" in info.metadata:
        extra["state"] = state_label(info.metadata["state"])
    if code == grpc.StatusCode.UNAVAILABLE and not has_info:
        # The channel's own failure (the core is down or restarting).
        reason, message = "CORE_UNAVAILABLE", "the Host core is not reachable; try again"
    return ApiError(status, reason, message, **extra)


#: Names for the HTTP errors aiohttp raises itself (unknown route, wrong method, ...).
_HTTP_REASONS = {
    400: "BAD_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    413: TOO_LARGE_REASON,
    415: "UNSUPPORTED_MEDIA_TYPE",
}


def from_http_exception(error: web.HTTPException) -> ApiError:
    reason = _HTTP_REASONS.get(error.status, error.reason.upper().replace(" ", "_"))
    message = error.text if error.text and not error.text.startswith(f"{error.status}:") else ""
    if not message:
        message = {
            404: "no such route: see /openapi.json",
            405: "method not allowed on this route: see /openapi.json",
        }.get(error.status, error.reason)
    return ApiError(error.status, reason, message)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Renders every failure as the JSON error body, with no stack trace to the client."""
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()
    except grpc.aio.AioRpcError as error:
        return from_rpc_error(error).response()
    except web.HTTPException as error:
        if error.status < 400:
            raise
        headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        return from_http_exception(error).response(headers)
    except (ConnectionResetError, asyncio.CancelledError):
        raise  # the client went away: nobody to answer
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return ApiError(500, "INTERNAL", "internal error; see the Host log").response()
