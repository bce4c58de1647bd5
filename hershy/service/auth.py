"""Tokens: who calls, checked on every request.

The Host keeps only a hash of each token's secret. The admin's token is made
on the first start and shown once; the admin makes and revokes the users'
tokens. With `--no-auth` (loopback only) every caller is the admin.

A revocation is also an event: every stream opened with the token is told at
once (`open_stream`), and so are listeners such as the REST shim's proxy
(`on_revoke`), so nothing more is delivered on the strength of a dead token.

Who may see and do what is decided here too, for the gRPC API and the REST
shim's proxy alike: `Principal` and the rules below it. Another user's
program answers exactly like one that does not exist (NOT_FOUND).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from hershy.domain.auth import ADMIN_USER, TokenRecord, hash_secret
from hershy.domain.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from hershy.domain.model import Program
from hershy.domain.validation import cut, validate_user_id
from hershy.service.ports import Clock, IdGenerator, TokenStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: the user a token stands for, whether it is the admin's, and the token's id
    ("" for the Host's own token and with --no-auth; not part of who the caller is)."""

    user_id: str
    admin: bool = False
    token_id: str = field(default="", compare=False)

    def sees(self, owner: str) -> bool:
        """A user sees only their own programs (and quota); the admin sees everyone's."""
        return self.admin or owner == self.user_id

    @property
    def only_user(self) -> str | None:
        """The user whose programs a stream of this caller's may carry; None: everyone's."""
        return None if self.admin else self.user_id


#: The caller when the Host runs with --no-auth (loopback only).
NOBODY_CHECKED = Principal(ADMIN_USER, admin=True)


def principal_of(record: TokenRecord) -> Principal:
    return Principal(record.user_id, record.admin, record.id)


# --- the rules: who may see and do what ----------------------------------------------------------


def visible(caller: Principal, program: Program) -> Program:
    """The program, if the caller may see it; NOT_FOUND (as for a missing id) otherwise."""
    if not caller.sees(program.user_id):
        raise NotFound(f"program {program.id} not found")
    return program


def creator(caller: Principal, user_id: str) -> str:
    """Whom a program the caller creates belongs to ("": the caller's own user)."""
    owner = user_id or ("" if caller.admin else caller.user_id)
    if not caller.sees(owner):
        raise PermissionDenied(
            f"your token is {caller.user_id}'s: it cannot create programs for {cut(owner)}"
        )
    return owner


def listed_user(caller: Principal, user_id: str) -> str | None:
    """The user filter a list by the caller runs with ("": everyone's), or None when the
    caller may see none of what was asked (another user's programs: not even a count)."""
    if caller.admin:
        return user_id
    if user_id and user_id != caller.user_id:
        return None
    return caller.user_id


def require_quota_reader(caller: Principal, user_id: str) -> None:
    if not caller.sees(user_id):
        raise PermissionDenied(f"your token is {caller.user_id}'s: it reads only that quota")


def require_admin(caller: Principal, what: str = "manages tokens") -> None:
    if not caller.admin:
        raise PermissionDenied(f"only the admin's token {what}")


def parse_bearer(authorization: str | None) -> str:
    """The secret of an `authorization` value (`Bearer <secret>`), or UNAUTHENTICATED."""
    if not authorization:
        raise Unauthenticated("a token is required: send `authorization: Bearer <token>`")
    scheme, _, secret = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthenticated("send the token as `authorization: Bearer <token>`")
    return secret.strip()


def secret_hash_of(authorization: str | None) -> str | None:
    """What the Host knows a token by (the hash of its secret); None for no or a malformed one."""
    try:
        return hash_secret(parse_bearer(authorization))
    except Unauthenticated:
        return None


@dataclass(eq=False)
class StreamGrant:
    """A stream's standing: who opened it, and whether its token has been revoked since.

    `on_revoke` runs once, inside the revocation, to wake the stream so it ends
    (it must not block); the stream checks `revoked` before every message.
    """

    principal: Principal
    token_id: str
    revoked: bool = False
    on_revoke: Callable[[], None] | None = field(default=None, repr=False)

    def _revoke(self) -> None:
        self.revoked = True
        if self.on_revoke is not None:
            self.on_revoke()


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
        #: Open streams by the id of the token they were opened with.
        self._streams: dict[str, set[StreamGrant]] = {}
        #: Told the secret hash of every token revoked (the REST shim's proxy).
        self._listeners: list[Callable[[str], None]] = []

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller an `authorization` header or metadata value stands for."""
        if not self.enabled:
            return NOBODY_CHECKED
        return principal_of(self._record(authorization))

    def _record(self, authorization: str | None) -> TokenRecord:
        record = self._active.get(hash_secret(parse_bearer(authorization)))
        if record is None:
            raise Unauthenticated("the token is not valid (unknown or revoked)")
        return record

    def record_for(self, authorization: str | None) -> TokenRecord:
        """The token record a caller's header names (UNAUTHENTICATED as `authenticate`)."""
        if not self.enabled:  # --no-auth
            return TokenRecord("", "", NOBODY_CHECKED.user_id, NOBODY_CHECKED.admin, 0.0)
        record = self._record(authorization)
        if not record.id:  # the Host's own token
            return TokenRecord("", "", record.user_id, record.admin, 0.0)
        return record

    def open_stream(self, authorization: str | None) -> StreamGrant:
        """Authenticate a stream and follow its token: revoking it ends the stream.

        Pair with `close_stream` when the stream ends, however it ends.
        """
        if not self.enabled:
            return StreamGrant(NOBODY_CHECKED, "")
        record = self._record(authorization)
        grant = StreamGrant(principal_of(record), record.id)
        if record.id:  # the Host's own token (id "") is never revoked
            self._streams.setdefault(record.id, set()).add(grant)
        return grant

    def close_stream(self, grant: StreamGrant) -> None:
        streams = self._streams.get(grant.token_id)
        if streams is not None:
            streams.discard(grant)
            if not streams:
                del self._streams[grant.token_id]

    def on_revoke(self, listener: Callable[[str], None]) -> None:
        """Call `listener(secret_hash)` whenever a token is revoked (it must not block)."""
        self._listeners.append(listener)

    @property
    def open_streams(self) -> int:
        return sum(map(len, self._streams.values()))

    def internal_secret(self) -> str:
        """A token for the Host's own parts (the REST shim): admin, in memory, never stored."""
        _, secret = self._ids.new_token()
        record = TokenRecord("", hash_secret(secret), ADMIN_USER, True, self._clock.now())
        self._active[record.secret_hash] = record
        return secret

    @staticmethod
    def require_admin(principal: Principal) -> None:
        require_admin(principal)

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
            raise NotFound(f"token {cut(token_id)} not found")
        if record.revoked_at is not None:
            return record
        at = self._clock.now()
        await self._store.revoke_token(token_id, at)
        revoked = TokenRecord(
            record.id, record.secret_hash, record.user_id, record.admin, record.created_at, at
        )
        self._records[token_id] = revoked
        self._active.pop(record.secret_hash, None)
        for grant in self._streams.pop(token_id, set()):
            self._tell(grant._revoke)
        for listener in self._listeners:
            self._tell(functools.partial(listener, record.secret_hash))
        return revoked

    @staticmethod
    def _tell(callback: Callable[[], None]) -> None:
        """One stream or listener failing to wake must not keep the others running."""
        try:
            callback()
        except Exception:
            log.exception("a stream did not take its token's revocation")

    def tokens(self) -> list[TokenRecord]:
        return list(self._records.values())

    async def ensure_admin(self) -> str | None:
        """Make the admin's token if there is no valid one; returns its secret (show it once)."""
        if not self.enabled or any(r.admin for r in self._active.values()):
            return None
        _, secret = await self.create(ADMIN_USER, admin=True)
        return secret
