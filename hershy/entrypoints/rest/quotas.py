"""`GET/PUT /users/{user_id}/quota`: per-user quotas, a translation onto QuotaService.

The admin reads and sets anyone's; a user may GET their own (the core decides
and answers 403 otherwise). PUT replaces every limit: a key left out or null
means no limit.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from aiohttp import web

from hershy.domain.errors import InvalidArgument
from hershy.domain.limits import MAX_SMALL_BODY_BYTES
from hershy.domain.quotas import QUOTA_NAMES
from hershy.domain.validation import validate_user_id
from hershy.entrypoints.rest.auth import credentials
from hershy.entrypoints.rest.errors import bad_request, json_response
from hershy.entrypoints.rest.uploads import read_body
from hershy.v1 import quota_pb2 as quota_pb
from hershy.v1 import quota_pb2_grpc as quota_grpc

CALL_TIMEOUT = 30.0
MAX_BODY_BYTES = MAX_SMALL_BODY_BYTES
_INT64_MAX = 2**63 - 1


def quota_name(request: web.Request) -> str:
    user_id = request.match_info["user_id"]
    try:
        validate_user_id(user_id, "user_id")
    except InvalidArgument as error:
        raise bad_request(error.field, error.description) from None
    return f"users/{user_id}/quota"


def quota_json(quota: quota_pb.UserQuota) -> dict[str, Any]:
    limits = {
        name: getattr(quota, f"max_{name}") if quota.HasField(f"max_{name}") else None  # type: ignore[arg-type]
        for name in QUOTA_NAMES
    }
    usage = {name: getattr(quota.usage, name) for name in QUOTA_NAMES}
    return {"user_id": quota.user_id, "limits": limits, "usage": usage}


def limits_from_json(body: bytes) -> dict[str, int | None]:
    try:
        data = json.loads(body or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise bad_request("body", "is not a JSON object") from None
    if not isinstance(data, dict):
        raise bad_request("body", "must be a JSON object of limits")
    limits: dict[str, int | None] = dict.fromkeys(QUOTA_NAMES)
    for key, value in data.items():
        if key not in limits:
            raise bad_request(key[:100], f"is not a limit: use {', '.join(QUOTA_NAMES)}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_request(key, "must be an integer, or null for no limit")
        if not 0 <= value <= _INT64_MAX:
            raise bad_request(key, "must be between 0 and 2^63-1 (null: no limit)")
        limits[key] = value
    return limits


class QuotaRoutes:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub: quota_grpc.QuotaServiceAsyncStub = quota_grpc.QuotaServiceStub(channel)

    def add_to(self, app: web.Application) -> None:
        app.router.add_route("GET", "/users/{user_id}/quota", self.get)
        app.router.add_route("PUT", "/users/{user_id}/quota", self.put)

    async def get(self, request: web.Request) -> web.Response:
        answer = await self._stub.GetUserQuota(
            quota_pb.GetUserQuotaRequest(name=quota_name(request)),
            metadata=credentials(request),
            timeout=CALL_TIMEOUT,
        )
        return json_response(quota_json(answer))

    async def put(self, request: web.Request) -> web.Response:
        name = quota_name(request)
        limits = limits_from_json(await read_body(request, MAX_BODY_BYTES))
        quota = quota_pb.UserQuota(name=name)
        for key, value in limits.items():
            if value is not None:
                setattr(quota, f"max_{key}", value)
        # An empty mask: every limit as given (unset: no limit).
        answer = await self._stub.UpdateUserQuota(
            quota_pb.UpdateUserQuotaRequest(quota=quota),
            metadata=credentials(request),
            timeout=CALL_TIMEOUT,
        )
        return json_response(quota_json(answer))
