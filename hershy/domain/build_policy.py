"""The build policy: what a Dockerfile may start from and fetch, decided before Docker sees it.

Pure: the same Dockerfile and allowlist always give the same answer. Docker's
legacy builder resolves any name it is given (another tenant's image tag, a
full image id, a 4-hex-digit id prefix, a digest), and its ADD fetches URLs
from the Host's own network namespace; so a Dockerfile may start only from
`scratch`, an earlier stage of itself, or a base image on the Host's
allowlist, may copy only from earlier stages, and may add only files of its
build context. What the policy cannot decide is refused.

The Dockerfile is split into instructions by `dockerfile-parse` (line
continuations, comments, the escape directive); on top of that this module
refuses every spelling where that split and Docker's could differ (lines the
parser skipped, empty continuation lines, directives it might read
otherwise), and expands ARG/ENV variables the way Docker's shell lexer does,
refusing any variable whose value it cannot know.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from dockerfile_parse import DockerfileParser  # type: ignore[import-untyped]

from hershy.domain.errors import InvalidArgument

FIELD = "dockerfile"
#: How much of an offending line an error quotes.
MAX_QUOTED_CHARS = 120
SCRATCH = "scratch"

#: Every instruction Docker's legacy builder knows.
KNOWN_INSTRUCTIONS = frozenset(
    {
        "ADD",
        "ARG",
        "CMD",
        "COPY",
        "ENTRYPOINT",
        "ENV",
        "EXPOSE",
        "FROM",
        "HEALTHCHECK",
        "LABEL",
        "MAINTAINER",
        "ONBUILD",
        "RUN",
        "SHELL",
        "STOPSIGNAL",
        "USER",
        "VOLUME",
        "WORKDIR",
    }
)
_COPY_FLAGS = {"ADD": frozenset({"chown"}), "COPY": frozenset({"chown", "from"})}
_STAGE_NAME = re.compile(r"[a-z][a-z0-9_.-]*")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DIRECTIVE_LIKE = re.compile(r"\s*#\s*[A-Za-z][A-Za-z0-9]*\s*=")
_ESCAPE_DIRECTIVE = re.compile(r"#[ \t]*escape[ \t]*=[ \t]*([\\`])[ \t]*", re.IGNORECASE)
_SYNTAX_DIRECTIVE = re.compile(r"#[ \t]*syntax[ \t]*=.*", re.IGNORECASE)
_COMMENT = "COMMENT"
# Line breaks Python or Docker could see where the other does not, and other control bytes.
_BAD_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029\ufeff]")


@dataclass(frozen=True, slots=True)
class BuildPolicy:
    """The Host's base-image allowlist: each allowed name and the image id it resolved to."""

    base_images: Mapping[str, str]

    @property
    def names(self) -> str:
        return ", ".join(sorted(self.base_images)) or "none"


@dataclass(frozen=True, slots=True)
class BuildPlan:
    """What an accepted Dockerfile uses: the allowlisted base images it starts from."""

    base_images: frozenset[str]
    #: Whether the last stage has an instruction after its FROM: without one Docker's
    #: legacy builder makes no image of its own ("No image was generated").
    final_stage_has_steps: bool = True


class _Unresolvable(Exception):
    """A variable whose value the policy cannot know (Docker would substitute something)."""


@dataclass
class _Stage:
    env: dict[str, str | None] = field(default_factory=dict)
    args: dict[str, str | None] = field(default_factory=dict)

    def scope(self) -> dict[str, str | None]:
        # ENV wins over ARG of the same name, as in Docker.
        return {**self.args, **self.env}


def refusal(line: int, text: str, reason: str) -> InvalidArgument:
    """The one shape of a refusal: the line's number and (bounded) text, and why."""
    shown = " ".join(text.split())
    if len(shown) > MAX_QUOTED_CHARS:
        shown = shown[: MAX_QUOTED_CHARS - 3] + "..."
    return InvalidArgument(FIELD, f"line {line}: {shown!r}: {reason}")


def check_dockerfile(dockerfile: bytes, policy: BuildPolicy) -> BuildPlan:
    """Accept the Dockerfile (and say which base images it uses) or raise `InvalidArgument`."""
    try:
        text = dockerfile.decode("utf-8")
    except UnicodeDecodeError as error:
        number = dockerfile[: error.start].count(b"\n") + 1
        raise refusal(number, "", "the Dockerfile must be UTF-8") from None
    physical = text.split("\n")
    for number, line in enumerate(physical, 1):
        if _BAD_CHARACTERS.search(line.removesuffix("\r")):
            raise refusal(number, line, "control characters are not allowed in a Dockerfile")
    escape = _escape_character(physical)
    parser = DockerfileParser(fileobj=io.BytesIO(dockerfile))
    entries: list[dict[str, object]] = list(parser.structure)
    _check_coverage(physical, entries, escape)
    return _Walker(policy, escape).walk(entries, physical)


def _escape_character(lines: list[str]) -> str:
    """The escape directive, read exactly as Docker reads it; anything doubtful is refused."""
    escape = "\\"
    seen_escape = False
    for number, raw in enumerate(lines, 1):
        line = raw.removesuffix("\r")
        if not _DIRECTIVE_LIKE.match(line):
            break
        if match := _ESCAPE_DIRECTIVE.fullmatch(line):
            if seen_escape:
                raise refusal(number, line, "only one escape directive is allowed")
            seen_escape, escape = True, match.group(1)
        elif not _SYNTAX_DIRECTIVE.fullmatch(line):
            raise refusal(
                number, line, "unsupported parser directive (only `# escape=\\` or `# escape=``)"
            )
    return escape


def _check_coverage(lines: list[str], entries: list[dict[str, object]], escape: str) -> None:
    """Every line belongs to an instruction or a comment, and no instruction ends mid-continuation.

    Where the parser skipped a line or ended an instruction at an empty line,
    Docker may see something else: that is refused, not guessed.
    """
    covered: set[int] = set()
    for entry in entries:
        start, end = int(str(entry["startline"])), int(str(entry["endline"]))
        covered.update(range(start, end + 1))
        if entry["instruction"] == _COMMENT:
            continue
        content = [row for row in str(entry["content"]).split("\n") if row.strip()]
        if content and content[-1].rstrip().endswith(escape):
            raise refusal(
                start + 1,
                content[0],
                "a line continuation must not be followed by an empty line or the end of the file",
            )
    for index, line in enumerate(lines):
        if line.strip() and index not in covered:
            raise refusal(index + 1, line, "this line cannot be parsed as an instruction")


class _Walker:
    def __init__(self, policy: BuildPolicy, escape: str) -> None:
        self.policy = policy
        self.escape = escape
        self.meta_args: dict[str, str | None] = {}
        self.stage: _Stage | None = None
        self.stages: list[_Stage] = []
        self.stage_names: dict[str, int] = {}
        self.base_images: set[str] = set()
        self.steps_in_stage = 0

    def walk(self, entries: list[dict[str, object]], lines: list[str]) -> BuildPlan:
        for entry in entries:
            instruction = str(entry["instruction"])
            if instruction == _COMMENT:
                continue
            number = int(str(entry["startline"])) + 1
            value = str(entry["value"] or "")
            text = f"{instruction} {value}"
            if instruction not in KNOWN_INSTRUCTIONS:
                raise refusal(number, text, f"unknown instruction {instruction[:40]!r}")
            if self.stage is None and instruction not in ("ARG", "FROM"):
                raise refusal(number, text, "only ARG may come before the first FROM")
            handle = getattr(self, f"_on_{instruction.lower()}", None)
            if handle is not None:
                handle(number, text, value)
            self.steps_in_stage = 0 if instruction == "FROM" else self.steps_in_stage + 1
        if self.stage is None:
            raise refusal(1, lines[0] if lines else "", "the Dockerfile has no FROM")
        return BuildPlan(frozenset(self.base_images), self.steps_in_stage > 0)

    # --- the instructions that matter -----------------------------------------------

    def _on_from(self, number: int, text: str, value: str) -> None:
        words = value.split()
        if any(word.startswith("--") for word in words):
            raise refusal(number, text, "FROM takes no flags here (--platform included)")
        if len(words) not in (1, 3) or (len(words) == 3 and words[1].lower() != "as"):
            raise refusal(number, text, "FROM must be `FROM image` or `FROM image AS name`")
        try:
            image = self._expand(words[0], self.meta_args)
        except _Unresolvable as problem:
            raise refusal(number, text, f"cannot decide the base image: {problem}") from None
        stage = _Stage()
        if image == SCRATCH:
            pass
        elif image.lower() in self.stage_names:
            parent = self.stages[self.stage_names[image.lower()]]
            stage.env = dict(parent.env)
        elif (allowed := self._allowlisted(image)) is not None:
            self.base_images.add(allowed)
        else:
            raise refusal(
                number,
                text,
                f"FROM may name only scratch, an earlier stage of this Dockerfile, or a base "
                f"image this Host allows ({self.policy.names})",
            )
        if len(words) == 3:
            name = words[2].lower()
            if not _STAGE_NAME.fullmatch(name):
                raise refusal(number, text, "a stage name is a-z, 0-9, '_', '-' and '.'")
            if name in self.stage_names:
                raise refusal(number, text, f"a second stage named {name!r}")
            self.stage_names[name] = len(self.stages)
        self.stages.append(stage)
        self.stage = stage

    def _allowlisted(self, image: str) -> str | None:
        if image in self.policy.base_images:
            return image
        last = image.rsplit("/", 1)[-1]
        if ":" not in last and "@" not in image and f"{image}:latest" in self.policy.base_images:
            return f"{image}:latest"
        return None

    def _on_arg(self, number: int, text: str, value: str) -> None:
        words = value.split()
        if not words:
            raise refusal(number, text, "ARG needs a name")
        scope = self.meta_args if self.stage is None else self.stage.scope()
        for word in words:
            name, has_default, default = word.partition("=")
            if not _VARIABLE_NAME.fullmatch(name):
                raise refusal(number, text, f"{name[:40]!r} is not a variable name")
            resolved: str | None
            if has_default:
                resolved = self._try_expand(default, scope)
            elif self.stage is not None:
                # An ARG without a default inside a stage takes the global one, if any.
                resolved = self.meta_args.get(name)
            else:
                resolved = None  # the Host passes no build args: unset
            if self.stage is None:
                self.meta_args[name] = resolved
            else:
                self.stage.args[name] = resolved
            scope[name] = resolved

    def _on_env(self, number: int, text: str, value: str) -> None:
        assert self.stage is not None
        words = value.split(None, 1)
        if not words:
            raise refusal(number, text, "ENV needs a name")
        if "=" not in words[0]:
            # `ENV name the rest of the line`
            if len(words) < 2:
                raise refusal(number, text, "ENV needs a value")
            pairs = [(words[0], words[1])]
        else:
            pairs = [tuple(word.partition("=")[::2]) for word in _split_words(value)]  # type: ignore[misc]
        for name, raw in pairs:
            if not _VARIABLE_NAME.fullmatch(name):
                raise refusal(number, text, f"{name[:40]!r} is not a variable name")
            self.stage.env[name] = self._try_expand(raw, self.stage.scope())

    def _on_onbuild(self, number: int, text: str, value: str) -> None:
        raise refusal(number, text, "ONBUILD is not allowed")

    def _on_run(self, number: int, text: str, value: str) -> None:
        if value.lstrip().startswith("--"):
            raise refusal(number, text, "RUN takes no flags here (--mount, --network...)")

    def _on_add(self, number: int, text: str, value: str) -> None:
        self._copy("ADD", number, text, value)

    def _on_copy(self, number: int, text: str, value: str) -> None:
        self._copy("COPY", number, text, value)

    def _copy(self, instruction: str, number: int, text: str, value: str) -> None:
        assert self.stage is not None
        rest = value.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            rest = rest.strip()
            name, has_value, flag_value = flag[2:].partition("=")
            if name not in _COPY_FLAGS[instruction] or not has_value:
                raise refusal(number, text, f"{instruction} does not take {flag[:40]!r} here")
            if name == "from":
                self._check_copy_from(number, text, flag_value)
        words = _maybe_json_list(rest)
        if len(words) < 2:
            raise refusal(number, text, f"{instruction} needs at least one source and a target")
        for source in words[:-1]:
            try:
                expanded = self._expand(source, self.stage.scope())
            except _Unresolvable as problem:
                raise refusal(number, text, f"cannot decide a source: {problem}") from None
            for spelling in (source, expanded):
                if ":" in spelling or spelling.startswith(("git@", "github.com/")):
                    raise refusal(
                        number,
                        text,
                        f"{instruction} may use only files of the build context, nothing "
                        "remote (no URL of any scheme, no git) and no ':' in a source",
                    )

    def _check_copy_from(self, number: int, text: str, source: str) -> None:
        current = len(self.stages) - 1
        if source.isdigit() and int(source) < current:
            return
        if source.lower() in self.stage_names and self.stage_names[source.lower()] < current:
            return
        raise refusal(number, text, "COPY --from may name only an earlier stage of this Dockerfile")

    # --- variables --------------------------------------------------------------------

    def _try_expand(self, word: str, scope: Mapping[str, str | None]) -> str | None:
        try:
            return self._expand(word, scope)
        except _Unresolvable:
            return None

    def _expand(self, word: str, scope: Mapping[str, str | None]) -> str:
        return expand(word, scope, self.escape)


def expand(word: str, scope: Mapping[str, str | None], escape: str = "\\") -> str:
    """Docker's shell-lexer substitution of one word: quotes removed, `$X`/`${X}` replaced.

    A variable that is not in `scope`, or is there as None (declared without
    a value the policy knows), raises: Docker would substitute something the
    policy cannot see (an ENV of the base image, a build arg).
    """
    out: list[str] = []
    index, quote = 0, ""
    while index < len(word):
        ch = word[index]
        if quote != "'" and ch == escape:
            if index + 1 >= len(word):
                raise _Unresolvable("a dangling escape character")
            following = word[index + 1]
            if quote == '"' and following not in ('"', "$", escape):
                out.append(ch)
            out.append(following)
            index += 2
            continue
        if ch in ("'", '"') and quote in ("", ch):
            quote = "" if quote else ch
            index += 1
            continue
        if ch == "$" and quote != "'":
            value, index = _variable(word, index, scope, escape)
            out.append(value)
            continue
        out.append(ch)
        index += 1
    if quote:
        raise _Unresolvable("an unterminated quote")
    return "".join(out)


def _variable(
    word: str, index: int, scope: Mapping[str, str | None], escape: str
) -> tuple[str, int]:
    """The value of the variable at `word[index]` (a `$`) and the index after it."""
    start = index + 1
    if start < len(word) and word[start] == "{":
        close = _closing_brace(word, start)
        body = word[start + 1 : close]
        match = re.match(r"[A-Za-z_][A-Za-z0-9_]*", body)
        if match is None:
            raise _Unresolvable(f"a variable ${{{body[:30]}}} the policy cannot read")
        name, modifier = match.group(), body[match.end() :]
        if modifier and modifier[:2] not in (":-", ":+"):
            raise _Unresolvable(f"the variable modifier in ${{{body[:30]}}}")
        value = _lookup(name, scope)
        if modifier.startswith(":-"):
            value = value or expand(modifier[2:], scope, escape)
        elif modifier.startswith(":+"):
            value = expand(modifier[2:], scope, escape) if value else ""
        return value, close + 1
    match = _VARIABLE_NAME.match(word, start)
    if match is None:
        return "$", start  # a lone `$` is literal
    return _lookup(match.group(), scope), match.end()


def _closing_brace(word: str, start: int) -> int:
    depth = 0
    for position in range(start, len(word)):
        if word[position] == "{":
            depth += 1
        elif word[position] == "}":
            depth -= 1
            if depth == 0:
                return position
    raise _Unresolvable("an unterminated ${")


def _lookup(name: str, scope: Mapping[str, str | None]) -> str:
    value = scope.get(name)
    if value is None:
        raise _Unresolvable(f"${name} is not set to a value this Dockerfile gives it")
    return value


def _split_words(value: str) -> list[str]:
    """Whitespace-separated words, keeping quoted whitespace inside its word."""
    words, current, quote, escaped = [], [], "", False
    for ch in value:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and quote != "'":
            current.append(ch)
            escaped = True
        elif ch in ("'", '"') and quote in ("", ch):
            quote = "" if quote else ch
            current.append(ch)
        elif ch.isspace() and not quote:
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    return words


def _maybe_json_list(rest: str) -> list[str]:
    """The exec (JSON) form if it is one, else the words split at whitespace (as Docker does)."""
    if rest.startswith("["):
        try:
            parsed = json.loads(rest)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(item, str) for item in parsed):
            return list(parsed)
    return rest.split()
