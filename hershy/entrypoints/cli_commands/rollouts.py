"""`hershy deploy --name` updates, `rollout status`, `history`, `rollback`: revisions in place."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.table import Table
from rich.text import Text

from hershy.entrypoints.cli_commands.common import (
    CliError,
    Exit,
    Settings,
    ago,
    calls,
    command_options,
    err,
    out,
    print_json,
    report_program,
    state_name,
    state_text,
    usage,
)
from hershy.entrypoints.cli_commands.health import health_options, health_settings, update_mask
from hershy.entrypoints.cli_commands.quotas import ByteSize, Cpus
from hershy.v1 import program_pb2 as pb
from hershy_client import Client, NotFound, Resync

F = TypeVar("F", bound=Callable[..., Any])

#: Rollout phases in which the Host is still moving the program between revisions.
IN_PROGRESS = {
    pb.ROLLOUT_PHASE_BUILDING,
    pb.ROLLOUT_PHASE_SWITCHING,
    pb.ROLLOUT_PHASE_REVERTING,
}
#: States a program passes through during a switch (not where it settles).
MOVING = {pb.STATE_BUILDING, pb.STATE_STARTING, pb.STATE_STOPPING}
#: At rest: a deploy is applied, and the next start runs it.
AT_REST = {pb.STATE_CREATED, pb.STATE_STOPPED, pb.STATE_ERROR}


def phase_name(phase: int) -> str:
    return pb.RolloutPhase.Name(phase).removeprefix("ROLLOUT_PHASE_")  # type: ignore[arg-type]


def find_program(client: Client, name: str) -> pb.Program | None:
    """The caller's program called `name` (`programs/{name}`: an alias, or an id); None if none."""
    try:
        return client.get(name)
    except NotFound:
        return None


def rollout_line(program: pb.Program) -> Text:
    if not program.HasField("rollout"):
        return Text(f"{program.id}: revision {program.revision_number}, never redeployed")
    rollout = program.rollout
    style = {
        "SUCCEEDED": "green",
        "REVERTED": "yellow",
        "FAILED": "red",
        "CANCELLED": "yellow",
    }.get(phase_name(rollout.phase), "cyan")
    text = Text.assemble(
        f"{program.id}: revision {rollout.previous_revision_number} → "
        f"{rollout.target_revision_number} ",
        (phase_name(rollout.phase), f"bold {style}"),
        "; runs revision ",
        str(program.revision_number),
        " (",
        state_text(program.state),
        ")",
    )
    if rollout.reason:
        text.append(f": {rollout.reason}")
    return text


def follow_rollout(settings: Settings, program: pb.Program, timeout: float) -> pb.Program:
    """Follow the program until its rollout to `program.latest_revision_number` ended."""
    target = program.latest_revision_number
    watch_client = settings.client()
    timer = threading.Timer(timeout, watch_client.close)
    timer.daemon = True
    latest = program
    shown = -1
    try:
        with calls(settings):
            timer.start()
            for item in watch_client.watch_forever(program_id=program.id):
                if isinstance(item, Resync) or not item.HasField("program"):
                    continue
                latest = item.program
                rollout = latest.rollout
                if rollout.target_revision_number != target:
                    continue
                if rollout.phase != shown:
                    shown = rollout.phase
                    err.print(rollout_line(latest))
                if rollout.phase not in IN_PROGRESS and latest.state not in MOVING:
                    break
    finally:
        timer.cancel()
        watch_client.close()
    rollout = latest.rollout
    if rollout.target_revision_number != target or rollout.phase in IN_PROGRESS:
        raise CliError(
            f"the rollout of {program.id} to revision {target} has not ended after "
            f"{timeout:g} s; it carries on: `hershy rollout status {program.id}`",
            Exit.FAILED,
        )
    if rollout.phase != pb.ROLLOUT_PHASE_SUCCEEDED:
        raise CliError(
            f"revision {target} of {program.id} is {phase_name(rollout.phase)}: "
            f"{rollout.reason or 'no reason given'}",
            Exit.FAILED,
        )
    return latest


@click.group("rollout")
def rollout_group() -> None:
    """Deploys in place: where the latest one is."""


@rollout_group.command("status")
@click.argument("program")
@click.option("--json", "as_json", is_flag=True, help="Print the Program as JSON.")
@command_options
def rollout_status_command(settings: Settings, program: str, as_json: bool) -> None:
    """The latest deploy of PROGRAM (its name or id): target, phase, and why it ended so."""
    with settings.client() as client, calls(settings):
        found = client.get(program)
    if as_json:
        print_json(found)
        return
    out.print(rollout_line(found))


@click.command("history")
@click.argument("program")
@click.option("--json", "as_json", is_flag=True, help="Print the revisions as JSON.")
@command_options
def history_command(settings: Settings, program: str, as_json: bool) -> None:
    """PROGRAM's revisions, newest first: build, resources, who, when, how."""
    with settings.client() as client, calls(settings):
        found = client.get(program)
        revisions = client.revisions(found)
    if as_json:
        print_json(pb.ListProgramRevisionsResponse(revisions=revisions))
        return
    table = Table(box=None, pad_edge=False)
    for column in ("REV", "BUILD", "MEMORY", "CPUS", "BY", "AGE", "KEPT", "WHAT", "CHANGED"):
        table.add_column(column)
    for revision in revisions:
        mark = "*" if revision.current else " "
        table.add_row(
            f"{mark}{revision.number}",
            revision.build_id[:14],
            f"{revision.resources.memory_bytes // 1024**2} MiB",
            f"{revision.resources.milli_cpus / 1000:g}",
            revision.create_user,
            ago(revision.create_time),
            "yes" if revision.kept else "no",
            revision.description,
            changed_text(revision),
        )
    out.print(table)


def changed_text(revision: pb.ProgramRevision) -> str:
    """What a revision changed from the one before it, for a person."""
    if revision.number == 1:
        return "-"
    changed = list(revision.changed_fields)
    if not changed:
        return "nothing"
    return ", ".join("source" if path == "build_id" else path for path in changed)


def wait_options(began: str) -> Callable[[F], F]:
    """--no-wait, --timeout and --json of a command that starts a rollout (of `began`)."""

    def decorate(command: F) -> F:
        command = click.option(
            "--json", "as_json", is_flag=True, help="Print the Program as JSON at the end."
        )(command)
        command = click.option(
            "--timeout",
            type=click.FloatRange(min=1),
            default=600.0,
            show_default=True,
            help="Seconds to wait until it ended (exit 1 after).",
        )(command)
        return click.option("--no-wait", is_flag=True, help=f"Return once the {began} began.")(
            command
        )

    return decorate


@click.command("update")
@click.argument("program")
@click.option("--memory", type=ByteSize(), help="Memory limit, e.g. 256MiB (0: the Host's).")
@click.option("--cpus", type=Cpus(), help="CPU limit, e.g. 0.5 (0: the Host's).")
@health_options
@wait_options("rollout")
@command_options
def update_command(
    settings: Settings,
    program: str,
    memory: int | None,
    cpus: int | None,
    no_wait: bool,
    timeout: float,
    as_json: bool,
    **health: Any,
) -> None:
    """Change PROGRAM's limits, readiness check, restart policy or stop settings.

    Only the options given change (`hershy update bot --restart on-failure
    --memory 256MiB --ready-timeout 30`): a new revision of the same source,
    rolled out like a deploy (the program restarts on it, and goes back to the
    previous revision by itself if it never becomes READY; exit 1 then, with
    the reason). Its variables and secrets are not part of a revision: `hershy
    env`, `hershy secret`.
    """
    paths = update_mask(health)
    resources = pb.Resources(memory_bytes=memory or 0, milli_cpus=cpus or 0)
    if memory is not None:
        paths.append("resources.memory_bytes")
    if cpus is not None:
        paths.append("resources.milli_cpus")
    if not paths:
        usage("say what to change: --memory, --cpus, --restart, --ready-timeout, ... (--help)")
    fields: dict[str, Any] = {
        "readiness": pb.ReadinessCheck(),
        "restart_policy": pb.RestartPolicy(),
        "stop": pb.StopSettings(),
    }
    fields.update(health_settings(**health))
    with settings.client() as client, calls(settings):
        found = client.get(program)
        started = client.update(found, resources=resources, update_mask=paths, **fields)
    err.print(
        f"{started.id}: rolling out revision {started.latest_revision_number} "
        f"({', '.join(paths)} changed)"
    )
    done = started
    if not no_wait and started.rollout.phase in IN_PROGRESS:
        done = follow_rollout(settings, started, timeout)
    report_program(done, as_json)


@click.command("rollback")
@click.argument("program")
@click.argument("revision", type=click.IntRange(min=1), required=False)
@wait_options("rollback")
@command_options
def rollback_command(
    settings: Settings,
    program: str,
    revision: int | None,
    no_wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Roll PROGRAM back to a kept REVISION (default: the one before the current).

    It is a new revision with that revision's source and resources, rolled out
    like a deploy (reverted by itself if it fails). Exit 1 if it was reverted.
    """
    with settings.client() as client, calls(settings):
        found = client.get(program)
        started = client.rollback(found, revision or 0)
    err.print(
        f"{started.id}: rolling out revision {started.latest_revision_number} "
        f"(the source and resources of revision "
        f"{revision or 'before ' + str(found.revision_number)})"
    )
    done = started if no_wait else follow_rollout(settings, started, timeout)
    report_program(done, as_json)


def redeploy(
    client: Client,
    settings: Settings,
    program: pb.Program,
    dockerfile: str,
    files: dict[str, bytes],
    resources: pb.Resources | None,
) -> pb.Program:
    """`hershy deploy --name` of a program that exists: a new revision, started if at rest."""
    with calls(settings):
        deployed = client.deploy(program, dockerfile, files, resources)
        err.print(
            Text.assemble(
                "Updating ",
                (deployed.id, "bold"),
                f" to revision {deployed.latest_revision_number} "
                f"(it is {state_name(deployed.state)})",
            )
        )
        if deployed.state in AT_REST:
            deployed = client.start(deployed)
    return deployed


__all__ = [
    "find_program",
    "follow_rollout",
    "history_command",
    "redeploy",
    "rollback_command",
    "rollout_group",
    "update_command",
]
