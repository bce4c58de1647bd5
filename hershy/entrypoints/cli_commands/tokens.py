"""`token create|list|revoke` (the admin's token) and `whoami` (any token)."""

from __future__ import annotations

import click
from rich.table import Table
from rich.text import Text

from hershy.entrypoints.cli_commands.common import (
    CALL_TIMEOUT,
    Settings,
    calls,
    command_options,
    current_token,
    err,
    out,
    print_json,
    timestamp_text,
    token_stub,
)
from hershy.entrypoints.cli_commands.quotas import get_quota, quota_lines
from hershy.v1 import token_pb2

TOKEN_PREFIX = "tokens/"


def token_name(token: str) -> str:
    """`tok-x` or `tokens/tok-x` -> `tokens/tok-x`."""
    return token if token.startswith(TOKEN_PREFIX) else TOKEN_PREFIX + token


@click.group("token")
def token_group() -> None:
    """Make, list and revoke API tokens (needs the admin's token)."""


@token_group.command("create")
@click.argument("user")
@click.option("--json", "as_json", is_flag=True, help="Print the Token (with its secret) as JSON.")
@command_options
def token_create_command(settings: Settings, user: str, as_json: bool) -> None:
    """Make a token for USER; print its secret once.

    The secret is printed alone on stdout (`TOKEN=$(hershy token create bob)`);
    the Host keeps only a hash of it."""
    with settings.client() as client, calls(settings):
        token = token_stub(client).CreateToken(
            token_pb2.CreateTokenRequest(user_id=user),
            metadata=settings.metadata(),
            timeout=CALL_TIMEOUT,
        )
    if as_json:
        print_json(token)
    else:
        click.echo(token.secret)
    err.print(
        f"Token {token.id} for {token.user_id}: the secret is shown this once "
        f"(revoke it with `hershy token revoke {token.id}`)."
    )


@token_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the ListTokensResponse as JSON.")
@command_options
def token_list_command(settings: Settings, as_json: bool) -> None:
    """List every token (never their secrets), oldest first."""
    with settings.client() as client, calls(settings):
        answer = token_stub(client).ListTokens(
            token_pb2.ListTokensRequest(), metadata=settings.metadata(), timeout=CALL_TIMEOUT
        )
    if as_json:
        print_json(answer)
        return
    if not answer.tokens:
        err.print("No tokens.", style="dim")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("ID", "USER", "ADMIN", "CREATED", "REVOKED"):
        table.add_column(column, no_wrap=True)
    for token in answer.tokens:
        revoked = token.HasField("revoke_time")
        table.add_row(
            Text(token.id, style="dim" if revoked else ""),
            token.user_id,
            "yes" if token.admin else "",
            timestamp_text(token.create_time),
            Text(timestamp_text(token.revoke_time), style="red") if revoked else "-",
        )
    out.print(table)


@token_group.command("revoke")
@click.argument("token_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the revoked Token as JSON.")
@command_options
def token_revoke_command(settings: Settings, token_id: str, as_json: bool) -> None:
    """Revoke the token ID (`tok-...`): calls with it fail from now on."""
    with settings.client() as client, calls(settings):
        token = token_stub(client).RevokeToken(
            token_pb2.RevokeTokenRequest(name=token_name(token_id)),
            metadata=settings.metadata(),
            timeout=CALL_TIMEOUT,
        )
    if as_json:
        print_json(token)
    else:
        out.print(f"revoked {token.id} ({token.user_id})")


@click.command("whoami")
@click.option("--json", "as_json", is_flag=True, help="Print the Token as JSON.")
@command_options
def whoami_command(settings: Settings, as_json: bool) -> None:
    """Who the token stands for (GetCurrentToken), and their quota and usage."""
    with settings.client() as client, calls(settings):
        token = current_token(client, settings)
    if as_json:
        print_json(token)
        return
    notes = ["admin"] if token.admin else []
    notes.append(f"token {token.id}" if token.id else "no token needed (the Host runs --no-auth)")
    out.print(f"{token.user_id} ({', '.join(notes)})")
    with settings.client() as client, calls(settings):
        quota = get_quota(client, settings, token.user_id)
    out.print("quota (used of limit):")
    for line in quota_lines(quota):
        out.print(line)
