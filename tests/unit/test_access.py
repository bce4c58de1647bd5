"""One place decides access (service/auth.py): the rules gRPC and the proxy both ask."""

from __future__ import annotations

import pytest

from hershy.domain.errors import NotFound, PermissionDenied
from hershy.domain.model import Program, Resources, State
from hershy.service import auth as access
from hershy.service.auth import NOBODY_CHECKED, Principal

ALICE = Principal("alice", token_id="tok-a")
ADMIN = Principal("admin", admin=True, token_id="tok-root")


def program(user_id: str, program_id: str = "prog-1") -> Program:
    return Program(
        id=program_id,
        user_id=user_id,
        build_id="b-1",
        proxy_target="",
        created_at=0.0,
        updated_at=0.0,
        state=State.CREATED,
        resources=Resources(),
    )


def test_another_users_program_answers_exactly_like_a_missing_one() -> None:
    with pytest.raises(NotFound) as hidden:
        access.visible(ALICE, program("bob", "prog-7"))
    # What a missing id answers (Registry.get): the same words, nothing about bob.
    assert str(hidden.value) == "program prog-7 not found"
    assert "bob" not in str(hidden.value)
    assert access.visible(ALICE, program("alice")).id == "prog-1"
    assert access.visible(ADMIN, program("bob")).user_id == "bob"


def test_a_user_creates_only_for_themself_and_the_admin_must_name_the_user() -> None:
    assert access.creator(ALICE, "") == "alice"
    assert access.creator(ALICE, "alice") == "alice"
    with pytest.raises(PermissionDenied, match="cannot create programs for 'bob'"):
        access.creator(ALICE, "bob")
    assert access.creator(ADMIN, "bob") == "bob"
    assert access.creator(ADMIN, "") == "", "left to validation: the user id is required"


def test_a_list_shows_a_user_only_their_own_and_not_even_a_count_of_others() -> None:
    assert access.listed_user(ALICE, "") == "alice"
    assert access.listed_user(ALICE, "alice") == "alice"
    assert access.listed_user(ALICE, "bob") is None
    assert access.listed_user(ADMIN, "") == ""
    assert access.listed_user(ADMIN, "bob") == "bob"


def test_streams_and_quotas_follow_the_same_rule() -> None:
    assert ALICE.only_user == "alice"
    assert ADMIN.only_user is None
    assert NOBODY_CHECKED.only_user is None
    access.require_quota_reader(ALICE, "alice")
    with pytest.raises(PermissionDenied):
        access.require_quota_reader(ALICE, "bob")
    access.require_quota_reader(ADMIN, "bob")
    with pytest.raises(PermissionDenied, match="sets quotas"):
        access.require_admin(ALICE, "sets quotas")
    access.require_admin(ADMIN)


def test_the_token_id_says_which_token_not_who_calls() -> None:
    assert Principal("alice", token_id="tok-a") == Principal("alice", token_id="tok-b")
    assert Principal("alice") != Principal("alice", admin=True)
