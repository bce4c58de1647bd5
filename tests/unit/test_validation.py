"""What a user may send to create a program."""

from __future__ import annotations

import pytest

from hershy.domain.errors import InvalidArgument, TooLarge
from hershy.domain.model import Resources
from hershy.domain.validation import (
    ResourcePolicy,
    SourceLimits,
    build_id,
    resolve_resources,
    validate_source,
    validate_user_id,
)

LIMITS = SourceLimits(max_file_bytes=100, max_total_bytes=150, max_files=3, max_path_depth=3)


@pytest.mark.parametrize("user_id", ["alice", "a", "bob-2", "x_y", "0day", "a" * 63])
def test_good_user_ids(user_id: str) -> None:
    assert validate_user_id(user_id) == user_id


@pytest.mark.parametrize("user_id", ["", "Alice", "-bob", "a b", "a/b", "é", "a" * 64, "a\x00"])
def test_bad_user_ids_name_the_field(user_id: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        validate_user_id(user_id)
    assert error.value.field == "user_id"


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("/etc/passwd", "relative"),
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("a//b", "empty segments"),
        ("./a", "'.'"),
        ("a/", "empty segments"),
        ("", "empty"),
        ("a\x00b", "NUL"),
        ("a\\b", "'/'"),
        ("a\nb", "control"),
        ("a/b/c/d", "deep"),
        ("x" * 300, "bytes"),
    ],
)
def test_bad_paths_are_refused_naming_the_file(path: str, problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem) as error:
        validate_source("FROM scratch", {path: b""}, LIMITS)
    assert error.value.field.startswith("src_files[")


def test_nested_paths_are_fine() -> None:
    source = validate_source("FROM scratch", {"a/b/c.txt": b"1", "d.txt": b"2"}, LIMITS)
    assert source.all_files() == {"Dockerfile": b"FROM scratch", "a/b/c.txt": b"1", "d.txt": b"2"}


def test_a_dockerfile_is_required_and_not_a_source_file() -> None:
    with pytest.raises(InvalidArgument, match="dockerfile: is required"):
        validate_source("  \n", {}, LIMITS)
    with pytest.raises(InvalidArgument, match="dockerfile field"):
        validate_source("FROM scratch", {"Dockerfile": b"x"}, LIMITS)


def test_size_limits_per_file_in_total_and_in_count() -> None:
    with pytest.raises(TooLarge, match="larger than 100"):
        validate_source("FROM scratch", {"big": b"x" * 101}, LIMITS)
    with pytest.raises(TooLarge, match="total more than 150"):
        validate_source("FROM scratch", {"a": b"x" * 80, "b": b"x" * 80}, LIMITS)
    with pytest.raises(TooLarge, match="at most 3"):
        validate_source("FROM scratch", {str(i): b"" for i in range(4)}, LIMITS)


def test_a_path_cannot_be_both_a_file_and_a_directory() -> None:
    with pytest.raises(InvalidArgument, match="also a directory"):
        validate_source("FROM scratch", {"a": b"", "a/b": b""}, LIMITS)


def test_build_id_depends_on_every_input_and_nothing_else() -> None:
    def bid(dockerfile: str, files: dict[str, bytes]) -> str:
        return build_id(validate_source(dockerfile, files, SourceLimits()))

    base = bid("FROM scratch", {"a": b"1", "b": b"2"})
    assert base == bid("FROM scratch", {"b": b"2", "a": b"1"})  # order does not matter
    assert base != bid("FROM scratch ", {"a": b"1", "b": b"2"})
    assert base != bid("FROM scratch", {"a": b"1", "b": b"3"})
    assert base != bid("FROM scratch", {"a": b"1", "c": b"2"})
    # The boundary between a path and its content cannot be shifted.
    assert bid("FROM scratch", {"ab": b"c"}) != bid("FROM scratch", {"a": b"bc"})


def test_resources_default_and_bounds() -> None:
    policy = ResourcePolicy()
    assert resolve_resources(0, 0, 0, policy) == policy.default
    assert resolve_resources(64 * 1024**2, 500, 0, policy) == Resources(64 * 1024**2, 500, 256)
    with pytest.raises(InvalidArgument, match=r"resources.milli_cpus: 5000 is outside"):
        resolve_resources(0, 5000, 0, policy)
    with pytest.raises(InvalidArgument, match=r"resources.pids: must not be negative"):
        resolve_resources(0, 0, -1, policy)
