"""`ls`, `get`, `start`, `stop`, `restart`, `rm`, `logs`, `watch`, `send`."""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.table import Table
from rich.text import Text

from hershy.entrypoints.cli_commands.common import (
    CALL_TIMEOUT,
    CliError,
    Exit,
    Settings,
    ago,
    calls,
    command_options,
    err,
    fail,
    out,
    print_json,
    report_program,
    state_name,
    state_text,
    timestamp_text,
    usage,
)
from hershy.v1 import program_pb2 as pb
from hershy_client import (
    Client,
    DeadlineExceeded,
    FailedPrecondition,
    HershyError,
    NotFound,
    Resync,
    limits,
    program_id,
)

#: Default seconds `--wait` waits (WaitProgram allows up to an hour).
WAIT_TIMEOUT = 300.0
LOG_STREAMS = ("stdout", "stderr", "build", "host")
STREAM_STYLES = {"STDOUT": "dim", "STDERR": "dim red", "BUILD": "dim cyan", "HOST": "dim magenta"}
Response = pb.WatchProgramsResponse
F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the protobuf message(s) as JSON."
)


def watcher_url(settings: Settings, program: str) -> str:
    """Where the program's WatcherAPI is reachable: the Host's proxy."""
    return f"{settings.http}/programs/{urllib.parse.quote(program_id(program), safe='')}/watcher/"


# --- ls, get ----------------------------------------------------------------------------------


@click.command("ls")
@click.option("--user", "user_id", default=None, metavar="USER", help="Only this user's programs.")
@json_option
@command_options
def ls_command(settings: Settings, user_id: str | None, as_json: bool) -> None:
    """List programs (yours; every user's with the admin's token)."""
    with settings.client() as client, calls(settings):
        programs = list(client.list(user_id=user_id, page_size=limits.MAX_PAGE_SIZE))
    if as_json:
        print_json(pb.ListProgramsResponse(programs=programs, total_size=len(programs)))
        return
    if not programs:
        err.print("No programs.", style="dim")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("ID", "USER", "STATE", "HEALTH", "RESTARTS", "AGE", "RUNTIME"):
        table.add_column(column, no_wrap=True)
    for program in programs:
        table.add_row(
            program.id,
            program.user_id,
            state_text(program.state),
            health_text(program),
            str(program.restart_count),
            ago(program.create_time),
            program.runtime or "-",
        )
    out.print(table)


HEALTH_STYLES = {
    pb.HEALTH_HEALTHY: "green",
    pb.HEALTH_INITIALISING: "yellow",
    pb.HEALTH_DEGRADED: "yellow",
    pb.HEALTH_UNHEALTHY: "red",
}


def health_text(program: pb.Program) -> Text:
    """`healthy (Ready)`: the Host's verdict and the program's own state; `-` when unknown."""
    if program.health in (pb.HEALTH_UNSPECIFIED, pb.HEALTH_UNKNOWN):
        return Text("-", style="dim")
    name = pb.Health.Name(program.health).removeprefix("HEALTH_").lower()
    text = Text(name, style=HEALTH_STYLES.get(program.health, ""))
    if program.watcher_state:
        text.append(f" ({program.watcher_state})", style="dim")
    return text


def _restart_policy(policy: pb.RestartPolicy) -> str:
    mode = {
        pb.RESTART_MODE_ON_FAILURE: "on-failure",
        pb.RESTART_MODE_NEVER: "never",
    }.get(policy.mode, "always")
    if policy.max_restarts:
        mode += f", at most {policy.max_restarts} within {policy.window.seconds} s"
    return mode


def _stop(stop: pb.StopSettings) -> str:
    grace = stop.grace.seconds + stop.grace.nanos / 1e9
    return f"{stop.signal or 'SIGTERM'}, then {f'{grace:g} s' if grace else 'the Host grace'}"


def _readiness(check: pb.ReadinessCheck) -> str:
    if not check.field:
        return f"GET {check.path}: any 2xx answer"
    return f"GET {check.path}: {check.field} in {', '.join(check.ready_values)}"


def _resources(resources: pb.Resources) -> str:
    parts = []
    if resources.memory_bytes:
        parts.append(f"memory {resources.memory_bytes // (1024 * 1024)} MiB")
    if resources.milli_cpus:
        parts.append(f"{resources.milli_cpus / 1000:g} CPU")
    if resources.pids:
        parts.append(f"{resources.pids} pids")
    return ", ".join(parts) or "the Host's defaults"


def show_program(settings: Settings, program: pb.Program) -> None:
    """A program as `key  value` lines."""
    rows: list[tuple[str, str | Text]] = [
        ("id", program.id),
        ("user", program.user_id),
        ("state", state_text(program.state)),
        ("run", str(program.run)),
        ("build", program.build_id or "-"),
        ("image", program.image_id or "-"),
        ("container", program.container_id or "-"),
        *((("node", program.node), ("pod", program.pod)) if program.node or program.pod else ()),
        ("watcher", watcher_url(settings, program.id)),
        ("restarts", str(program.restart_count)),
        (
            "last exit",
            str(program.last_exit_code) if program.HasField("last_exit_code") else "-",
        ),
        ("created", timestamp_text(program.create_time)),
        ("updated", timestamp_text(program.update_time)),
        ("ready since", timestamp_text(program.ready_time)),
        ("runtime", program.runtime or "-"),
        ("resources", _resources(program.resources)),
        # The program's own view (its WatcherAPI) and the Host's verdict.
        ("watcher state", program.watcher_state or "-"),
        ("health", health_text(program)),
        ("last answer", timestamp_text(program.watcher_answer_time)),
        ("readiness", _readiness(program.readiness)),
        ("restart policy", _restart_policy(program.restart_policy)),
        ("stop", _stop(program.stop)),
    ]
    if program.alias:
        rows.insert(1, ("name", program.alias))
    if program.env:
        rows.append(("env", " ".join(f"{key}={program.env[key]}" for key in sorted(program.env))))
    if program.health_reason:
        rows.append(("health reason", Text(program.health_reason, style="yellow")))
    if program.restart_pending:
        rows.append(("restart", "pending"))
    if program.status_note:
        rows.append(("note", program.status_note))
    if program.HasField("next_restart_time"):
        rows.append(("next restart", timestamp_text(program.next_restart_time)))
    if program.error_message:
        rows.append(("error", Text(program.error_message, style="red")))
    width = max(len(key) for key, _ in rows) + 2
    for key, value in rows:
        line = Text(f"{key:<{width}}", style="bold")
        line.append_text(Text(value) if isinstance(value, str) else value)
        out.print(line)


@click.command("get")
@click.argument("program")
@json_option
@command_options
def get_command(settings: Settings, program: str, as_json: bool) -> None:
    """Show one program (PROGRAM: its id, `prog-...`, or its name)."""
    with settings.client() as client, calls(settings):
        found = client.get(program)
    if as_json:
        print_json(found)
    else:
        show_program(settings, found)


# --- lifecycle --------------------------------------------------------------------------------


def wait_for(
    client: Client,
    settings: Settings,
    program: pb.Program,
    state: str,
    timeout: float,
    *,
    gone_is_deleted: bool = False,
) -> pb.Program:
    """WaitProgram; ending in ERROR or running out of time is a failure (exit 1).

    `gone_is_deleted`: waiting for DELETED, a program already gone is what was asked.
    """
    try:
        return client.wait(program, state, timeout)
    except NotFound as error:
        if gone_is_deleted:
            gone = pb.Program()
            gone.CopyFrom(program)
            gone.state = pb.STATE_DELETED
            return gone
        fail(error, settings)
    except FailedPrecondition as error:
        if error.state == "ERROR":
            raise CliError(error.message, Exit.FAILED) from error
        fail(error, settings)
    except DeadlineExceeded as error:
        if error.reason is not None:  # the Host's own timeout: it names the state
            raise CliError(error.message, Exit.FAILED) from error
        fail(error, settings)
    except HershyError as error:
        fail(error, settings)


def _lifecycle(
    settings: Settings,
    program: str,
    action: str,
    target_state: str,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    with settings.client() as client:
        with calls(settings):
            changed: pb.Program = getattr(client, action)(program)
        if wait:
            if not as_json:
                err.print(f"{changed.id}: {state_name(changed.state)}, waiting for {target_state}")
            changed = wait_for(client, settings, changed, target_state, timeout)
    report_program(changed, as_json)


def _wait_options(state: str) -> Callable[[F], F]:
    def decorate(function: F) -> F:
        function = click.option(
            "--timeout",
            type=click.FloatRange(min=0.1, max=limits.MAX_WAIT_SECONDS),
            default=WAIT_TIMEOUT,
            show_default=True,
            help="Seconds --wait waits.",
        )(function)
        return click.option(
            "--wait", is_flag=True, help=f"Wait until the program is {state} (exit 1 if not)."
        )(function)

    return decorate


@click.command("start")
@click.argument("program")
@_wait_options("READY")
@json_option
@command_options
def start_command(
    settings: Settings, program: str, wait: bool, timeout: float, as_json: bool
) -> None:
    """Start a program: build (or reuse) its image and run it.

    Allowed from CREATED, STOPPED and ERROR (exit 4 otherwise)."""
    _lifecycle(settings, program, "start", "READY", wait, timeout, as_json)


@click.command("stop")
@click.argument("program")
@_wait_options("STOPPED")
@json_option
@command_options
def stop_command(
    settings: Settings, program: str, wait: bool, timeout: float, as_json: bool
) -> None:
    """Stop a program: it ends STOPPED with nothing left running."""
    _lifecycle(settings, program, "stop", "STOPPED", wait, timeout, as_json)


@click.command("restart")
@click.argument("program")
@_wait_options("READY")
@json_option
@command_options
def restart_command(
    settings: Settings, program: str, wait: bool, timeout: float, as_json: bool
) -> None:
    """Restart a program: stop it if it runs, then start it (/state is kept)."""
    _lifecycle(settings, program, "restart", "READY", wait, timeout, as_json)


@click.command("rm")
@click.argument("program")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@_wait_options("gone (DELETED)")
@json_option
@command_options
def rm_command(
    settings: Settings, program: str, yes: bool, wait: bool, timeout: float, as_json: bool
) -> None:
    """Delete a program and everything it owns.

    Its container, image, /state and logs go; a deleted program never comes back."""
    if not yes:
        if not sys.stdin.isatty():
            usage("not deleting without confirmation: pass --yes")
        click.confirm(f"Delete {program_id(program)} and everything it owns?", abort=True)
    with settings.client() as client:
        with calls(settings):
            deleted = client.delete(program)
        if wait:
            if not as_json:
                err.print(f"{deleted.id}: {state_name(deleted.state)}, waiting until it is gone")
            deleted = wait_for(client, settings, deleted, "DELETED", timeout, gone_is_deleted=True)
    report_program(deleted, as_json)


# --- logs, watch ------------------------------------------------------------------------------


@click.command("logs")
@click.argument("program")
@click.option("-f", "--follow", is_flag=True, help="Keep going: print new lines as they come.")
@click.option(
    "--tail", type=click.IntRange(min=0), default=None, help="Only the last N lines.", metavar="N"
)
@click.option(
    "--stream",
    "streams",
    type=click.Choice(LOG_STREAMS),
    multiple=True,
    help="Only these streams (repeat the option for several); default: all.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines, one LogEntry each.")
@command_options
def logs_command(
    settings: Settings,
    program: str,
    follow: bool,
    tail: int | None,
    streams: tuple[str, ...],
    as_json: bool,
) -> None:
    """Print a program's logs (-f: follow them).

    Builds, stdout, stderr and the Host's notes, each line prefixed by its
    stream. With -f, new lines as they come until the program is deleted
    (Ctrl-C stops, exit 0)."""
    with settings.client() as client, calls(settings):
        try:
            for entry in client.logs(program, tail=tail, follow=follow, streams=streams or None):
                if as_json:
                    print_json(entry, lines=True)
                else:
                    stream = pb.LogStream.Name(entry.stream).removeprefix("LOG_STREAM_")
                    out.print(
                        Text.assemble((f"{stream.lower():<6} ", STREAM_STYLES.get(stream, "")))
                        + Text(entry.line)
                    )
                sys.stdout.flush()
        except KeyboardInterrupt:
            return


class _StderrHandler(logging.Handler):
    """The client's reconnect notes (`watch_forever`), dimmed on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        err.print(Text(self.format(record), style="dim"))


def _event_kind(message: Response) -> str:
    if not message.HasField("event"):
        return ""
    return message.event.WhichOneof("kind") or ""


def _show_change(message: Response) -> None:
    kind = Response.Type.Name(message.type).removeprefix("TYPE_")
    if message.type == Response.TYPE_SYNCED:
        out.print(
            Text(f"-- synced at revision {message.revision}; watching for changes --", style="dim")
        )
        return
    program = message.program
    stamp = timestamp_text(message.event.time if message.HasField("event") else program.update_time)
    out.print(
        Text.assemble(
            (f"{stamp[11:19]:<8} ", "dim"),
            (f"{kind:<8} ", "bold" if kind != "SNAPSHOT" else "dim"),
            program.id,
            "  ",
            state_text(program.state),
            (f"  {_event_kind(message)}" if _event_kind(message) else "", "cyan"),
            (f"  rev {message.revision}", "dim"),
            (f"  {program.error_message}" if program.error_message else "", "red"),
        )
    )


@click.command("watch")
@click.argument("program", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines, one message each.")
@command_options
def watch_command(settings: Settings, program: str | None, as_json: bool) -> None:
    """Print programs now, then every change as it happens.

    Every program you may see, or PROGRAM alone. Survives Host restarts (it
    reconnects and carries on after the last change seen). Ctrl-C stops;
    watching one program ends once it is deleted.
    """
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    watch_log = logging.getLogger("hershy_client.watch")
    watch_log.addHandler(handler)
    watch_log.setLevel(logging.INFO)
    watch_log.propagate = False
    with settings.client() as client, calls(settings):
        try:
            for item in client.watch_forever(program_id=program):
                if isinstance(item, Resync):
                    if as_json:
                        print_json(
                            {"resync": {"reason": item.reason.value, "message": item.message}},
                            lines=True,
                        )
                    else:
                        err.print(f"resync: {item.message}", style="yellow")
                    continue
                if as_json:
                    print_json(item, lines=True)
                else:
                    _show_change(item)
                sys.stdout.flush()
                if program and item.program.state == pb.STATE_DELETED:
                    return
        except KeyboardInterrupt:
            return


# --- send -------------------------------------------------------------------------------------

#: The shim's error answers, by HTTP status, as exit codes.
_HTTP_EXITS = {
    400: Exit.USAGE,
    401: Exit.AUTH,
    403: Exit.AUTH,
    404: Exit.NOT_FOUND,
    409: Exit.WRONG_STATE,
}


def _opener(url: str) -> urllib.request.OpenerDirector:
    """No proxy from the environment for a Host on this machine (HTTP_PROXY must not catch it)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def post_message(settings: Settings, program: str, content: str) -> tuple[bytes, Any]:
    """POST {"content"} to the program's WatcherAPI through the Host's proxy: its answer."""
    url = watcher_url(settings, program) + "message"
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    request = urllib.request.Request(
        url, data=json.dumps({"content": content}).encode(), headers=headers, method="POST"
    )
    try:
        with _opener(url).open(request, timeout=CALL_TIMEOUT) as response:
            body: bytes = response.read()
    except urllib.error.HTTPError as error:
        body = error.read()
        data = _decode(body)
        if isinstance(data, dict) and {"error", "code", "message"} <= data.keys():
            # The Host refused (the shim's error shape): its message, its meaning.
            code = _HTTP_EXITS.get(error.code, Exit.FAILED)
            if data["error"] == "PROGRAM_NOT_READY":
                code = Exit.WRONG_STATE
            raise CliError(str(data["message"]), code) from None
        detail = data.get("error") if isinstance(data, dict) else body.decode(errors="replace")
        raise CliError(
            f"the program's WatcherAPI answered HTTP {error.code}: {' '.join(str(detail).split())}",
            Exit.FAILED,
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise CliError(
            f"cannot reach the Host's REST API at {settings.http}: {reason}", Exit.UNREACHABLE
        ) from None
    return body, _decode(body)


@click.command("send")
@click.argument("program")
@click.argument("message")
@click.option("--json", "as_json", is_flag=True, help="Print the WatcherAPI's answer as JSON.")
@command_options
def send_command(settings: Settings, program: str, message: str, as_json: bool) -> None:
    """Send a message into a program's WatcherAPI; print its reply.

    POSTs {"content": MESSAGE} to /programs/PROGRAM/watcher/message on the
    Host's REST API (--http), which forwards it to the program's
    POST /watcher/message."""
    body, data = post_message(settings, program, message)
    if as_json:
        if data is None:
            raise CliError("the program's answer is not JSON", Exit.FAILED)
        click.echo(json.dumps(data, indent=2))
        return
    if isinstance(data, dict) and "reply" in data:
        out.print(Text(str(data["reply"])))
        if data.get("handled") is False:
            err.print("(the program had not handled the message yet when it answered)", style="dim")
    else:
        out.print(Text(body.decode(errors="replace")))
