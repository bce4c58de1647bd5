"""`hershy deploy`'s build context: Docker's `.dockerignore` rules, and reading a folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hershy.entrypoints.cli_commands.build_context import (
    ContextError,
    IgnoreRules,
    compile_pattern,
    read_context,
)


def excluded(rules: str, path: str) -> bool:
    return IgnoreRules.parse(rules).excluded(path)


@pytest.mark.parametrize(
    ("rules", "path", "expected"),
    [
        # Plain names, rooted at the context; directories exclude what is under them.
        ("secret.txt", "secret.txt", True),
        ("secret.txt", "sub/secret.txt", False),
        ("build", "build/out/app", True),
        ("build/", "build/out/app", True),
        ("/build", "build/x", True),
        ("./build//", "build/x", True),
        ("a/../build", "build/x", True),
        # `*` and `?` stay within a segment; a matching parent counts.
        ("*.log", "a.log", True),
        ("*.log", "logs/a.log", False),
        ("*/*.log", "logs/a.log", True),
        ("foo*", "foobar/x", True),
        ("a?c", "abc", True),
        ("a?c", "a/c", False),
        # `**`: any number of directories, none included.
        ("**/*.log", "a.log", True),
        ("**/*.log", "x/y/a.log", True),
        ("docs/**/*.tmp", "docs/a.tmp", True),
        ("docs/**/*.tmp", "docs/a/b/c.tmp", True),
        ("docs/**", "docs", False),
        ("docs/**", "docs/a/b", True),
        ("**", "anything/at/all", True),
        # Classes and escapes.
        ("[xy]z", "xz", True),
        ("[xy]z", "zz", False),
        ("[^x]z", "yz", True),
        ("[^x]z", "xz", False),
        ("[a-c].txt", "b.txt", True),
        (r"\*.txt", "*.txt", True),
        (r"\*.txt", "a.txt", False),
        # Comments, blanks, whitespace.
        ("# secret.txt", "secret.txt", False),
        ("  secret.txt  ", "secret.txt", True),
        ("\n\n", "x", False),
        # Negation: the last matching line decides.
        ("*.log\n!keep.log", "keep.log", False),
        ("*.log\n!keep.log", "drop.log", True),
        ("!keep.log\n*.log", "keep.log", True),
        ("build\n!build/keep", "build/keep", False),
        ("build\n!build/keep", "build/other", True),
        ("*\n!app", "app", False),
        ("*\n!app", "Dockerfile.dev", True),
        ("sub\n!sub\nsub/deeper", "sub/deeper/x", True),
        ("!", "x", False),
    ],
)
def test_docker_ignore_rules(rules: str, path: str, expected: bool) -> None:
    assert excluded(rules, path) is expected


def test_comments_and_blank_lines_compile_to_nothing() -> None:
    assert compile_pattern("# comment") is None
    assert compile_pattern("   ") is None
    pattern = compile_pattern("!  keep.log ")
    assert pattern is not None
    assert pattern.negated
    assert pattern.text == "!keep.log"


def test_an_excluded_directory_is_walked_only_if_a_negation_may_reach_into_it() -> None:
    rules = IgnoreRules.parse("node_modules\nbuild\n!build/keep.txt\ncache\n!**/*.go")
    assert not IgnoreRules.parse("node_modules").may_include_under("node_modules")
    assert rules.may_include_under("build")
    assert rules.may_include_under("cache")  # `**` may reach anywhere
    only = IgnoreRules.parse("build\n!build/keep.txt")
    assert not only.may_include_under("node_modules")
    assert not only.may_include_under("build/sub")


def write(base: Path, files: dict[str, bytes]) -> None:
    for relative, content in files.items():
        path = base / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def test_read_context(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "Dockerfile": b"FROM scratch\nCOPY . /\n",
            ".dockerignore": b".git\nbuild\n!build/keep.txt\n**/*.pyc\n",
            "app": b"\x7fELF\x00\x01\xff",
            ".git/HEAD": b"ref\n",
            ".git/objects/aa/bb": b"x",
            "build/out.o": b"o",
            "build/keep.txt": b"keep",
            "pkg/mod.py": b"print(1)\n",
            "pkg/mod.pyc": b"\x00",
        },
    )
    os.symlink("app", tmp_path / "app-link")
    os.symlink("pkg", tmp_path / "pkg-link")
    os.mkfifo(tmp_path / "fifo")
    context = read_context(tmp_path)
    assert context.dockerfile == "FROM scratch\nCOPY . /\n"
    assert set(context.files) == {
        ".dockerignore",
        "app",
        "app-link",
        "build/keep.txt",
        "pkg/mod.py",
    }
    assert context.files["app"] == b"\x7fELF\x00\x01\xff"
    assert context.files["app-link"] == context.files["app"]
    assert ".git/" in context.ignored  # pruned whole
    assert "build/out.o" in context.ignored  # walked: a negation reaches into build/
    assert "pkg/mod.pyc" in context.ignored
    assert sorted(note.split(":")[0] for note in context.skipped) == ["fifo", "pkg-link"]
    assert context.size == len(context.dockerfile) + sum(map(len, context.files.values()))


def test_a_dockerignore_may_exclude_itself_but_never_the_dockerfile(tmp_path: Path) -> None:
    write(
        tmp_path, {"Dockerfile": b"FROM scratch\n", ".dockerignore": b".dockerignore\nDockerfile\n"}
    )
    context = read_context(tmp_path)
    assert context.files == {}
    assert context.dockerfile == "FROM scratch\n"


def test_what_is_not_a_context(tmp_path: Path) -> None:
    with pytest.raises(ContextError, match="no Dockerfile"):
        read_context(tmp_path)
    with pytest.raises(ContextError, match="not a folder"):
        read_context(tmp_path / "missing")
    (tmp_path / "Dockerfile").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ContextError, match="not UTF-8"):
        read_context(tmp_path)
