"""Tokens: made, checked, revoked; only hashes kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from hershy.adapters.sqlite_store import SqliteEventLog
from hershy.adapters.system import RandomIds
from hershy.domain.auth import TOKEN_PREFIX, hash_secret
from hershy.domain.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from hershy.service.auth import Authenticator, Principal
from tests.unit.test_supervisor import TestClock


@pytest.fixture
def store(tmp_path: Path) -> SqliteEventLog:
    log = SqliteEventLog(tmp_path)
    log.open()
    return log


async def test_the_admin_token_is_made_once_and_only_its_hash_is_kept(
    store: SqliteEventLog, tmp_path: Path
) -> None:
    auth = Authenticator(store, TestClock(), RandomIds())
    secret = await auth.ensure_admin()
    assert secret is not None
    assert secret.startswith(TOKEN_PREFIX)
    assert auth.authenticate(f"Bearer {secret}") == Principal("admin", admin=True)
    assert await auth.ensure_admin() is None  # a valid admin token exists: none is made
    database = (tmp_path / "hershy.db").read_bytes() + (tmp_path / "hershy.db-wal").read_bytes()
    assert secret.encode() not in database
    assert hash_secret(secret).encode() in database
    # A new Host on the same store knows the token.
    again = Authenticator(store, TestClock(), RandomIds())
    assert again.authenticate(f"bearer {secret}").admin


async def test_user_tokens_name_their_user_and_die_when_revoked(store: SqliteEventLog) -> None:
    auth = Authenticator(store, TestClock(), RandomIds())
    record, secret = await auth.create("alice")
    assert auth.authenticate(f"Bearer {secret}") == Principal("alice")
    revoked = await auth.revoke(record.id)
    assert revoked.revoked_at is not None
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        auth.authenticate(f"Bearer {secret}")
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        Authenticator(store, TestClock(), RandomIds()).authenticate(f"Bearer {secret}")
    with pytest.raises(NotFound):
        await auth.revoke("tok-nope")


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (None, "a token is required"),
        ("", "a token is required"),
        ("Basic dXNlcjpwYXNz", "Bearer"),
        ("Bearer", "Bearer"),
        ("Bearer hershy_not-a-real-token", "unknown or revoked"),
    ],
)
async def test_missing_and_malformed_tokens_are_refused(
    store: SqliteEventLog, header: str | None, problem: str
) -> None:
    auth = Authenticator(store, TestClock(), RandomIds())
    with pytest.raises(Unauthenticated, match=problem):
        auth.authenticate(header)


async def test_user_ids_are_checked_and_admin_is_reserved(store: SqliteEventLog) -> None:
    auth = Authenticator(store, TestClock(), RandomIds())
    with pytest.raises(InvalidArgument, match="user_id"):
        await auth.create("Not A User")
    with pytest.raises(InvalidArgument, match="reserved"):
        await auth.create("admin")
    with pytest.raises(PermissionDenied):
        Authenticator.require_admin(Principal("alice"))


async def test_no_auth_mode_treats_every_caller_as_the_admin(store: SqliteEventLog) -> None:
    auth = Authenticator(store, TestClock(), RandomIds(), enabled=False)
    assert auth.authenticate(None).admin
    assert await auth.ensure_admin() is None


async def test_revoking_a_token_tells_its_streams_and_listeners_and_nobody_else(
    store: SqliteEventLog,
) -> None:
    auth = Authenticator(store, TestClock(), RandomIds())
    alice, alice_secret = await auth.create("alice")
    _, bob_secret = await auth.create("bob")
    told: list[str] = []
    heard: list[str] = []
    auth.on_revoke(heard.append)
    alices = [auth.open_stream(f"Bearer {alice_secret}") for _ in range(2)]
    bobs = auth.open_stream(f"Bearer {bob_secret}")
    internal = auth.open_stream(f"Bearer {auth.internal_secret()}")
    closed_early = auth.open_stream(f"Bearer {alice_secret}")
    auth.close_stream(closed_early)

    def broken() -> None:
        raise RuntimeError("a stream that cannot be woken")

    alices[0].on_revoke = broken  # must not keep the other stream running
    alices[1].on_revoke = lambda: told.append("alice-1")
    closed_early.on_revoke = lambda: told.append("closed")
    bobs.on_revoke = lambda: told.append("bob")
    assert auth.open_streams == 3  # the Host's own token is never revoked: not followed
    await auth.revoke(alice.id)
    assert told == ["alice-1"]
    assert [grant.revoked for grant in (*alices, bobs, internal)] == [True, True, False, False]
    assert heard == [hash_secret(alice_secret)]
    assert auth.open_streams == 1
    with pytest.raises(Unauthenticated):
        auth.open_stream(f"Bearer {alice_secret}")
    auth.close_stream(bobs)
    assert auth.open_streams == 0
