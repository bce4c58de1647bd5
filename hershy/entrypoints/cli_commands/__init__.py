"""The `hershy` client commands: they talk to a Host, local or remote, over its API.

`register(main)` adds them to the click group in hershy.entrypoints.cli.
"""

from __future__ import annotations

import click

from hershy.entrypoints.cli_commands.common import (
    EXIT_CODES_HELP,
    Exit,
    Settings,
    group_options,
    make_settings,
)
from hershy.entrypoints.cli_commands.config import env_group, secret_group
from hershy.entrypoints.cli_commands.deploy import deploy_command
from hershy.entrypoints.cli_commands.programs import (
    get_command,
    logs_command,
    ls_command,
    restart_command,
    rm_command,
    send_command,
    start_command,
    stop_command,
    watch_command,
)
from hershy.entrypoints.cli_commands.quotas import quota_group
from hershy.entrypoints.cli_commands.rollouts import (
    history_command,
    rollback_command,
    rollout_group,
    update_command,
)
from hershy.entrypoints.cli_commands.tokens import token_group, whoami_command

COMMANDS: tuple[click.Command, ...] = (
    deploy_command,
    ls_command,
    get_command,
    start_command,
    stop_command,
    restart_command,
    rm_command,
    logs_command,
    watch_command,
    send_command,
    token_group,
    whoami_command,
    quota_group,
    env_group,
    secret_group,
    rollout_group,
    update_command,
    history_command,
    rollback_command,
)


#: Under each client command's --help (the whole table is under `hershy --help`).
SHORT_EXIT_CODES = (
    "Exit codes: 0 ok, 1 failed, 2 usage, 3 not found, 4 wrong state, "
    "5 token refused, 6 Host unreachable (see `hershy --help`)."
)


def _with_epilog(command: click.Command) -> None:
    command.epilog = SHORT_EXIT_CODES
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _with_epilog(sub)


def register(group: click.Group) -> None:
    """Add every client command to `group`."""
    for command in COMMANDS:
        _with_epilog(command)
        group.add_command(command)


__all__ = [
    "COMMANDS",
    "EXIT_CODES_HELP",
    "Exit",
    "Settings",
    "group_options",
    "make_settings",
    "register",
]
