"""`env set|ls|rm` and `secret set|ls|rm`: a program's configuration, without a rebuild.

A secret's value is read from stdin or `--from-file`, never from the command
line (argv shows in `ps` and shell histories), and is never printed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hershy.entrypoints.cli_commands.common import (
    CALL_TIMEOUT,
    Settings,
    calls,
    command_options,
    err,
    out,
    print_json,
)
from hershy.v1 import config_pb2, config_pb2_grpc
from hershy_client import Client


def config_stub(client: Client) -> config_pb2_grpc.ProgramConfigServiceStub:
    return config_pb2_grpc.ProgramConfigServiceStub(client.channel)


def program_name(program: str) -> str:
    """An id or an alias (`bot`), or a full name (`programs/bot`, `users/u/programs/bot`)."""
    if program.startswith(("programs/", "users/")):
        return program
    return f"programs/{program}"


RESTART_HINT = "restart the program to hand it over (`hershy restart PROGRAM`)"


@click.group("env")
def env_group() -> None:
    """A program's environment variables (plain; the next start uses them)."""


@env_group.command("set")
@click.argument("program")
@click.argument("assignments", nargs=-1, required=True, metavar="NAME=VALUE...")
@click.option("--json", "as_json", is_flag=True, help="Print the Program as JSON.")
@command_options
def env_set_command(
    settings: Settings, program: str, assignments: tuple[str, ...], as_json: bool
) -> None:
    """Set variables of PROGRAM (an id or a name). Not for secrets: see `hershy secret set`."""
    values = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep:
            raise click.BadParameter(f"{name!r} is not NAME=VALUE", param_hint="NAME=VALUE")
        values[name] = value
    _change_env(settings, program, values, [], as_json)


@env_group.command("rm")
@click.argument("program")
@click.argument("names", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the Program as JSON.")
@command_options
def env_rm_command(settings: Settings, program: str, names: tuple[str, ...], as_json: bool) -> None:
    """Remove variables of PROGRAM."""
    _change_env(settings, program, {}, list(names), as_json)


@env_group.command("ls")
@click.argument("program")
@command_options
def env_ls_command(settings: Settings, program: str) -> None:
    """PROGRAM's variables, NAME=VALUE a line."""
    with settings.client() as client, calls(settings):
        answer = client.get(program_name(program))
    for name in sorted(answer.env):
        out.print(f"{name}={answer.env[name]}", markup=False, highlight=False)


def _change_env(
    settings: Settings, program: str, values: dict[str, str], unset: list[str], as_json: bool
) -> None:
    with settings.client() as client, calls(settings):
        answer = config_stub(client).SetProgramEnv(
            config_pb2.SetProgramEnvRequest(name=program_name(program), set=values, unset=unset),
            metadata=settings.metadata(),
            timeout=CALL_TIMEOUT,
        )
    if as_json:
        print_json(answer)
        return
    err.print(f"{answer.id}: {len(answer.env)} variables; {RESTART_HINT}")


@click.group("secret")
def secret_group() -> None:
    """A program's secrets: write-only, at /run/secrets/NAME inside it."""


@secret_group.command("set")
@click.argument("program")
@click.argument("name")
# Anything more is refused without being repeated: it would be a value typed on the command line.
@click.argument("refused", nargs=-1, metavar="", expose_value=True)
@click.option(
    "--from-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the value from this file (default: stdin).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the Secret as JSON.")
@command_options
def secret_set_command(
    settings: Settings,
    program: str,
    name: str,
    refused: tuple[str, ...],
    from_file: Path | None,
    as_json: bool,
) -> None:
    """Set secret NAME of PROGRAM from stdin (or --from-file); never from the command line.

    `printf %s "$KEY" | hershy secret set bot API_KEY`. A terminal's stdin is read up to
    end of input (Ctrl-D); one trailing newline is dropped when typed there."""
    if refused:
        raise click.UsageError(
            "the value is read from stdin or --from-file, never from the command line "
            "(arguments show in `ps` and shell histories: consider that value exposed)"
        )
    if from_file is not None:
        value = from_file.read_bytes()
    else:
        if sys.stdin.isatty():
            err.print("Type the value, then Ctrl-D:")
        value = sys.stdin.buffer.read()
        if sys.stdin.isatty() and value.endswith(b"\n"):
            value = value[:-1]
    with settings.client() as client, calls(settings):
        answer = config_stub(client).SetSecret(
            config_pb2.SetSecretRequest(parent=program_name(program), secret_id=name, value=value),
            metadata=settings.metadata(),
            timeout=CALL_TIMEOUT,
        )
    if as_json:
        print_json(answer)
        return
    note = f"; {answer.status_note}" if answer.status_note else ""
    err.print(f"{answer.secret_id} is at version {answer.version}{note}")


@secret_group.command("ls")
@click.argument("program")
@click.option("--json", "as_json", is_flag=True, help="Print the ListSecretsResponse as JSON.")
@command_options
def secret_ls_command(settings: Settings, program: str, as_json: bool) -> None:
    """PROGRAM's secrets: name, version, last set (never a value)."""
    with settings.client() as client, calls(settings):
        answer = config_stub(client).ListSecrets(
            config_pb2.ListSecretsRequest(parent=program_name(program)),
            metadata=settings.metadata(),
            timeout=CALL_TIMEOUT,
        )
    if as_json:
        print_json(answer)
        return
    for secret in answer.secrets:
        stamp = secret.update_time.ToJsonString()
        line = f"{secret.secret_id:<24} v{secret.version:<5} {stamp}"
        out.print(line, markup=False, highlight=False)


@secret_group.command("rm")
@click.argument("program")
@click.argument("name")
@command_options
def secret_rm_command(settings: Settings, program: str, name: str) -> None:
    """Remove secret NAME of PROGRAM (a restart takes it away from the program)."""
    with settings.client() as client, calls(settings):
        answer = config_stub(client).DeleteSecret(
            config_pb2.DeleteSecretRequest(name=f"{program_name(program)}/secrets/{name}"),
            metadata=settings.metadata(),
            timeout=CALL_TIMEOUT,
        )
    note = f"; {answer.status_note}" if answer.status_note else ""
    err.print(f"{answer.secret_id} removed{note}")
