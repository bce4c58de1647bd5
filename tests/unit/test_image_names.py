"""Images carry no labels of ours (each would be a build step): their tags say whose they are."""

from __future__ import annotations

import re

import pytest

from hershy.adapters.docker.image_names import (
    host_images,
    host_part,
    image_tag,
    parse_tag,
    program_images,
    tags_of,
    user_images,
)
from hershy.domain import limits
from hershy.domain.build_policy import BuildPolicy, check_dockerfile

#: Docker's reference grammar for a name with a tag (distribution/reference).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAGGED = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*:[\w][\w.-]{{0,127}}")


def test_a_tag_names_the_program_the_build_the_host_and_the_user() -> None:
    tag = image_tag("0a1b2c3d4e5f", "alice", "prog-1", "b-123")
    assert tag == "hershy/prog-1:b-123.0a1b2c3d4e5f.alice"
    assert parse_tag("0a1b2c3d4e5f", tag) == ("prog-1", "b-123", "alice")
    assert parse_tag("ffffffffffff", tag) is None  # another Host's
    assert parse_tag("0a1b2c3d4e5f", "hershy-busybox:latest") is None
    assert parse_tag("0a1b2c3d4e5f", "hershy/prog-1:b-123") is None  # no host, no user


@pytest.mark.parametrize("user_id", ["a", "alice", "a_b", "a-", "a__b", "0-_-0", "z" * 63, ""])
def test_every_user_id_gives_a_valid_tag_that_parses_back(user_id: str) -> None:
    if user_id:
        assert re.fullmatch(limits.USER_ID_PATTERN, user_id)
    for host in ("0a1b2c3d4e5f", "default", "Not A Host.id/x"):
        tag = image_tag(host, user_id, "prog-" + "a" * 57, "b-" + "f" * 24)
        assert _TAGGED.fullmatch(tag), tag
        assert parse_tag(host, tag) == ("prog-" + "a" * 57, "b-" + "f" * 24, user_id)


def test_a_host_id_that_cannot_go_in_a_tag_is_digested_apart() -> None:
    assert host_part("0a1b2c3d4e5f") == "0a1b2c3d4e5f"
    assert host_part("a.b") != host_part("a-b")
    assert re.fullmatch(r"[a-z0-9]+", host_part("a.b"))


def test_the_list_filters_match_by_tag_only_what_they_name() -> None:
    # Docker matches `reference` with Go's path.Match, whose `*` never crosses a `/`.
    def matches(pattern: str, tag: str) -> bool:
        return re.fullmatch(re.escape(pattern).replace(r"\*", "[^/]*"), tag) is not None

    alice_1 = image_tag("h1", "alice", "prog-1", "b-1")
    alice_10 = image_tag("h1", "alice", "prog-10", "b-1")
    bob_1 = image_tag("h1", "bob", "prog-1", "b-2")
    alice_bob = image_tag("h1", "alice-bob", "prog-3", "b-1")
    other_host = image_tag("h2", "alice", "prog-1", "b-1")
    # A user id equal to the host id: the host is the part before the last one.
    user_h1 = image_tag("h2", "h1", "prog-1", "b-1")
    everything = (alice_1, alice_10, bob_1, alice_bob, other_host, user_h1)
    (mine,) = host_images("h1")["reference"]
    assert [matches(mine, t) for t in everything] == [True, True, True, True, False, False]
    (alice,) = user_images("h1", "alice")["reference"]
    assert [matches(alice, t) for t in everything] == [True, True, False, False, False, False]
    (program,) = program_images("h1", "prog-1")["reference"]
    assert [matches(program, t) for t in everything] == [True, False, True, False, False, False]


def test_only_this_hosts_tags_of_an_image_are_its() -> None:
    image = {"RepoTags": ["hershy-busybox:latest", image_tag("h", "a", "p", "b"), "<none>:<none>"]}
    assert tags_of("h", image) == [image_tag("h", "a", "p", "b")]
    assert tags_of("h", {"RepoTags": None}) == []


@pytest.mark.parametrize(
    ("dockerfile", "has_steps"),
    [
        ("FROM scratch\n", False),
        ("FROM scratch AS a\nCOPY x /x\nFROM a\n", False),
        ("ARG A=1\nFROM scratch\n", False),
        ('FROM scratch\nCMD ["/x"]\n', True),
        ("FROM scratch\n# a comment\nARG B\n", True),
    ],
)
def test_the_plan_says_whether_the_last_stage_makes_an_image_of_its_own(
    dockerfile: str, has_steps: bool
) -> None:
    # Without a step after its FROM the legacy builder makes no image of the program's
    # own: the build then gives it labels (the steps that make one).
    plan = check_dockerfile(dockerfile.encode(), BuildPolicy({}))
    assert plan.final_stage_has_steps is has_steps
