"""`hershy deploy DIR`: send a folder, start it, follow the build, wait for READY."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.status import Status
from rich.text import Text

from hershy.entrypoints.cli_commands import rollouts
from hershy.entrypoints.cli_commands.build_context import DOCKERIGNORE, ContextError, read_context
from hershy.entrypoints.cli_commands.common import (
    CliError,
    Exit,
    Settings,
    calls,
    command_options,
    current_token,
    err,
    fail,
    out,
    print_json,
    state_name,
    state_text,
    usage,
)
from hershy.entrypoints.cli_commands.health import health_options, health_settings, update_mask
from hershy.entrypoints.cli_commands.programs import watcher_url
from hershy.entrypoints.cli_commands.quotas import ByteSize, Cpus
from hershy.v1 import program_pb2 as pb
from hershy_client import Client, HershyError, Resync

#: Default seconds to wait for READY: a first build can take minutes.
DEPLOY_TIMEOUT = 600.0
#: Log lines shown when the program ends in ERROR.
FAILURE_LINES = 20
#: States after which the program will not become READY by itself.
GAVE_UP = {pb.STATE_STOPPING, pb.STATE_STOPPED, pb.STATE_DELETING, pb.STATE_DELETED}


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


class BuildLog:
    """Prints the program's build log as it is written, in a thread of its own.

    It has its own client: closing it ends the followed stream from any thread.
    """

    def __init__(self, settings: Settings, program: pb.Program) -> None:
        self._client = settings.client()
        self._program = program
        self._thread = threading.Thread(target=self._run, name="build-log", daemon=True)
        self.lines = 0

    def __enter__(self) -> BuildLog:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        with contextlib.suppress(HershyError):
            for entry in self._client.logs(self._program, follow=True, streams=["build"]):
                if entry.run >= self._program.run:
                    self.lines += 1
                    err.print(Text("  │ ", style="dim cyan") + Text(entry.line, style="dim"))

    def stop(self, grace: float = 0.3) -> None:
        """Let lines already on their way arrive (`grace` seconds), then stop following."""
        self._thread.join(grace)
        self._client.close()
        self._thread.join(2)


class Progress:
    """The state line: a spinner with the state and the time on a terminal; a line a
    state change otherwise (CI logs)."""

    def __init__(self, program: pb.Program) -> None:
        self._program = program
        self._started = time.monotonic()
        self.state: pb.State.ValueType = program.state
        #: What the program itself reports (its WatcherAPI's state) while it starts.
        self.watcher = ""
        self._status: Status | None = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def _said(self) -> Text:
        return Text(f" (the program says {self.watcher})" if self.watcher else "", style="cyan")

    def _line(self) -> Text:
        return Text.assemble(
            f"{self._program.id}: ",
            state_text(self.state),
            self._said(),
            (f"  {self.elapsed:.0f} s", "dim"),
        )

    @contextlib.contextmanager
    def shown(self) -> Iterator[Progress]:
        self._print()
        if err.is_terminal:
            with err.status(self._line(), spinner="dots") as status:
                self._status = status
                ticker = threading.Event()
                thread = threading.Thread(target=self._tick, args=(ticker,), daemon=True)
                thread.start()
                try:
                    yield self
                finally:
                    ticker.set()
                    thread.join(1)
                    self._status = None
        else:
            yield self

    def _print(self) -> None:
        err.print(
            Text.assemble(
                (f"{self.elapsed:6.1f} s  ", "dim"), "→ ", state_text(self.state), self._said()
            )
        )

    def _tick(self, done: threading.Event) -> None:
        while not done.wait(1.0):
            if self._status is not None:
                self._status.update(self._line())

    def update(self, state: pb.State.ValueType, watcher: str = "") -> None:
        """A new state, or (while it starts) the program's own new state (InitRun, ...)."""
        if state == self.state and watcher == self.watcher:
            return
        self.state, self.watcher = state, watcher
        self._print()
        if self._status is not None:
            self._status.update(self._line())


def follow_until_ready(settings: Settings, program: pb.Program, timeout: float) -> pb.Program:
    """Follow the build log and the program's state until READY; raise a CliError otherwise."""
    watch_client = settings.client()
    timer = threading.Timer(timeout, watch_client.close)
    timer.daemon = True
    latest = program
    progress = Progress(program)
    try:
        with BuildLog(settings, program) as build_log, progress.shown(), calls(settings):
            timer.start()
            for item in watch_client.watch_forever(program_id=program.id):
                if isinstance(item, Resync) or not item.HasField("program"):
                    continue
                latest = item.program
                starting = latest.state in (pb.STATE_STARTING, pb.STATE_READY)
                progress.update(latest.state, latest.watcher_state if starting else "")
                if latest.state == pb.STATE_READY:
                    build_log.stop()
                    return latest
                if latest.state == pb.STATE_ERROR or latest.state in GAVE_UP:
                    build_log.stop()
                    break
    except KeyboardInterrupt:
        err.print(
            f"Interrupted: {program.id} carries on on the Host "
            f"(`hershy get {program.id}`, `hershy rm {program.id}`)."
        )
        raise
    finally:
        timer.cancel()
        watch_client.close()
    if latest.state == pb.STATE_ERROR:
        _explain_failure(settings, latest, build_shown=build_log.lines > 0)
        raise CliError(
            f"{program.id} ended in ERROR: {_first_line(latest.error_message)}", Exit.FAILED
        )
    if latest.state in GAVE_UP:
        raise CliError(
            f"{program.id} is {state_name(latest.state)}: it was stopped or deleted before "
            "it was READY",
            Exit.FAILED,
        )
    raise CliError(
        f"{program.id} is not READY after {timeout:g} s (it is {state_name(latest.state)}); "
        f"it carries on: `hershy get {program.id}`",
        Exit.FAILED,
    )


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "no reason given"


def _explain_failure(settings: Settings, program: pb.Program, *, build_shown: bool) -> None:
    """The error message in full, and the last lines of the run's stderr, and of its
    build unless the build log was shown already (it is right above)."""
    message = program.error_message.strip()
    if "\n" in message:  # the one-line error that follows has its first line only
        err.print(Text(message, style="red"))
    streams = ["stderr"] if build_shown else ["build", "stderr"]
    try:
        with settings.client() as client:
            entries = [
                entry
                for entry in client.logs(program, tail=FAILURE_LINES, streams=streams)
                if entry.run == program.run
            ]
    except HershyError:
        return
    if entries:
        err.print(
            Text(f"The last {' and '.join(streams)} lines of run {program.run}:", style="bold")
        )
        for entry in entries:
            stream = pb.LogStream.Name(entry.stream).removeprefix("LOG_STREAM_").lower()
            err.print(Text(f"  {stream:<6} ", style="dim") + Text(entry.line))


@click.command("deploy")
@click.argument(
    "folder", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--user",
    "user_id",
    default=None,
    metavar="USER",
    help="Whose program it is (default: the token's user; the admin must say).",
)
@click.option(
    "--name",
    default=None,
    metavar="NAME",
    help="The program's name (unique among yours; `programs/NAME` then finds it): made with "
    "that name the first time, updated in place after (an id updates that program).",
)
@click.option("--no-wait", is_flag=True, help="Start it and return at once (exit 0).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=DEPLOY_TIMEOUT,
    show_default=True,
    help="Seconds to wait for READY (exit 1 after).",
)
@click.option("--memory", type=ByteSize(), help="Memory limit, e.g. 512MiB (default: the Host's).")
@click.option("--cpus", type=Cpus(), help="CPU limit, e.g. 0.5 (default: the Host's).")
@click.option(
    "--state", type=ByteSize(), help="Size of the /state volume, e.g. 1GiB (default: the Host's)."
)
@health_options
@click.option("--json", "as_json", is_flag=True, help="Print the Program as JSON at the end.")
@command_options
def deploy_command(
    settings: Settings,
    folder: Path,
    user_id: str | None,
    name: str | None,
    no_wait: bool,
    timeout: float,
    memory: int | None,
    cpus: int | None,
    state: int | None,
    as_json: bool,
    **health: Any,
) -> None:
    """Deploy a folder as a program and wait until it is READY.

    DIR's Dockerfile and files (less what its .dockerignore excludes) become a
    program, which is started; the build log is shown as it runs.

    Prints the program's id on stdout (the Program as JSON with --json); progress,
    the build log and the WatcherAPI's address go to stderr. Exit 1 if the program
    ends in ERROR (with the error and the last build and stderr lines) or is not
    READY within --timeout.

    With --name, a program of that name (or id) is updated in place instead: a
    new revision on the same id and /state, built while the current one runs,
    then switched to; if it fails to build or to become READY the Host runs the
    previous revision again and this exits 1 with the reason. --memory and
    --cpus change the program's limits; left out, they stay as they are.
    """
    try:
        context = read_context(folder)
    except ContextError as error:
        raise click.BadParameter(str(error), param_hint="DIR") from None
    for note in context.skipped:
        err.print(f"skipped {note}", style="yellow")
    ignored = f", {len(context.ignored)} left out by {DOCKERIGNORE}" if context.ignored else ""
    err.print(
        f"Deploying {folder}: Dockerfile and {len(context.files)} files "
        f"({_size(context.size)}){ignored}"
    )
    with settings.client() as client:
        resources = pb.Resources(
            memory_bytes=memory or 0, milli_cpus=cpus or 0, state_bytes=state or 0
        )
        existing = None
        if name is not None:
            with calls(settings):
                existing = rollouts.find_program(client, name)
        if existing is not None:
            given = update_mask(health)
            if given:
                # A deploy carries new source (and limits); settings are `hershy update`'s.
                usage(
                    f"{existing.id} exists: deploy changes its source; change "
                    f"{', '.join(given)} with `hershy update {name} ...`"
                )
            changed = memory is not None or cpus is not None or state is not None
            program = rollouts.redeploy(
                client,
                settings,
                existing,
                context.dockerfile,
                context.files,
                resources if changed else None,
            )
            if program.rollout.phase in rollouts.IN_PROGRESS and not no_wait:
                done = rollouts.follow_rollout(settings, program, timeout)
                _finish(settings, done, as_json, ready=True)
                return
        else:
            program = _create_and_start(
                client,
                settings,
                context.dockerfile,
                context.files,
                user_id,
                resources,
                name or "",
                health_settings(**health),
            )
    if no_wait:
        _finish(settings, program, as_json, ready=False)
        return
    ready = follow_until_ready(settings, program, timeout)
    _finish(settings, ready, as_json, ready=True)


def _create_and_start(
    client: Client,
    settings: Settings,
    dockerfile: str,
    files: dict[str, bytes],
    user_id: str | None,
    resources: pb.Resources,
    alias: str,
    health: dict[str, Any],
) -> pb.Program:
    with calls(settings):
        if user_id is None:
            me = current_token(client, settings)
            if me.admin:
                usage("the admin's token deploys for a user: say which with --user USER")
            user_id = me.user_id
        program = client.create(
            user_id, dockerfile, files, resources=resources, alias=alias, **health
        )
        err.print(
            Text.assemble(
                "Created ",
                (program.id, "bold"),
                f" for {program.user_id} (build {program.build_id[:12]}); starting",
            )
        )
    try:
        return client.start(program)
    except HershyError as error:
        err.print(f"{program.id} was created but could not be started", style="yellow")
        fail(error, settings)


def _finish(settings: Settings, program: pb.Program, as_json: bool, *, ready: bool) -> None:
    url = watcher_url(settings, program.id)
    if ready:
        err.print(
            Text.assemble(
                ("✓ ", "bold green"),
                (program.id, "bold"),
                " is ",
                state_text(program.state),
                f"; its WatcherAPI: {url} (`hershy send {program.id} MESSAGE`)",
            )
        )
    else:
        err.print(
            f"{program.id} is {state_name(program.state)}; follow it with "
            f"`hershy watch {program.id}`. Its WatcherAPI, once READY: {url}"
        )
    if as_json:
        print_json(program)
    else:
        out.print(program.id)
