"""The build policy, pure: many spellings of every attack, and what it must still accept."""

from __future__ import annotations

import asyncio

import pytest

from hershy.adapters.docker.build import BuildQueue
from hershy.domain import events as ev
from hershy.domain import reducer
from hershy.domain.build_policy import (
    MAX_QUOTED_CHARS,
    BuildPolicy,
    check_dockerfile,
    expand,
)
from hershy.domain.errors import InvalidArgument
from hershy.domain.model import Program, State
from tests.manual_clock import settle

BASE = "hershy-busybox:latest"
POLICY = BuildPolicy({BASE: "sha256:" + "a4" * 32})
OTHER_TAG = "hershy/prog-0123abcd:b-0123456789abcdef"
OTHER_ID = "sha256:" + "7c" * 32


def refused(dockerfile: str) -> str:
    with pytest.raises(InvalidArgument) as caught:
        check_dockerfile(dockerfile.encode(), POLICY)
    assert caught.value.field == "dockerfile"
    return caught.value.message


@pytest.mark.parametrize(
    "dockerfile",
    [
        "FROM scratch\n",
        'FROM scratch\nCOPY app /app\nENTRYPOINT ["/app"]\n',
        f"FROM {BASE}\nRUN echo hi\n",
        "FROM hershy-busybox\nRUN echo implied latest\n",
        "from hershy-busybox:latest as Build\nrun true\nFROM build\n",
        f"ARG BASE={BASE}\nFROM $BASE\n",
        f"ARG BASE={BASE}\nFROM ${{BASE}} AS one\nFROM one AS two\nFROM scratch\n"
        "COPY --from=two /bin/busybox /b\nCOPY --from=0 /bin /c\n",
        "ARG V=hershy-busybox\nARG T=latest\nFROM ${V}:${T}\n",
        "FROM scratch\nENV DIR=app\nCOPY ${DIR}/run /run\nADD $DIR /x\n",
        f"ARG D=app\nFROM {BASE}\nARG D\nCOPY $D /x\n",
        "# escape=`\nFROM scratch\nCOPY a `\n  /b\n",
        "# syntax=docker/dockerfile:1\nFROM scratch\n",
        "FROM scratch\nCOPY a \\\n  b \\\n  /c/\n",
        "FROM scratch\n# a comment \\\nCOPY a /a\n",
        'FROM scratch\nCOPY ["a b", "/c"]\n',
        "\n\nFROM scratch\n\n# done\n",
        "FROM scratch\r\nCOPY a /a\r\n",
        "FROM scratch\nCOPY --chown=1:1 a /a\n",
        'FROM scratch\nENV A=1 B="two words"\nLABEL x=y\nWORKDIR /w\nUSER 1000\n',
    ],
)
def test_what_is_allowed_is_accepted(dockerfile: str) -> None:
    check_dockerfile(dockerfile.encode(), POLICY)


def test_the_plan_names_the_allowlisted_base_images_used() -> None:
    plan = check_dockerfile(b"FROM hershy-busybox AS a\nFROM a\nFROM scratch\n", POLICY)
    assert plan.base_images == {BASE}
    assert check_dockerfile(b"FROM scratch\n", POLICY).base_images == frozenset()


@pytest.mark.parametrize(
    ("dockerfile", "line"),
    [
        (f"FROM {OTHER_TAG}\n", 1),
        (f"FROM {OTHER_ID}\n", 1),
        (f"FROM {OTHER_ID.removeprefix('sha256:')}\n", 1),
        ("FROM 7c7c7c7c7c7c\n", 1),
        ("FROM 7c7c\n", 1),
        (f"FROM hershy/prog-0123abcd@{OTHER_ID}\n", 1),
        (f"FROM hershy-busybox@{OTHER_ID}\n", 1),
        (f"ARG X={OTHER_TAG}\nFROM $X\n", 2),
        ("ARG X=7c7c\nFROM ${X}\n", 2),
        ("ARG X\nFROM $X\n", 2),
        ("FROM $UNDECLARED\n", 1),
        (f"FROM scratch\nFROM {OTHER_TAG} AS y\nFROM y\n", 2),
        (f"FROM scratch AS y\nFROM {OTHER_TAG}\n", 2),
        ("FROM y\nFROM scratch AS y\n", 1),
        ("FROM --platform=linux/amd64 scratch\n", 1),
        ("FROM docker.io/library/hershy-busybox:latest\n", 1),
        ("FROM hershy-busybox:other\n", 1),
        ("FROM SCRATCH\n", 1),
        (f"FROM scratch\nRUN true\nFROM \\\n  {OTHER_TAG}\n", 3),
        (f"# escape=`\nFROM scratch\nFROM `\n {OTHER_TAG}\n", 3),
        (f"FROM ${{X:-{OTHER_TAG}}}\n", 1),
    ],
)
def test_every_spelling_of_a_foreign_base_is_refused_naming_the_line(
    dockerfile: str, line: int
) -> None:
    message = refused(dockerfile)
    assert message.startswith(f"dockerfile: line {line}: ")


@pytest.mark.parametrize(
    "source",
    [
        "http://127.0.0.1:9000/programs",
        "https://example.com/x",
        "HTTP://127.0.0.1/x",
        "git://github.com/a/b.git",
        "git@github.com:a/b.git",
        "github.com/a/b",
        "ftp://host/x",
        "ssh://git@host/x",
        "'http://127.0.0.1/x'",
        '"http://127.0.0.1/x"',
        "http\\://127.0.0.1/x",
    ],
)
@pytest.mark.parametrize("instruction", ["ADD", "COPY"])
def test_no_remote_source_of_any_scheme(instruction: str, source: str) -> None:
    message = refused(f"FROM scratch\n{instruction} {source} /x\n")
    assert message.startswith("dockerfile: line 2: ")
    assert "nothing remote" in message


@pytest.mark.parametrize(
    "dockerfile",
    [
        'FROM scratch\nADD ["http://127.0.0.1/x", "/x"]\n',
        "FROM scratch\nENV U=http://127.0.0.1/x\nADD $U /x\n",
        "FROM scratch\nARG U=http://127.0.0.1/x\nADD ${U} /x\n",
        "ARG H=127.0.0.1\nFROM scratch\nARG H\nADD http://$H/x /x\n",
        "FROM scratch\nADD a \\\n  http://127.0.0.1/x /x\n",
        "FROM scratch\nENV P=http S=://127.0.0.1/\nADD ${P}${S} /x\n",
    ],
)
def test_remote_sources_hidden_in_variables_json_or_continuations(dockerfile: str) -> None:
    assert "nothing remote" in refused(dockerfile)


@pytest.mark.parametrize(
    "dockerfile",
    [
        "FROM scratch\nADD $HOME/x /x\n",  # an ENV of the base image: unknowable
        "FROM scratch\nARG NOVALUE\nCOPY $NOVALUE /x\n",
        "FROM scratch\nCOPY ${A:?x} /x\n",
        "FROM scratch\nCOPY ${A/x/y} /x\n",
        "FROM scratch\nCOPY 'unterminated /x\n",
    ],
)
def test_sources_the_policy_cannot_decide_are_refused(dockerfile: str) -> None:
    assert "cannot decide" in refused(dockerfile)


@pytest.mark.parametrize(
    "flag",
    [
        f"--from={OTHER_TAG}",
        f"--from={OTHER_ID}",
        "--from=7c7c",
        f"--from={BASE}",
        "--from=hershy-busybox",
        "--from=0",  # the current stage, not an earlier one
        "--from=later",
        "--from=$X",
    ],
)
def test_copy_from_an_image_is_refused(flag: str) -> None:
    message = refused(f"FROM scratch\nCOPY {flag} /etc/passwd /x\nFROM scratch AS later\n")
    assert message.startswith("dockerfile: line 2: ")
    assert "earlier stage" in message


@pytest.mark.parametrize(
    "dockerfile",
    [
        "FROM scratch\nONBUILD RUN true\n",
        f"FROM scratch\nonbuild FROM {OTHER_TAG}\n",
        "FROM scratch\nONBUILD ADD http://127.0.0.1/x /x\n",
    ],
)
def test_onbuild_is_refused(dockerfile: str) -> None:
    assert "ONBUILD is not allowed" in refused(dockerfile)


@pytest.mark.parametrize(
    ("dockerfile", "reason"),
    [
        ("FROM scratch\nCOPY a b \\\n\nRUN http://127.0.0.1/x /y\n", "empty line"),
        ("FROM scratch\nCOPY a b \\\n", "cannot be parsed"),
        ("FROM scratch\nADD\\\nhttp://127.0.0.1/x /y\n", "unknown instruction"),
        ("# escape=`\n# escape=\\\nFROM scratch\n", "only one escape directive"),
        (" # escape=`\nFROM scratch\n", "unsupported parser directive"),
        ("# foo=bar\nFROM scratch\n", "unsupported parser directive"),
        ("FROM scratch\rADD http://127.0.0.1/x /y\n", "control characters"),
        ("FROM scratch\nRUN true\x00\n", "control characters"),
        ("\ufeffFROM scratch\n", "control characters"),
        ("FROM scratch\nRUN --network=host true\n", "no flags"),
        ("FROM scratch\nCOPY --chmod=777 a /a\n", "does not take"),
        ("FROM scratch\nADD --from=0 a /a\n", "does not take"),
        ("FROM scratch\nFETCH a\n", "unknown instruction"),
        ("RUN true\nFROM scratch\n", "only ARG may come before"),
        ("# only a comment\n", "no FROM"),
        ("", "no FROM"),
        ("FROM scratch\nCOPY /a\n", "at least one source"),
    ],
)
def test_what_docker_might_read_differently_is_refused(dockerfile: str, reason: str) -> None:
    assert reason in refused(dockerfile)


def test_a_dockerfile_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"line 2: .*UTF-8"):
        check_dockerfile(b"FROM scratch\nRUN \xff\n", POLICY)


def test_the_quoted_line_is_bounded() -> None:
    message = refused(f"FROM {OTHER_TAG}{'x' * 5000}\n")
    quoted = message.split(": ", 2)[2]
    assert len(quoted) < MAX_QUOTED_CHARS + 200
    assert "x" * (MAX_QUOTED_CHARS + 1) not in message


def test_an_empty_allowlist_allows_only_scratch_and_stages() -> None:
    empty = BuildPolicy({})
    check_dockerfile(b"FROM scratch AS a\nFROM a\n", empty)
    with pytest.raises(InvalidArgument, match="allows \\(none\\)"):
        check_dockerfile(f"FROM {BASE}\n".encode(), empty)


@pytest.mark.parametrize(
    ("word", "value"),
    [
        ("$A", "1"),
        ("${A}b", "1b"),
        ("'$A'", "$A"),
        ('"$A"', "1"),
        ("\\$A", "$A"),
        ("${A:+set}", "set"),
        ("${E:-dflt}", "dflt"),
        ("${E:+set}", ""),
        ("a$", "a$"),
        ('"a\\b"', "a\\b"),
    ],
)
def test_expansion_follows_dockers_lexer(word: str, value: str) -> None:
    assert expand(word, {"A": "1", "E": ""}) == value


def test_expansion_with_the_backtick_escape() -> None:
    assert expand("`$A", {"A": "1"}, "`") == "$A"
    assert expand("a\\b", {}, "`") == "a\\b"


# --- the build queue ---------------------------------------------------------------------------


async def test_the_queue_bounds_builds_and_takes_users_in_turn() -> None:
    queue = BuildQueue(slots=2, per_user=1)
    order: list[str] = []
    positions: dict[str, list[int]] = {}
    release = asyncio.Event()

    async def build(name: str, user: str) -> None:
        async with queue.slot(user, lambda place: positions.setdefault(name, []).append(place)):
            order.append(name)
            assert queue.running <= 2
            await release.wait()

    async with asyncio.TaskGroup() as tasks:
        for index in range(4):
            tasks.create_task(build(f"flood{index}", "flooder"))
            await settle()
        tasks.create_task(build("other", "other"))
        await settle()
        # One of the flood and the other user's: the flood cannot take both slots.
        assert order == ["flood0", "other"]
        assert positions["flood3"][0] == 3
        release.set()
    assert sorted(order) == sorted(["flood0", "flood1", "flood2", "flood3", "other"])


async def test_a_cancelled_wait_gives_its_place_up() -> None:
    queue = BuildQueue(slots=1, per_user=1)
    hold = asyncio.Event()

    async def first() -> None:
        async with queue.slot("a", lambda _: None):
            await hold.wait()

    async def waiting() -> None:
        async with queue.slot("b", lambda _: None):
            pass

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(first())
        await settle()
        waiter = tasks.create_task(waiting())
        await settle()
        waiter.cancel()
        await settle()
        hold.set()
    assert queue.running == 0
    async with queue.slot("c", lambda _: None):
        assert queue.running == 1


# --- the queue's place, in the program -----------------------------------------------------


def building() -> Program:
    return Program("p1", "alice", "b-1", "127.0.0.1:19001", 0.0, 0.0, state=State.BUILDING, run=1)


def test_a_queued_build_notes_its_place_and_the_note_goes_with_the_state() -> None:
    queued = reducer.reduce(building(), ev.BuildQueued(1.0, 1, 2))
    assert isinstance(queued, reducer.Transition)
    assert queued.program.note == "build queued: 2 ahead"
    assert queued.program.state is State.BUILDING
    running = reducer.reduce(queued.program, ev.BuildQueued(2.0, 1, 0))
    assert isinstance(running, reducer.Transition)
    assert running.program.note == ""
    built = reducer.reduce(queued.program, ev.BuildSucceeded(3.0, 1, "sha256:x"))
    assert isinstance(built, reducer.Transition)
    assert built.program.state is State.STARTING
    assert built.program.note == ""


def test_queue_news_of_an_old_run_or_another_state_is_ignored() -> None:
    assert isinstance(reducer.reduce(building(), ev.BuildQueued(1.0, 0, 2)), reducer.Ignored)
    stopped = Program("p1", "alice", "b-1", "127.0.0.1:19001", 0.0, 0.0, state=State.STOPPED, run=1)
    assert isinstance(reducer.reduce(stopped, ev.BuildQueued(1.0, 1, 2)), reducer.Ignored)
