"""A build context read from a folder, honouring its `.dockerignore` as Docker does.

The rules are Docker's (moby's patternmatcher), not `.gitignore`'s:

- one pattern a line; a line starting with `#` is a comment; blank lines and
  surrounding whitespace are ignored;
- patterns are relative to the folder (a leading `/` changes nothing) and
  cleaned like paths (`./a/`, `a//b/..` → `a`);
- `*` matches any run of characters but `/`, `?` one character but `/`,
  `[a-z]` / `[^a-z]` a class (of characters but `/`), `\\` escapes the next
  character, `**` any number of directories (zero included): `**/*.log` is
  every `.log` file anywhere;
- a pattern excludes a path when it matches the path or one of its parent
  directories (so `build` excludes everything under `build/`);
- `!pattern` re-includes what an earlier pattern excluded; the last pattern
  that matches a path decides.

The Dockerfile travels in its own field, so it is never among the files; the
`.dockerignore` itself is sent unless it excludes itself (as Docker does).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

DOCKERFILE = "Dockerfile"
DOCKERIGNORE = ".dockerignore"


class ContextError(Exception):
    """The folder cannot be sent as a build context (said in one sentence)."""


@dataclass(frozen=True, slots=True)
class Pattern:
    """One `.dockerignore` line, compiled."""

    text: str
    negated: bool
    regex: re.Pattern[str]
    #: The pattern's path segments, to tell whether it could match under a directory.
    segments: tuple[str, ...]

    def matches(self, path: str) -> bool:
        """True if the pattern matches `path` or one of its parent directories."""
        if self.regex.match(path):
            return True
        parts = path.split("/")
        return any(self.regex.match("/".join(parts[:i])) for i in range(1, len(parts)))


def _clean(pattern: str) -> str:
    """Like Go's filepath.Clean on a relative, slash-separated pattern."""
    absolute = pattern.startswith("/")
    parts: list[str] = []
    for part in pattern.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not absolute:
                parts.append(part)
            continue
        parts.append(part)
    return "/".join(parts) or "."


def _class(pattern: str, start: int) -> tuple[str, int] | None:
    """The regex for a `[...]` class starting at `start`, and where it ends; None if unclosed."""
    i = start + 1
    negate = i < len(pattern) and pattern[i] == "^"
    if negate:
        i += 1
    body = ""
    first = True
    while i < len(pattern):
        ch = pattern[i]
        if ch == "]" and not first:
            return "[" + ("^/" if negate else "") + body + "]", i + 1
        if ch == "\\" and i + 1 < len(pattern):
            body += re.escape(pattern[i + 1])
            i += 2
        else:
            body += "\\" + ch if ch in "\\[]^" else ch
            i += 1
        first = False
    return None


def compile_pattern(line: str) -> Pattern | None:
    """A `.dockerignore` line as a Pattern; None for comments and blank lines."""
    if line.startswith("#"):
        return None
    text = line.strip()
    if not text:
        return None
    negated = text.startswith("!")
    if negated:
        text = text[1:].strip()
        if not text:
            return None
    text = _clean(text)
    if text.startswith("/"):
        text = text.lstrip("/") or "."
    regex = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "*":
            if text.startswith("**", i):
                i += 2
                if i < len(text) and text[i] == "/":
                    i += 1
                # `**` at the end: everything (`a/**` is everything under `a`);
                # elsewhere any number of directories, none included.
                regex += ".*" if i >= len(text) else "(.*/)?"
                continue
            regex += "[^/]*"
        elif ch == "?":
            regex += "[^/]"
        elif ch == "\\" and i + 1 < len(text):
            i += 1
            regex += re.escape(text[i])
        elif ch == "[":
            found = _class(text, i)
            if found is None:
                regex += re.escape(ch)
            else:
                regex += found[0]
                i = found[1]
                continue
        else:
            regex += re.escape(ch)
        i += 1
    return Pattern(
        text=("!" if negated else "") + text,
        negated=negated,
        regex=re.compile(regex + r"\Z", re.DOTALL),
        segments=tuple(text.split("/")),
    )


def _segment_could_match(pattern_segment: str, name: str) -> bool:
    compiled = compile_pattern(pattern_segment)
    return compiled is not None and bool(compiled.regex.match(name))


@dataclass
class IgnoreRules:
    """The patterns of a `.dockerignore`, in order."""

    patterns: list[Pattern] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> IgnoreRules:
        lines = text.removeprefix("\ufeff").splitlines()
        return cls([p for p in (compile_pattern(line) for line in lines) if p is not None])

    def excluded(self, path: str) -> bool:
        """True if `path` (relative, `/`-separated) is left out of the context."""
        matched = False
        for pattern in self.patterns:
            if pattern.negated == matched and pattern.matches(path):
                matched = not pattern.negated
        return matched

    def may_include_under(self, directory: str) -> bool:
        """False when nothing under an excluded `directory` can be re-included by a `!`.

        Lets the walk skip a whole excluded tree (`.git`, `node_modules`)
        unless a negation could bring part of it back.
        """
        parts = directory.split("/")
        for pattern in self.patterns:
            if not pattern.negated:
                continue
            if self._prefix_could_match(pattern.segments, parts):
                return True
        return False

    @staticmethod
    def _prefix_could_match(segments: tuple[str, ...], parts: list[str]) -> bool:
        for index, part in enumerate(parts):
            if index >= len(segments):
                return True  # it matches a parent: everything under it comes back
            segment = segments[index]
            if "**" in segment:
                return True
            if not _segment_could_match(segment, part):
                return False
        return True


@dataclass
class BuildContext:
    """What `deploy` sends: the Dockerfile, and the other files by relative path."""

    dockerfile: str
    files: dict[str, bytes]
    #: Paths left out by `.dockerignore` (files and pruned directories), for the record.
    ignored: list[str]
    #: What could not be sent (symlinked directories, sockets...), with why.
    skipped: list[str]

    @property
    def size(self) -> int:
        return len(self.dockerfile.encode()) + sum(len(data) for data in self.files.values())


def read_context(folder: Path) -> BuildContext:
    """The folder's Dockerfile and files, less what its `.dockerignore` excludes.

    Files are read as bytes (binaries travel as they are); a symlink to a file
    is sent as the file it points to; a symlink to a directory, and anything
    that is not a regular file, is skipped and reported.
    """
    if not folder.is_dir():
        raise ContextError(f"{folder} is not a folder")
    dockerfile_path = folder / DOCKERFILE
    if not dockerfile_path.is_file():
        raise ContextError(f"{folder} has no {DOCKERFILE} at its top")
    try:
        dockerfile = dockerfile_path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ContextError(f"{dockerfile_path} is not UTF-8 text") from None
    ignore_path = folder / DOCKERIGNORE
    rules = IgnoreRules()
    if ignore_path.is_file():
        rules = IgnoreRules.parse(ignore_path.read_text(encoding="utf-8", errors="replace"))

    files: dict[str, bytes] = {}
    ignored: list[str] = []
    skipped: list[str] = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        base = Path(root).relative_to(folder).as_posix()
        prefix = "" if base == "." else base + "/"
        kept_dirs = []
        for name in sorted(dirs):
            relative = prefix + name
            full = Path(root) / name
            if full.is_symlink():
                if not rules.excluded(relative):
                    skipped.append(f"{relative}: a symlink to a directory (not followed)")
                continue
            if rules.excluded(relative) and not rules.may_include_under(relative):
                ignored.append(relative + "/")
                continue
            kept_dirs.append(name)
        dirs[:] = kept_dirs
        for name in sorted(names):
            relative = prefix + name
            if relative == DOCKERFILE:
                continue  # sent in its own field
            if rules.excluded(relative):
                ignored.append(relative)
                continue
            full = Path(root) / name
            try:
                info = full.stat()  # follows a symlink to the file it names
            except OSError as error:
                skipped.append(f"{relative}: {error.strerror or error}")
                continue
            if not stat.S_ISREG(info.st_mode):
                skipped.append(f"{relative}: not a regular file")
                continue
            try:
                files[relative] = full.read_bytes()
            except OSError as error:
                raise ContextError(f"cannot read {full}: {error.strerror or error}") from None
    return BuildContext(dockerfile, files, ignored, skipped)
