"""Per-user quotas: what one user's programs may hold on the Host, all together. Pure.

The admin sets them; a limit left unset (None) means no limit, and every
user starts with none. What counts:

- `programs` and `state_bytes`: every program that is not deleted (a stopped
  program keeps its `/state` volume on disk);
- `memory_bytes` and `milli_cpus`: the programs that run or may run by
  themselves: building, starting, ready, stopping or in backoff
  (`ACTIVE_STATES`). A program at rest (created, stopped, in error) holds
  none.

They are checked when a program is created (programs, state; a program whose
own memory or CPU is over the limit could never start, so that too) and when
one at rest is started or restarted (memory and CPU; programs and state too,
in case the admin lowered them below what the user holds). A lowered limit
stops nothing that runs and deletes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hershy.domain.errors import InvalidArgument, QuotaExceeded
from hershy.domain.model import ACTIVE_STATES, Program, Resources, State

#: States a Start or Restart takes to a new run: what it adds to the user's use.
STARTS_A_RUN = frozenset({State.CREATED, State.STOPPED, State.ERROR})

#: The quotas, by the name errors and the API use.
QUOTA_NAMES = ("programs", "memory_bytes", "milli_cpus", "state_bytes")


@dataclass(frozen=True, slots=True)
class UserQuota:
    """One user's limits; None: no limit."""

    programs: int | None = None
    memory_bytes: int | None = None
    milli_cpus: int | None = None
    state_bytes: int | None = None


UNLIMITED = UserQuota()


@dataclass(frozen=True, slots=True)
class Usage:
    """What one user's programs hold, counted as the quotas count it."""

    programs: int = 0
    memory_bytes: int = 0
    milli_cpus: int = 0
    state_bytes: int = 0


def validate_quota(quota: UserQuota) -> UserQuota:
    """Limits are whole numbers, 0 or more (0: none allowed); INVALID_ARGUMENT naming one."""
    for name in QUOTA_NAMES:
        value = getattr(quota, name)
        if value is not None and value < 0:
            raise InvalidArgument(
                f"quota.max_{name}", "must not be negative (leave it unset for no limit)"
            )
    return quota


def counts_for_compute(state: State) -> bool:
    """Whether a program in `state` counts against memory and CPU: it runs or may run."""
    return state in ACTIVE_STATES


def usage_of(user_id: str, programs: Iterable[Program]) -> Usage:
    programs_held = memory = cpus = state = 0
    for program in programs:
        if program.user_id != user_id or program.state is State.DELETED:
            continue
        programs_held += 1
        state += program.resources.state_bytes
        if counts_for_compute(program.state):
            memory += program.resources.memory_bytes
            cpus += program.resources.milli_cpus
    return Usage(programs_held, memory, cpus, state)


def size_text(size: int) -> str:
    """Bytes for a person: `512 MiB`, `1.5 GiB`."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.4g} {unit}"
    return f"{size} bytes"


def _cpu_text(milli_cpus: int) -> str:
    return f"{milli_cpus / 1000:g} CPU"


_UNITS = {
    "memory_bytes": ("memory", size_text),
    "milli_cpus": ("CPU", _cpu_text),
    "state_bytes": ("/state disk", size_text),
}


def _over(user_id: str, quota: str, limit: int, used: int, asked: int, when: str) -> QuotaExceeded:
    what, show = _UNITS[quota]
    return QuotaExceeded(
        f"quota {quota} exceeded: {user_id}'s {when} hold {show(used)} of {what}; this "
        f"program's {show(asked)} would pass the limit of {show(limit)} "
        "(ask the admin for more, or stop or delete another program)",
        quota=quota,
        limit=limit,
        usage=used,
    )


def _check(user_id: str, quota: str, limit: int | None, used: int, asked: int, when: str) -> None:
    if limit is not None and used + asked > limit:
        raise _over(user_id, quota, limit, used, asked, when)


def check_create(user_id: str, quota: UserQuota, usage: Usage, resources: Resources) -> None:
    """A new program for `user_id` would fit in their quota; QuotaExceeded naming one if not."""
    if quota.programs is not None and usage.programs + 1 > quota.programs:
        raise QuotaExceeded(
            f"quota programs exceeded: {user_id} has {usage.programs} programs, at most "
            f"{quota.programs} allowed (delete one, or ask the admin for more)",
            quota="programs",
            limit=quota.programs,
            usage=usage.programs,
        )
    _check(
        user_id,
        "state_bytes",
        quota.state_bytes,
        usage.state_bytes,
        resources.state_bytes,
        "programs",
    )
    # Alone over the limit, it could never start.
    for name, limit, asked, used in (
        ("memory_bytes", quota.memory_bytes, resources.memory_bytes, usage.memory_bytes),
        ("milli_cpus", quota.milli_cpus, resources.milli_cpus, usage.milli_cpus),
    ):
        if limit is not None and asked > limit:
            what, show = _UNITS[name]
            raise QuotaExceeded(
                f"quota {name} exceeded: this program asks for {show(asked)} of {what}, more "
                f"than {user_id}'s limit of {show(limit)} for all their running programs "
                f"(they use {show(used)} now); ask for less, or ask the admin for more",
                quota=name,
                limit=limit,
                usage=used,
            )


def check_start(user_id: str, quota: UserQuota, usage: Usage, program: Program) -> None:
    """Starting `program` would fit; nothing to check unless the start begins a new run
    (from rest: a running program already counts, a deleting one is refused anyway)."""
    if program.state not in STARTS_A_RUN:
        return
    if quota.programs is not None and usage.programs > quota.programs:
        raise QuotaExceeded(
            f"quota programs exceeded: {user_id} has {usage.programs} programs, more than the "
            f"{quota.programs} allowed: delete some before starting one",
            quota="programs",
            limit=quota.programs,
            usage=usage.programs,
        )
    resources = program.resources
    running = "programs that run or may run"
    _check(
        user_id,
        "memory_bytes",
        quota.memory_bytes,
        usage.memory_bytes,
        resources.memory_bytes,
        running,
    )
    _check(user_id, "milli_cpus", quota.milli_cpus, usage.milli_cpus, resources.milli_cpus, running)
    # Its own volume is counted already; a limit lowered below the total refuses starts.
    _check(
        user_id,
        "state_bytes",
        quota.state_bytes,
        usage.state_bytes - resources.state_bytes,
        resources.state_bytes,
        "programs",
    )


def check_resize(
    user_id: str, quota: UserQuota, usage: Usage, program: Program, resources: Resources
) -> None:
    """A new revision of `program` with `resources` would fit: a running program's new
    memory and CPU replace its old (at rest, the next start is checked as usual)."""
    if not counts_for_compute(program.state):
        return
    running = "programs that run or may run"
    for name, now, asked in (
        ("memory_bytes", program.resources.memory_bytes, resources.memory_bytes),
        ("milli_cpus", program.resources.milli_cpus, resources.milli_cpus),
    ):
        if asked > now:
            _check(user_id, name, getattr(quota, name), getattr(usage, name) - now, asked, running)
