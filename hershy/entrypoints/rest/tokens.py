"""Token routes: the REST face of `hershy.v1.TokenService`, for the dashboard and scripts.

`GET /whoami` says who the caller's token stands for (any token); listing,
creating and revoking tokens are the admin's (the core decides, as on gRPC).
A token's secret is in the answer to its creation only.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from hershy.domain.limits import MAX_SMALL_BODY_BYTES
from hershy.entrypoints.rest.auth import credentials
from hershy.entrypoints.rest.errors import bad_request, json_response
from hershy.entrypoints.rest.shapes import optional_time
from hershy.v1 import token_pb2
from hershy.v1 import token_pb2_grpc as token_grpc

TOKEN_NAME_PREFIX = "tokens/"
#: Deadline on the token calls: the core answers them at once.
CALL_TIMEOUT = 30.0
#: A create body is `{"user_id": ...}`; nothing bigger is read.
MAX_BODY_BYTES = MAX_SMALL_BODY_BYTES


def token_json(token: token_pb2.Token) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "token_id": token.id,
        "user_id": token.user_id,
        "admin": token.admin,
        "created_at": optional_time(token, "create_time"),
        "revoked_at": optional_time(token, "revoke_time"),
    }
    if token.secret:
        answer["secret"] = token.secret
    return answer


class TokenRoutes:
    def __init__(self, stub: token_grpc.TokenServiceAsyncStub) -> None:
        self._stub = stub

    def register(self, app: web.Application) -> None:
        add = app.router.add_route
        add("GET", "/whoami", self.whoami)
        add("GET", "/tokens", self.list_tokens)
        add("POST", "/tokens", self.create)
        add("DELETE", "/tokens/{token_id}", self.revoke)

    async def whoami(self, request: web.Request) -> web.Response:
        token = await self._stub.GetCurrentToken(
            token_pb2.GetCurrentTokenRequest(), metadata=credentials(request), timeout=CALL_TIMEOUT
        )
        return json_response({"user_id": token.user_id, "admin": token.admin})

    async def list_tokens(self, request: web.Request) -> web.Response:
        answer = await self._stub.ListTokens(
            token_pb2.ListTokensRequest(), metadata=credentials(request), timeout=CALL_TIMEOUT
        )
        return json_response({"tokens": [token_json(token) for token in answer.tokens]})

    async def create(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise bad_request("body", f"more than {MAX_BODY_BYTES} bytes")
        raw = await request.content.read(MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            raise bad_request("body", f"more than {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise bad_request("body", "not JSON") from None
        user_id = body.get("user_id") if isinstance(body, dict) else None
        if not isinstance(user_id, str):
            raise bad_request("user_id", "required, a string")
        token = await self._stub.CreateToken(
            token_pb2.CreateTokenRequest(user_id=user_id),
            metadata=credentials(request),
            timeout=CALL_TIMEOUT,
        )
        response = json_response(token_json(token), status=201)
        # The secret is shown once: no cache may keep it.
        response.headers["Cache-Control"] = "no-store"
        return response

    async def revoke(self, request: web.Request) -> web.Response:
        token = await self._stub.RevokeToken(
            token_pb2.RevokeTokenRequest(name=TOKEN_NAME_PREFIX + request.match_info["token_id"]),
            metadata=credentials(request),
            timeout=CALL_TIMEOUT,
        )
        return json_response(token_json(token))
