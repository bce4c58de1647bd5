"""The small interfaces the service layer needs from the outside world.

Adapters implement them (hershy/adapters); tests use fakes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from hershy.domain import events as ev
from hershy.domain.auth import TokenRecord
from hershy.domain.effects import HandledEffect
from hershy.domain.model import LogLine, LogStream, Program
from hershy.domain.quotas import UserQuota
from hershy.domain.validation import ProgramSource


class Clock(Protocol):
    def now(self) -> float:
        """Unix time in seconds."""
        ...


class TimerHandle(Protocol):
    def cancel(self) -> None:
        """The callback will not run (no effect once it has run)."""
        ...


class Timers(Protocol):
    """Every wait of the service layer (backoff, recovery retries, wait deadlines).

    Handed in like time itself, as etcd-io/raft hands its node a `Tick`: the
    real one waits on the event loop's timer; a test's manual clock fires only
    what is due when the test advances it, so "nothing happens for 10 s" is
    checked by stepping 10 s, not by sleeping. An implementation measures
    from the same time as the `Clock` it is paired with.
    """

    def call_later(self, seconds: float, callback: Callable[[], None]) -> TimerHandle:
        """Run `callback` (on the event loop) once `seconds` have passed; <= 0: soon."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once `seconds` have passed; cancellable like `asyncio.sleep`."""
        ...


class EventLog(Protocol):
    """Makes accepted events durable and numbers them (the Host-wide revision)."""

    async def append(self, program: Program, event: ev.Event) -> int: ...

    def owner(self, program_id: str) -> str | None:
        """The user a program belongs (or, deleted, belonged) to; None if it never existed."""
        ...


class IdGenerator(Protocol):
    def new_program_id(self) -> str: ...

    def new_token(self) -> tuple[str, str]:
        """A token's (public id, secret)."""
        ...


class Outbox(Protocol):
    """Where a runtime reports results; given to it with each effect (the program's supervisor)."""

    def now(self) -> float:
        """The Host's time, for the `at` of every event the runtime reports."""
        ...

    def emit(self, event: ev.EffectResult) -> None:
        """Report a result; never blocks, never raises; any task on the Host's loop may call it."""
        ...


@dataclass(frozen=True, slots=True)
class WatcherEndpoint:
    """Where the Host opens HTTP connections to reach one program's WatcherAPI.

    Plain HTTP to a host and port (a loopback port, a pod's address); a runtime
    that must be reached through a route (an API server's proxy path, TLS) will
    need this to grow a base URL.
    """

    host: str
    port: int


class ProgramRuntime(Protocol):
    """Runs programs: builds their images, starts, stops and removes their containers.

    The Docker runtime (`hershy.adapters.docker.runtime`) and the fake
    (`hershy.adapters.fake_runtime`) implement it, and `tests/conformance/`
    checks that they keep every rule below; a cluster runtime must pass the
    same suite. The service layer knows nothing else about a runtime.

    **Lifetime.** A runtime is an async context manager: entered once before
    its first call (it may connect, check itself and start background work,
    e.g. following container deaths), exited when the Host stops. Exiting
    stops its own background work and leaves programs running: they outlive
    the Host and a later instance adopts them.

    **`execute(program_id, effect, outbox)`** carries out one effect of one
    program (`hershy.domain.effects` describes each effect and its results):

    - Every result is an event through `outbox.emit`, carrying the effect's
      `run`, in the order it happened. Raising instead reports the effect as
      failed (the supervisor turns it into the effect's failure event with the
      error's message); an effect that raised has left nothing running.
    - Effects of one program may run concurrently (a stop while a start is
      under way; the supervisor orders the ones that must not).
    - Cancellation (a Stop or Delete while building or starting): before the
      cancelled call returns, it has undone its own work: the build is killed,
      the container it created is removed (and its address given back). It
      reports nothing for the cancelled effect.
    - `StartContainer` reports `ContainerCreated` the moment the container
      exists (so a Stop can always find it by id), with `address`: where the
      program's WatcherAPI is reached. The runtime picks it, anew at every
      start; the service never builds or parses one, it stores what it is
      told and hands it back to `watcher_endpoint`. Then `ContainerReady` once
      `GET /watcher/status` answers 2xx there, or `StartFailed` after removing
      what it created.
    - `StopContainer` is idempotent: a container already gone is success
      (`ContainerStopped`).
    - Crashes: when a container of the program exits without the Host asking
      (its process ended, it was OOM-killed, someone removed it), the runtime
      reports `ContainerExited` (exit code, `oom_killed`, container id),
      once, through the outbox of the program's most recent effect, after
      the container's last output lines are in the program's log.
    - Output: what a container writes to stdout and stderr goes into the
      `LogStore`, each line once, in order, told apart by stream and run,
      also across a Host restart (nothing printed meanwhile is lost).
    - `Teardown` removes everything the program owns in the runtime and on
      disk: its containers, its images, its `/state` volume and its source
      folder (`SourceStore.remove`); then `TornDown`.
    - `AdoptContainer` (after a Host restart, a container the store says
      runs): takes that same container back as it is, no restart, and from
      then on reports its death through this effect's outbox; if it is gone
      or dead, reports `ContainerExited` (after its last lines) instead.

    **`reap(owned)`** is called once after a Host restart, after every program
    was recovered and before any of their supervisors runs. It looks at
    everything this Host's runtime made (never another Host's): the output of
    containers a program owns (`owned[program_id]` is the container's run)
    is copied on from where the copy stopped; every other container, and
    every image and `/state` volume of a program not in `owned`, is removed.
    `owned` is read as each decision is made. Something that vanishes
    meanwhile is no error; raising makes the registry retry the whole step
    with backoff.

    **`runtime`** says how programs run, as users are shown it on every
    program (e.g. "runsc (gVisor, network=netstack)", "fake"); an insecure
    runtime says so.

    **`watcher_endpoint(address)`** is where the Host connects for a program
    whose address is `address`, or None when `address` is not one this
    runtime hands out (the proxy then refuses the request: even a corrupted
    store cannot send it to the Host's own services). It accepts every
    address the runtime ever reported, also by an older version of the Host
    (stored programs keep working after an upgrade).
    """

    #: How programs run, as shown to users (e.g. "runsc (gVisor, network=host)").
    runtime: str

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    async def execute(self, program_id: str, effect: HandledEffect, outbox: Outbox) -> None: ...

    async def reap(self, owned: Mapping[str, int]) -> None: ...

    def watcher_endpoint(self, address: str) -> WatcherEndpoint | None: ...


#: The name the service layer used first; the same port.
EffectHandler = ProgramRuntime


class BaseImageResolver(Protocol):
    """Resolves the Host's base-image allowlist to image ids, once, when the Host starts."""

    async def resolve_base_images(self, names: Sequence[str]) -> dict[str, str]:
        """Each name's image id; raises when one is missing or cannot be used as a base."""
        ...


class SourceStore(Protocol):
    """Keeps each program's build inputs."""

    async def save(self, program_id: str, source: ProgramSource) -> None: ...

    async def load(self, program_id: str) -> ProgramSource: ...

    async def remove(self, program_id: str) -> None:
        """Remove the program's sources and its folder with all in it; gone already is fine."""
        ...

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


class ProgramFolders(SourceStore, Protocol):
    """A source store that keeps each program in a folder of its own on the Host's disk,
    where a runtime on this Host may keep its files too (a container spec, `/state`).
    Removing the program's sources removes the folder."""

    @property
    def root(self) -> Path:
        """The folder that holds every program's folder."""
        ...

    def program_dir(self, program_id: str) -> Path: ...


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

    async def prepare(self, program_id: str) -> None:
        """Get ready for a new program's lines (off the event loop); writing without it works."""
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
