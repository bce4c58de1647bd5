"""Tokens: who calls, checked on every request.

The Host keeps only a hash of each token's secret. The admin's token is made
on the first start and shown once; the admin makes and revokes the users'
tokens. With `--no-auth` (loopback only) every caller is the admin.
"""

from __future__ import annotations

from hershy.domain.auth import ADMIN_USER, NOBODY_CHECKED, Principal, TokenRecord, hash_secret
from hershy.domain.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from hershy.domain.validation import validate_user_id
from hershy.service.ports import Clock, IdGenerator, TokenStore


class Authenticator:
    def __init__(
        self, store: TokenStore, clock: Clock, ids: IdGenerator, *, enabled: bool = True
    ) -> None:
        self.enabled = enabled
        self._store = store
        self._clock = clock
        self._ids = ids
        self._records = {record.id: record for record in store.tokens()}
        self._active = {r.secret_hash: r for r in self._records.values() if r.revoked_at is None}

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller an `authorization` header or metadata value stands for."""
        if not self.enabled:
            return NOBODY_CHECKED
        if not authorization:
            raise Unauthenticated("a token is required: send `authorization: Bearer <token>`")
        scheme, _, secret = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthenticated("send the token as `authorization: Bearer <token>`")
        record = self._active.get(hash_secret(secret.strip()))
        if record is None:
            raise Unauthenticated("the token is not valid (unknown or revoked)")
        return record.principal

    def record_for(self, authorization: str | None) -> TokenRecord:
        """The token record a caller's header names (UNAUTHENTICATED as `authenticate`)."""
        principal = self.authenticate(authorization)
        _, _, secret = (authorization or "").strip().partition(" ")
        record = self._active.get(hash_secret(secret.strip()))
        if record is None:  # --no-auth, or the Host's own token
            return TokenRecord("", "", principal.user_id, principal.admin, 0.0)
        return record

    def internal_secret(self) -> str:
        """A token for the Host's own parts (the REST shim): admin, in memory, never stored."""
        _, secret = self._ids.new_token()
        record = TokenRecord("", hash_secret(secret), ADMIN_USER, True, self._clock.now())
        self._active[record.secret_hash] = record
        return secret

    @staticmethod
    def require_admin(principal: Principal) -> None:
        if not principal.admin:
            raise PermissionDenied("only the admin's token manages tokens")

    async def create(self, user_id: str, *, admin: bool = False) -> tuple[TokenRecord, str]:
        """A new token; its secret is returned here and never again."""
        if user_id == ADMIN_USER and not admin:
            raise InvalidArgument("user_id", f"{ADMIN_USER!r} is reserved for the admin")
        validate_user_id(user_id)
        token_id, secret = self._ids.new_token()
        record = TokenRecord(token_id, hash_secret(secret), user_id, admin, self._clock.now())
        await self._store.save_token(record)
        self._records[record.id] = record
        self._active[record.secret_hash] = record
        return record, secret

    async def revoke(self, token_id: str) -> TokenRecord:
        record = self._records.get(token_id)
        if record is None:
            raise NotFound(f"token {token_id} not found")
        if record.revoked_at is not None:
            return record
        at = self._clock.now()
        await self._store.revoke_token(token_id, at)
        revoked = TokenRecord(
            record.id, record.secret_hash, record.user_id, record.admin, record.created_at, at
        )
        self._records[token_id] = revoked
        self._active.pop(record.secret_hash, None)
        return revoked

    def tokens(self) -> list[TokenRecord]:
        return list(self._records.values())

    async def ensure_admin(self) -> str | None:
        """Make the admin's token if there is no valid one; returns its secret (show it once)."""
        if not self.enabled or any(r.admin for r in self._active.values()):
            return None
        _, secret = await self.create(ADMIN_USER, admin=True)
        return secret
