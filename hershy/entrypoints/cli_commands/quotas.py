"""`quota get|set` (per-user quotas) and the size and CPU options they share with `deploy`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import click
from google.protobuf.field_mask_pb2 import FieldMask

from hershy.domain.quotas import size_text
from hershy.entrypoints.cli_commands.common import (
    CALL_TIMEOUT,
    Settings,
    calls,
    command_options,
    out,
    print_json,
)
from hershy.v1 import quota_pb2, quota_pb2_grpc
from hershy_client import Client

if TYPE_CHECKING:
    _IntParam = click.ParamType[int]
else:  # click before 8.2 is not generic at run time
    _IntParam = click.ParamType

UNLIMITED_WORDS = frozenset({"unlimited", "none", "-"})
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*")


class ByteSize(_IntParam):
    """`512MiB`, `2GiB`, `1.5G` (binary), `1GB` (decimal) or plain bytes; with
    `unlimited`, also `unlimited`/`none` (returned as -1)."""

    name = "size"

    def __init__(self, unlimited: bool = False) -> None:
        self.unlimited = unlimited

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value)
        if self.unlimited and text.lower() in UNLIMITED_WORDS:
            return -1
        match = _SIZE.fullmatch(text)
        factor = _UNITS.get(match.group(2).lower()) if match else None
        if match is None or factor is None:
            self.fail(f"{text!r} is not a size (e.g. 512MiB, 2GiB)", param, ctx)
        return int(float(match.group(1)) * factor)


class Cpus(_IntParam):
    """CPUs as a number (`0.5`, `2`), in thousandths; `unlimited` as -1 when allowed."""

    name = "cpus"

    def __init__(self, unlimited: bool = False) -> None:
        self.unlimited = unlimited

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value)
        if self.unlimited and text.lower() in UNLIMITED_WORDS:
            return -1
        try:
            cpus = float(text)
        except ValueError:
            self.fail(f"{text!r} is not a number of CPUs (e.g. 0.5, 2)", param, ctx)
        if not 0 <= cpus < 1e9:
            self.fail("must be 0 or more", param, ctx)
        return round(cpus * 1000)


class Count(_IntParam):
    name = "count"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value)
        if text.lower() in UNLIMITED_WORDS:
            return -1
        if not text.isdigit():
            self.fail(f"{text!r} is not a count (or 'unlimited')", param, ctx)
        return int(text)


def quota_stub(client: Client) -> quota_pb2_grpc.QuotaServiceStub:
    return quota_pb2_grpc.QuotaServiceStub(client.channel)


def get_quota(client: Client, settings: Settings, user: str) -> quota_pb2.UserQuota:
    return quota_stub(client).GetUserQuota(
        quota_pb2.GetUserQuotaRequest(name=f"users/{user}/quota"),
        metadata=settings.metadata(),
        timeout=CALL_TIMEOUT,
    )


def quota_lines(quota: quota_pb2.UserQuota) -> list[str]:
    """`programs  1 of 3`, one line per quota: what is used, of what limit."""
    usage = quota.usage

    def bound(present: bool, text: str) -> str:
        return text if present else "unlimited"

    rows = [
        (
            "programs",
            str(usage.programs),
            bound(quota.HasField("max_programs"), str(quota.max_programs)),
        ),
        (
            "memory",
            size_text(usage.memory_bytes),
            bound(quota.HasField("max_memory_bytes"), size_text(quota.max_memory_bytes)),
        ),
        (
            "cpus",
            _cpus(usage.milli_cpus),
            bound(quota.HasField("max_milli_cpus"), _cpus(quota.max_milli_cpus)),
        ),
        (
            "state",
            size_text(usage.state_bytes),
            bound(quota.HasField("max_state_bytes"), size_text(quota.max_state_bytes)),
        ),
    ]
    return [f"  {label:<9} {used} of {limit}" for label, used, limit in rows]


def _cpus(milli: int) -> str:
    return f"{milli / 1000:g}"


@click.group("quota")
def quota_group() -> None:
    """Per-user quotas: programs, memory, CPUs and /state disk (the admin sets them)."""


@quota_group.command("get")
@click.argument("user")
@click.option("--json", "as_json", is_flag=True, help="Print the UserQuota as JSON.")
@command_options
def quota_get_command(settings: Settings, user: str, as_json: bool) -> None:
    """USER's limits and what their programs hold now (a user may read their own)."""
    with settings.client() as client, calls(settings):
        quota = get_quota(client, settings, user)
    if as_json:
        print_json(quota)
        return
    out.print(f"{quota.user_id}:")
    for line in quota_lines(quota):
        out.print(line)


@quota_group.command("set")
@click.argument("user")
@click.option("--programs", type=Count(), help="At most this many programs ('unlimited').")
@click.option(
    "--memory", type=ByteSize(unlimited=True), help="Memory of running programs, e.g. 2GiB."
)
@click.option("--cpus", type=Cpus(unlimited=True), help="CPUs of running programs, e.g. 2.")
@click.option("--state", type=ByteSize(unlimited=True), help="/state disk of all programs.")
@click.option("--json", "as_json", is_flag=True, help="Print the UserQuota as JSON.")
@command_options
def quota_set_command(
    settings: Settings,
    user: str,
    programs: int | None,
    memory: int | None,
    cpus: int | None,
    state: int | None,
    as_json: bool,
) -> None:
    """Change USER's limits (the admin's token); the others stay as they are.

    `unlimited` removes a limit. A limit under what USER holds now refuses new
    programs and starts; nothing running is stopped."""
    given = {
        "max_programs": programs,
        "max_memory_bytes": memory,
        "max_milli_cpus": cpus,
        "max_state_bytes": state,
    }
    paths = [field for field, value in given.items() if value is not None]
    if not paths:
        raise click.UsageError("say which limits to set: --programs, --memory, --cpus, --state")
    quota = quota_pb2.UserQuota(name=f"users/{user}/quota")
    for field, value in given.items():
        if value is not None and value >= 0:
            setattr(quota, field, value)
    with settings.client() as client, calls(settings):
        answer = quota_stub(client).UpdateUserQuota(
            quota_pb2.UpdateUserQuotaRequest(quota=quota, update_mask=FieldMask(paths=paths)),
            metadata=settings.metadata(),
            timeout=CALL_TIMEOUT,
        )
    if as_json:
        print_json(answer)
        return
    out.print(f"{answer.user_id}:")
    for line in quota_lines(answer):
        out.print(line)
