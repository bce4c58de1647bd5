"""The small interfaces the service layer needs from the outside world.

Adapters implement them (hershy/adapters); tests use fakes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Protocol

from hershy.domain import events as ev
from hershy.domain.auth import TokenRecord
from hershy.domain.effects import HandledEffect
from hershy.domain.model import LogLine, LogStream
from hershy.domain.quotas import UserQuota
from hershy.domain.validation import ProgramSource


class Clock(Protocol):
    def now(self) -> float:
        """Unix time in seconds."""
        ...


class IdGenerator(Protocol):
    def new_program_id(self) -> str: ...

    def new_token(self) -> tuple[str, str]:
        """A token's (public id, secret)."""
        ...


class Outbox(Protocol):
    """Where an effect handler reports results; given to it with each effect."""

    def now(self) -> float: ...

    def emit(self, event: ev.EffectResult) -> None: ...


class EffectHandler(Protocol):
    """Carries out effects against a container runtime.

    `execute` reports every result through `outbox.emit`, with the effect's
    run. Raising reports the effect as failed. When the task running it is
    cancelled (the program is being stopped), it must undo what it started
    (kill the build, remove the container it created) before it returns.
    """

    #: How programs run, as shown to users (e.g. "runsc (network=host)").
    runtime: str

    async def execute(self, program_id: str, effect: HandledEffect, outbox: Outbox) -> None: ...

    async def reap(self, owned: Mapping[str, int]) -> None:
        """Reconcile after a Host restart: take note of what runs (and copy the output
        written meanwhile), then remove containers and images of programs not in
        `owned` or of old runs.

        `owned` maps each live program to its current run, read as each decision
        is made. Called once every program has been recovered and before any of
        their supervisors runs; raising makes the registry retry it with backoff.
        """
        ...


class BaseImageResolver(Protocol):
    """Resolves the Host's base-image allowlist to image ids, once, when the Host starts."""

    async def resolve_base_images(self, names: Sequence[str]) -> dict[str, str]:
        """Each name's image id; raises when one is missing or cannot be used as a base."""
        ...


class SourceStore(Protocol):
    """Keeps each program's build inputs."""

    async def save(self, program_id: str, source: ProgramSource) -> None: ...

    async def load(self, program_id: str) -> ProgramSource: ...

    async def remove(self, program_id: str) -> None: ...

    # The sources of revisions, by build id (the Create source is one of them).

    async def save_build(self, program_id: str, build: str, source: ProgramSource) -> bool:
        """Keep a revision's source; False if that build's source was kept already."""
        ...

    async def load_build(self, program_id: str, build: str) -> ProgramSource:
        """One build's source; NotFound if it is not kept (never another build's)."""
        ...

    async def remove_build(self, program_id: str, build: str) -> None: ...

    async def prune_builds(self, program_id: str, keep: frozenset[str]) -> None:
        """Remove the sources of builds not in `keep`."""
        ...


class LogStore(Protocol):
    """Keeps each program's log lines (builds, stdout, stderr, Host notes)."""

    def write(self, program_id: str, line: LogLine) -> None:
        """Append a line; never blocks for long, never raises for a full follower."""
        ...

    def lines(
        self, program_id: str, tail: int | None, streams: Collection[LogStream], follow: bool
    ) -> AsyncIterator[LogLine]:
        """The lines so far (the last `tail`, of `streams`; empty: all); with
        `follow`, then every new one until the logs are removed. Nothing is
        lost or repeated between the two parts."""
        ...

    def last_mark(self, program_id: str, prefix: str) -> tuple[str, int] | None:
        """The mark (`LogLine.mark`) of the newest line whose mark starts with
        `prefix`, and how many lines carry exactly that mark; None if none does."""
        ...

    async def remove(self, program_id: str) -> None: ...


class TokenStore(Protocol):
    """Keeps API tokens (their hashes, never their secrets)."""

    def tokens(self) -> list[TokenRecord]: ...

    async def save_token(self, record: TokenRecord) -> None: ...

    async def revoke_token(self, token_id: str, at: float) -> None: ...


class QuotaStore(Protocol):
    """Keeps the admin's per-user quotas."""

    def quotas(self) -> dict[str, UserQuota]: ...

    async def save_quota(self, user_id: str, quota: UserQuota) -> None: ...
