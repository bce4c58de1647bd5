"""Who calls the REST API: the client's `Authorization` header, passed on to the core.

The core decides on every gRPC call (tokens, and who sees which program); the
shim only carries the header along. The proxy is the exception: it answers
from its cache without calling the core, so it learns who a token stands for
from the core (GetCurrentToken) and remembers it for a few seconds, or until
the core says the token was revoked (`forget`).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict

from aiohttp import web

from hershy.entrypoints.rest.errors import unauthenticated
from hershy.service.auth import Principal, secret_hash_of
from hershy.v1 import token_pb2
from hershy.v1 import token_pb2_grpc as token_grpc

Metadata = tuple[tuple[str, str], ...]


def credentials(request: web.Request) -> Metadata:
    """gRPC metadata carrying the caller's `Authorization` header, if there is one."""
    value = request.headers.get("Authorization")
    if value is None:
        return ()
    # gRPC metadata is printable ASCII; anything else cannot be a token anyway.
    if not value.isascii() or not value.isprintable():
        raise unauthenticated("the Authorization header is malformed: send `Bearer <token>`")
    return (("authorization", value),)


def token_key(metadata: Metadata) -> str:
    """What the shim knows a caller's token by while a request runs: the core's hash of
    its secret (so a revocation, which names that hash, finds it), never the token."""
    value = metadata[0][1] if metadata else ""
    return secret_hash_of(value) or "malformed:" + hashlib.sha256(value.encode()).hexdigest()


def bearer(token: str | None) -> Metadata:
    return (("authorization", f"Bearer {token}"),) if token else ()


class Principals:
    """token -> Principal, asked of the core at most once per token per `ttl` seconds.

    A revoked token still opens the proxy for at most `ttl` seconds (none at
    all when the core tells the shim of the revocation: `forget`); every other
    route asks the core each time.
    """

    def __init__(
        self, stub: token_grpc.TokenServiceAsyncStub, ttl: float, capacity: int = 10_000
    ) -> None:
        self._stub = stub
        self._ttl = ttl
        self._capacity = capacity
        # Keyed by a hash: the shim keeps no token longer than a request.
        self._known: OrderedDict[str, tuple[float, Principal]] = OrderedDict()

    def forget(self, key: str) -> None:
        """The token was revoked: ask the core again next time (it will refuse)."""
        self._known.pop(key, None)

    def cached(self, key: str) -> Principal | None:
        """Who the token with this key (auth.token_key) stands for, if known and fresh."""
        known = self._known.get(key)
        return known[1] if known is not None and known[0] > time.monotonic() else None

    async def resolve(self, request: web.Request) -> Principal:
        metadata = credentials(request)
        if not metadata:
            raise unauthenticated("a token is required: send `Authorization: Bearer <token>`")
        return await self.resolve_metadata(metadata)

    async def resolve_metadata(self, metadata: Metadata) -> Principal:
        """As `resolve`, for credentials already taken from a request."""
        key = token_key(metadata)
        now = time.monotonic()
        known = self._known.get(key)
        if known is not None and known[0] > now:
            return known[1]
        token = await self._stub.GetCurrentToken(
            token_pb2.GetCurrentTokenRequest(), metadata=metadata, timeout=10
        )
        # The core's own Principal and rules: the proxy decides as gRPC does.
        principal = Principal(token.user_id, token.admin, token.id)
        self._known[key] = (now + self._ttl, principal)
        self._known.move_to_end(key)
        while len(self._known) > self._capacity:
            self._known.popitem(last=False)
        return principal
