"""What every client command shares: where the Host is, the token, exit codes, output."""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar, cast

import click
import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.text import Text

from hershy.v1 import program_pb2 as pb
from hershy.v1 import token_pb2
from hershy.v1 import token_pb2_grpc as token_grpc
from hershy_client import (
    Client,
    DeadlineExceeded,
    FailedPrecondition,
    HershyError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)

DEFAULT_TARGET = "127.0.0.1:9090"
DEFAULT_HTTP = "http://127.0.0.1:9000"
#: Seconds each unary call may take before the Host counts as unreachable.
CALL_TIMEOUT = 30.0

F = TypeVar("F", bound=Callable[..., Any])


class Exit(enum.IntEnum):
    """The exit codes, for scripts (`hershy --help` and the README list them)."""

    OK = 0
    #: The operation failed: the program ended in ERROR, a wait timed out, ...
    FAILED = 1
    #: A bad option or argument (click's), or one the Host refused as malformed.
    USAGE = 2
    #: No such program or token (or one the token may not see).
    NOT_FOUND = 3
    #: The program's state does not allow the request (FAILED_PRECONDITION).
    WRONG_STATE = 4
    #: No valid token, or the token does not allow the request.
    AUTH = 5
    #: The Host cannot be reached.
    UNREACHABLE = 6


EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  the operation failed (the program ended in ERROR, a wait timed out, ...)
  2  usage error (a bad option or argument, or one the Host refused)
  3  not found (no such program or token, or not yours)
  4  wrong state (the program's state does not allow the request)
  5  unauthenticated or permission denied (a missing, bad or revoked token)
  6  the Host cannot be reached
"""


class CliError(click.ClickException):
    """A failure shown as one line on stderr (`Error: ...`), with its exit code."""

    def __init__(self, message: str, code: Exit = Exit.FAILED) -> None:
        super().__init__(message)
        self.exit_code = int(code)


def exit_code_for(error: HershyError) -> Exit:
    """The exit code for a failed call."""
    if isinstance(error, NotFound):
        return Exit.NOT_FOUND
    if isinstance(error, FailedPrecondition):
        return Exit.WRONG_STATE
    if isinstance(error, Unauthenticated | PermissionDenied):
        return Exit.AUTH
    if isinstance(error, Unavailable):
        return Exit.UNREACHABLE
    if isinstance(error, DeadlineExceeded) and error.reason is None:
        # The client's own deadline ran out: the Host did not answer at all.
        return Exit.UNREACHABLE
    if isinstance(error, InvalidArgument):
        return Exit.USAGE
    return Exit.FAILED


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the Host is and who calls (from the options, the environment, the defaults)."""

    target: str
    http: str
    token: str | None

    def client(self) -> Client:
        return Client(self.target, token=self.token, timeout=CALL_TIMEOUT)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def _check_token(token: str | None) -> str | None:
    if token is None:
        return None
    token = token.strip()
    if not token:
        return None
    # gRPC metadata is printable ASCII; say so without ever echoing the token.
    if not token.isascii() or not token.isprintable() or " " in token:
        raise click.UsageError("the token is malformed (printable ASCII without spaces expected)")
    return token


def group_options(function: F) -> F:
    """--target, --http, --token on the group: they apply to every command."""
    function = click.option(
        "--token",
        envvar="HERSHY_TOKEN",
        default=None,
        metavar="TOKEN",
        help="API token [env HERSHY_TOKEN]. Prefer the variable: options show in `ps`.",
    )(function)
    function = click.option(
        "--http",
        "http_url",
        envvar="HERSHY_HTTP",
        default=DEFAULT_HTTP,
        show_default=True,
        metavar="URL",
        help="The Host's REST API, for `send` [env HERSHY_HTTP].",
    )(function)
    function = click.option(
        "--target",
        envvar="HERSHY_TARGET",
        default=DEFAULT_TARGET,
        show_default=True,
        metavar="HOST:PORT",
        help="The Host's gRPC API [env HERSHY_TARGET].",
    )(function)
    return function


def command_options(function: F) -> F:
    """The same options on each client command (`hershy ls --target X`); they win over
    the group's (`hershy --target X ls`), which win over the environment and the defaults."""

    @click.option(
        "--token",
        "cmd_token",
        default=None,
        metavar="TOKEN",
        help="API token (default: `hershy --token`, env HERSHY_TOKEN).",
    )
    @click.option(
        "--http",
        "cmd_http",
        default=None,
        metavar="URL",
        help=f"The Host's REST API (default: `hershy --http`, env HERSHY_HTTP, {DEFAULT_HTTP}).",
    )
    @click.option(
        "--target",
        "cmd_target",
        default=None,
        metavar="HOST:PORT",
        help="The Host's gRPC API (default: `hershy --target`, env HERSHY_TARGET, "
        f"{DEFAULT_TARGET}).",
    )
    @functools.wraps(function)
    def wrapper(
        *args: Any, cmd_target: str | None, cmd_http: str | None, cmd_token: str | None, **kw: Any
    ) -> Any:
        ctx = click.get_current_context()
        base = ctx.find_object(Settings) or Settings(DEFAULT_TARGET, DEFAULT_HTTP, None)
        settings = Settings(
            target=cmd_target or base.target,
            http=(cmd_http or base.http).rstrip("/"),
            token=_check_token(cmd_token if cmd_token is not None else base.token),
        )
        return function(settings, *args, **kw)

    return cast(F, wrapper)


def make_settings(target: str, http_url: str, token: str | None) -> Settings:
    """The group's settings; the token is checked by the command that uses it."""
    return Settings(target=target, http=http_url.rstrip("/"), token=token)


def fail(error: HershyError, settings: Settings | None = None) -> NoReturn:
    """Raise the CliError for a failed call: the Host's message, the right exit code."""
    code = exit_code_for(error)
    message = error.message or error.code.name
    if code is Exit.UNREACHABLE and settings is not None:
        if isinstance(error, DeadlineExceeded):
            message = f"the Host at {settings.target} did not answer within {CALL_TIMEOUT:g} s"
        else:
            message = f"cannot reach the Host at {settings.target}: {_first_line(message)}"
    raise CliError(_first_line(message), code) from error


def _first_line(text: str) -> str:
    return " ".join(text.split())


@contextlib.contextmanager
def calls(settings: Settings) -> Iterator[None]:
    """Turn a failed call inside the block into its one-line error and exit code."""
    try:
        yield
    except HershyError as error:
        fail(error, settings)
    except grpc.RpcError as error:  # raw stubs (TokenService)
        fail(from_rpc_error(error), settings)


def token_stub(client: Client) -> token_grpc.TokenServiceStub:
    return token_grpc.TokenServiceStub(client.channel)


def current_token(client: Client, settings: Settings) -> token_pb2.Token:
    """GetCurrentToken: who the token stands for."""
    try:
        return token_stub(client).GetCurrentToken(
            token_pb2.GetCurrentTokenRequest(),
            metadata=settings.metadata(),
            timeout=CALL_TIMEOUT,
        )
    except grpc.RpcError as error:
        raise from_rpc_error(error) from error


# --- output -----------------------------------------------------------------------------------

#: stdout carries results (what scripts read); stderr carries progress and errors.
out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)

STATE_STYLES = {
    "CREATED": "cyan",
    "BUILDING": "yellow",
    "STARTING": "yellow",
    "READY": "bold green",
    "STOPPING": "yellow",
    "STOPPED": "dim",
    "BACKOFF": "magenta",
    "ERROR": "bold red",
    "DELETING": "yellow",
    "DELETED": "dim",
}


def state_name(state: int) -> str:
    return pb.State.Name(cast(pb.State.ValueType, state)).removeprefix("STATE_")


def state_text(state: int) -> Text:
    name = state_name(state)
    return Text(name, style=STATE_STYLES.get(name, ""))


def as_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def print_json(message: Message | dict[str, Any], *, lines: bool = False) -> None:
    """One JSON document (indented), or one compact line for streams (`lines`)."""
    data = as_dict(message) if isinstance(message, Message) else message
    text = json.dumps(data, separators=(",", ":")) if lines else json.dumps(data, indent=2)
    click.echo(text)


def report_program(program: pb.Program, as_json: bool) -> None:
    """A lifecycle call's answer: the Program as JSON, or its id and state."""
    if as_json:
        print_json(program)
    else:
        out.print(Text.assemble(program.id, "  ", state_text(program.state)))


def when(stamp: Timestamp) -> datetime | None:
    if not stamp.seconds and not stamp.nanos:
        return None
    return stamp.ToDatetime(tzinfo=UTC)


def ago(stamp: Timestamp, now: float | None = None) -> str:
    """`42s`, `5m`, `3h`, `2d`: how long ago, for tables."""
    moment = when(stamp)
    if moment is None:
        return "-"
    seconds = max(0, int((now or time.time()) - moment.timestamp()))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def timestamp_text(stamp: Timestamp) -> str:
    moment = when(stamp)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z") if moment else "-"


def usage(message: str) -> NoReturn:
    raise click.UsageError(message)
