"""The registry: every program, its supervisor, and the one place changes are committed.

A change is committed in one step: the event log assigns the Host-wide
revision, the registry's view is updated, and the change is published to
Watch subscribers, in revision order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from types import TracebackType

from hershy.domain import events as ev
from hershy.domain import quotas, reducer, revisions
from hershy.domain.auth import ADMIN_USER
from hershy.domain.build_policy import BuildPolicy, check_dockerfile
from hershy.domain.config import SecretInfo, changed_env, validate_alias, validate_env
from hershy.domain.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    HershyError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from hershy.domain.limits import MAX_WAIT_SECONDS
from hershy.domain.model import (
    ACTIVE_STATES,
    BackoffPolicy,
    LogLine,
    LogStream,
    Program,
    ReadinessCheck,
    Resources,
    RestartPolicy,
    Revision,
    RunSettings,
    State,
    StopSettings,
)
from hershy.domain.revisions import Configuration
from hershy.domain.validation import (
    ProgramSource,
    ResourcePolicy,
    SourceLimits,
    build_id,
    cut,
    resolve_resources,
    validate_program_id,
    validate_readiness,
    validate_restart_policy,
    validate_source,
    validate_stop,
    validate_user_id,
)
from hershy.service.deadlines import deadline
from hershy.service.metrics import Metrics
from hershy.service.paging import Page, page_of
from hershy.service.ports import (
    Clock,
    EffectHandler,
    EventLog,
    IdGenerator,
    LogStore,
    SourceStore,
    Timers,
)
from hershy.service.quotas import Quotas
from hershy.service.recovery import LiveRuns, Recovery
from hershy.service.secrets import MemorySecretStore, Secrets
from hershy.service.supervisor import Supervisor
from hershy.service.watch import (
    Change,
    ChangeKind,
    Closed,
    OlderChanges,
    Subscription,
    WatchHub,
)
from hershy.service.work_queue import WorkQueue

log = logging.getLogger(__name__)

DEFAULT_LIMITS = SourceLimits()
DEFAULT_RESOURCES = ResourcePolicy()
#: Threads that check and hash sources being created.
SOURCE_CHECK_WORKERS = 2
#: A source at most this big (files, and bytes of them all with the Dockerfile) is
#: checked and hashed on the loop: tens of microseconds, less than the hop to a
#: worker thread and back costs (a third of a small create's time in the Host).
INLINE_CHECK_FILES = 64
INLINE_CHECK_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class WatchStart:
    """How a Watch stream begins: a snapshot (or the changes since a revision), then live."""

    snapshot: list[Program] | None
    replay: list[Change]
    revision: int
    subscription: Subscription


class Registry:
    def __init__(
        self,
        *,
        handler: EffectHandler,
        sources: SourceStore,
        logs: LogStore,
        clock: Clock,
        timers: Timers,
        ids: IdGenerator,
        event_log: EventLog,
        hub: WatchHub | None = None,
        policy: BackoffPolicy = reducer.DEFAULT_POLICY,
        limits: SourceLimits = DEFAULT_LIMITS,
        resource_policy: ResourcePolicy = DEFAULT_RESOURCES,
        metrics: Metrics | None = None,
        build_policy: BuildPolicy | None = None,
        quotas: Quotas | None = None,
        secrets: Secrets | None = None,
    ) -> None:
        """`build_policy`: what a Dockerfile may use; None only for tests over fakes.

        `secrets`: programs' secrets (sealed in the store); by default in memory only.
        """
        self.secrets = secrets or Secrets(MemorySecretStore(), _InMemoryOnly(), clock)
        #: (user, alias) -> program id: each user's names, unique per user.
        self._aliases: dict[tuple[str, str], str] = {}
        self._handler = handler
        self._build_policy = build_policy
        self.quotas = quotas or Quotas()
        self._sources = sources
        self._logs = logs
        self._resource_policy = resource_policy
        self._clock = clock
        self._timers = timers
        self._ids = ids
        self._log = event_log
        self.hub = hub or WatchHub()
        self._policy = policy
        self._limits = limits
        self._programs: dict[str, Program] = {}
        #: Each live program's revisions, oldest first (the store keeps them too), read
        #: from `_stored_revisions` when first needed: a restart reads none of them.
        self._revisions: dict[str, list[Revision]] = {}
        self._stored_revisions: Callable[[str], list[Revision]] | None = None
        self._supervisors: dict[str, Supervisor] = {}
        self._supervisor_tasks: dict[str, asyncio.Task[None]] = {}
        self._order: dict[str, int] = {}
        self._created = 0
        self._tasks: asyncio.TaskGroup | None = None
        #: Done once the last commit begun was taken in (commits are taken in in order).
        self._last_commit: asyncio.Future[None] | None = None
        self._runs = LiveRuns(self._programs)
        self._recovery = Recovery(handler, timers, self._runs)
        self._source_checks = WorkQueue("hershy-source-checks", SOURCE_CHECK_WORKERS, 8)
        self.metrics = metrics or Metrics()
        self.metrics.watch(lambda: self._programs.values(), lambda: self.hub.subscriber_count)

    @property
    def runtime(self) -> str:
        return self._handler.runtime

    # --- lifetime -------------------------------------------------------------

    async def __aenter__(self) -> Registry:
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Ends Watch streams and supervisors; effects in flight are cancelled."""
        assert self._tasks is not None
        self.hub.close()
        self._recovery.cancel()  # still retrying a runtime that fails: give up, we exit
        for task in self._supervisor_tasks.values():
            task.cancel()
        await self._tasks.__aexit__(exc_type, exc, traceback)

    async def recover(self, programs: list[Program], revision: int, older: OlderChanges) -> None:
        """Take back the programs a store holds after a Host restart, and resume each.

        Returns at once; recovery goes on in a task the registry owns, as ONE
        ordered step (`service/recovery.py`): the runtime is reconciled first,
        retried with backoff for as long as it fails, and only then do the
        supervisors run, each starting with `HostRestarted` (so what was under
        way is finished or redone and running containers are adopted; where they
        are reached is the runtime's business: it learns that from the containers).
        Requests to recovered programs wait in their supervisor's inbox until
        then; `not_ready_reason` says why the Host is not ready meanwhile.
        """
        assert self._tasks is not None, "use the registry as an async context manager"
        self.hub.start_at(revision, older)
        gate = self._recovery.close_gate()
        restarted = ev.HostRestarted(self._clock.now())
        for program in programs:
            self._number(program.id)
            self._programs[program.id] = program
            self._index_alias(None, program)
            # Only a program with something to do (a run to adopt, a timer, an effect)
            # gets its supervisor now: at rest, the restart changes nothing, and the
            # supervisor is made when a request first comes (10,000 of them took 5 s).
            outcome = reducer.reduce(program, restarted, self._policy)
            if isinstance(outcome, reducer.Ignored) and not outcome.effects:
                continue
            supervisor = self._spawn(program, after=gate)
            # First in its inbox: nothing a user asks meanwhile is applied before it.
            supervisor.emit(restarted)
            self._recovery.hold(supervisor)
        self._recovery.begin(self._tasks)

    def not_ready_reason(self) -> str | None:
        """Why the Host is not ready yet (recovery still under way), or None once it is."""
        return self._recovery.not_ready_reason()

    async def stop_all(self, seconds: float) -> None:
        """Stop every program that runs and wait (at most `seconds`) until they are at rest."""
        stopping = []
        for program in list(self._programs.values()):
            if program.state in ACTIVE_STATES:
                with contextlib.suppress(FailedPrecondition, NotFound):
                    await self.stop(program.id)
                    stopping.append(program.id)
        waits = [self._until_at_rest(program_id, seconds) for program_id in stopping]
        await asyncio.gather(*waits)

    async def _until_at_rest(self, program_id: str, seconds: float) -> None:
        with contextlib.suppress(HershyError):
            await self.wait(program_id, State.STOPPED, seconds)

    async def reconciled(self) -> None:
        """Returns once the runtime was reconciled and every recovered program compared with it."""
        await self._recovery.reconciled()

    def runs(self) -> Mapping[str, int]:
        """Each program's current run, as it is when read: what the Host owns (reap the rest)."""
        return self._runs

    # --- commands ---------------------------------------------------------------

    async def create(
        self,
        user_id: str,
        dockerfile: str,
        src_files: Mapping[str, bytes],
        resources: Resources | None = None,
        *,
        alias: str = "",
        env: Mapping[str, str] | None = None,
        readiness: ReadinessCheck = ReadinessCheck(),
        restart_policy: RestartPolicy = RestartPolicy(),
        stop: StopSettings = StopSettings(),
    ) -> Program:
        """Validate, store the source, and register the program (in CREATED).

        `resources` fields left at 0 take the Host's defaults. The user's quota
        (and that `alias`, if given, is not one of the user's names yet) is
        checked and the program committed under the user's lock.
        """
        validate_user_id(user_id)
        if alias:
            validate_alias(alias)
        variables = validate_env(env or {})
        settings = (
            validate_readiness(readiness),
            validate_restart_policy(restart_policy),
            validate_stop(stop),
        )
        async with self.quotas.held(user_id):
            return await self._create(
                user_id, dockerfile, src_files, resources, alias, variables, settings
            )

    async def _checked(
        self, dockerfile: str, src_files: Mapping[str, bytes]
    ) -> tuple[ProgramSource, str]:
        """The source checked and its build id: a small one here, a big one on a thread.

        10,000 files take tens of ms to check and hash: off the loop, so one
        tenant's creates do not hold every other tenant's calls that long.
        """
        if len(src_files) <= INLINE_CHECK_FILES and (
            len(dockerfile) + sum(map(len, src_files.values())) <= INLINE_CHECK_BYTES
        ):
            return _checked_source(dockerfile, src_files, self._limits)
        return await self._source_checks.run(_checked_source, dockerfile, src_files, self._limits)

    async def _create(
        self,
        user_id: str,
        dockerfile: str,
        src_files: Mapping[str, bytes],
        resources: Resources | None,
        alias: str = "",
        env: tuple[tuple[str, str], ...] = (),
        settings: tuple[ReadinessCheck, RestartPolicy, StopSettings] = (
            ReadinessCheck(),
            RestartPolicy(),
            StopSettings(),
        ),
    ) -> Program:
        source, inputs_id = await self._checked(dockerfile, src_files)
        asked = resources or Resources(0, 0, 0, 0)
        limits = resolve_resources(
            asked.memory_bytes,
            asked.milli_cpus,
            asked.pids,
            self._resource_policy,
            state_bytes=asked.state_bytes,
        )
        if self._build_policy is not None:
            # Refused here, naming the line, before Docker ever sees the Dockerfile.
            check_dockerfile(source.dockerfile, self._build_policy)
        quota = self.quotas.get(user_id)
        if quota != quotas.UNLIMITED:  # the usage is a walk over every program: only if it counts
            quotas.check_create(user_id, quota, self.usage(user_id), limits)
        if alias:
            self._check_alias_free(user_id, alias)
        program_id = self._ids.new_program_id()
        try:
            # Side by side, each on its own threads: the source's writes and syncs do
            # not wait for the log's folder, nor it for them. Both end before either's
            # failure is raised, so the clean-up below never races a write still going.
            saved, prepared = await asyncio.gather(
                self._sources.save(program_id, source),
                self._logs.prepare(program_id),
                return_exceptions=True,
            )
            for outcome in (saved, prepared):
                if isinstance(outcome, BaseException):
                    raise outcome
            event = ev.ProgramCreated(
                at=self._clock.now(),
                program_id=program_id,
                user_id=user_id,
                build_id=inputs_id,
                # None yet: the runtime places the program when it starts.
                resources=limits,
                alias=alias,
                env=env,
                readiness=settings[0],
                restart_policy=settings[1],
                stop=settings[2],
            )
            program = await self._commit(reducer.create(event), event)
        except BaseException:
            await self._logs.remove(program_id)
            await self._sources.remove(program_id)
            raise
        # No supervisor yet: a CREATED program has nothing to do until a request comes.
        return program

    async def start(self, program_id: str) -> Program:
        return await self._request(program_id, ev.StartRequested(self._clock.now()))

    async def stop(self, program_id: str) -> Program:
        return await self._request(program_id, ev.StopRequested(self._clock.now()))

    async def restart(self, program_id: str) -> Program:
        return await self._request(program_id, ev.RestartRequested(self._clock.now()))

    async def delete(self, program_id: str) -> Program:
        return await self._request(program_id, ev.DeleteRequested(self._clock.now()))

    async def _request(self, program_id: str, event: ev.UserRequest) -> Program:
        program = self.get(program_id)
        if isinstance(event, ev.StartRequested | ev.RestartRequested):
            # A start can only add to what the user holds: checked and committed as one.
            async with self.quotas.held(program.user_id):
                program = self.get(program_id)
                owner = program.user_id
                quotas.check_start(owner, self.quotas.get(owner), self.usage(owner), program)
                return await self._supervisor(program_id).request(event)
        return await self._supervisor(program_id).request(event)

    # --- names and configuration ----------------------------------------------------

    def resolve(self, name: str, user_id: str, *, admin: bool = False, field: str = "name") -> str:
        """The id of the program `name` stands for, to this caller; NOT_FOUND otherwise.

        `programs/{id}`, `programs/{alias}` (the caller's own name) and
        `users/{user}/programs/{alias}` (the admin's, or the user's own). A
        program the caller may not see answers exactly like one that does not
        exist: the same error, the same message, whether the name is taken or not.
        """
        shape = "of the form programs/{id}, programs/{alias} or users/{user}/programs/{alias}"
        if name.startswith("users/"):
            owner, _, rest = name.removeprefix("users/").partition("/")
            key = rest.removeprefix("programs/")
            if not rest.startswith("programs/") or not owner:
                raise InvalidArgument(field, f"{cut(name)} is not {shape}")
            validate_user_id(owner, field)
            validate_alias(key, field)
            found = self._aliases.get((owner, key))
            if found is None or (not admin and owner != user_id):
                raise NotFound(f"program {key} not found")
            return found
        if not name:
            raise InvalidArgument(field, f"is required: {shape}")
        if not name.startswith("programs/"):
            raise InvalidArgument(field, f"{cut(name)} is not {shape}")
        key = validate_program_id(name.removeprefix("programs/"), field)
        program = self._programs.get(key)
        if program is not None and (admin or program.user_id == user_id):
            return key
        found = self._aliases.get((user_id or ADMIN_USER, key))
        if found is None:
            raise NotFound(f"program {key} not found")
        return found

    async def rename(self, program_id: str, alias: str) -> Program:
        """Give the program a new name (`""`: none). Unique per user: a name another of
        the user's programs has is refused (ALREADY_EXISTS); the old name is free at once."""
        if alias:
            validate_alias(alias)
        owner = self.get(program_id).user_id
        async with self.quotas.held(owner):
            program = self.get(program_id)
            if alias and alias != program.alias:
                self._check_alias_free(owner, alias)
            return await self._supervisor(program_id).request(
                ev.AliasChanged(self._clock.now(), alias)
            )

    async def set_env(self, program_id: str, set_: Mapping[str, str], unset: list[str]) -> Program:
        """Set and remove environment variables; the next start of the program uses them."""
        owner = self.get(program_id).user_id
        # Under the owner's lock: two changes at once are applied one after the other.
        async with self.quotas.held(owner):
            env = changed_env(self.get(program_id).env, set_, unset)
            return await self._supervisor(program_id).request(ev.EnvChanged(self._clock.now(), env))

    async def set_secret(
        self, program_id: str, name: str, value: bytes, *, as_env: bool = False
    ) -> SecretInfo:
        """Create or replace a secret of the program; the next start hands it over."""
        self._changeable(program_id)
        return await self.secrets.set(program_id, name, value, as_env)

    def list_secrets(self, program_id: str) -> list[SecretInfo]:
        self.get(program_id)
        return self.secrets.list(program_id)

    async def delete_secret(self, program_id: str, name: str) -> SecretInfo:
        self._changeable(program_id)
        return await self.secrets.delete(program_id, name)

    def _changeable(self, program_id: str) -> Program:
        program = self.get(program_id)
        if program.state is State.DELETING:
            raise FailedPrecondition(
                f"cannot change program {program_id} while it is DELETING: it is being deleted",
                State.DELETING.name,
            )
        return program

    def _check_alias_free(self, user_id: str, alias: str) -> None:
        if (user_id, alias) in self._aliases:
            raise AlreadyExists(f"you already have a program named {alias}")

    def _index_alias(self, before: Program | None, after: Program) -> None:
        if (
            before is not None
            and before.alias
            and (before.alias != after.alias or after.state is State.DELETED)
        ) and self._aliases.get((before.user_id, before.alias)) == before.id:
            del self._aliases[(before.user_id, before.alias)]
        if after.alias and after.state is not State.DELETED:
            self._aliases[(after.user_id, after.alias)] = after.id

    # --- new revisions in place ---------------------------------------------------

    def read_revisions_from(self, stored: Callable[[str], list[Revision]]) -> None:
        """Where a program's stored revision records are read, the first time it needs them."""
        self._stored_revisions = stored

    def _revisions_of(self, program_id: str) -> list[Revision]:
        """The program's revision records, oldest first: read from the store on first need."""
        records = self._revisions.get(program_id)
        if records is None:
            read = [] if self._stored_revisions is None else self._stored_revisions(program_id)
            # Only what the committed program has reached: a record written in a
            # transaction not yet acknowledged is appended when it is (`_commit`).
            reached = self._programs[program_id].latest_version
            records = sorted(
                (record for record in read if record.number <= reached),
                key=lambda record: record.number,
            )
            self._revisions[program_id] = records
        return records

    def revisions(self, program_id: str) -> list[Revision]:
        """The program's revisions, newest first."""
        program = self.get(program_id)
        records = self._revisions_of(program_id) or [revisions.first_revision(program)]
        return sorted(records, key=lambda record: record.number, reverse=True)

    def kept_builds(self, program_id: str) -> frozenset[str]:
        """The builds whose images and sources are kept (the rollback targets')."""
        return revisions.kept_builds(self.revisions(program_id), self.get(program_id))

    async def deploy(
        self,
        program_id: str,
        dockerfile: str,
        src_files: Mapping[str, bytes],
        resources: Resources | None,
        by: str,
    ) -> Program:
        """Roll out new source (and, if given, new limits: 0 takes the Host's default)."""
        program = self.get(program_id)
        source, inputs_id = await self._checked(dockerfile, src_files)
        if self._build_policy is not None:
            check_dockerfile(source.dockerfile, self._build_policy)
        limits = program.resources if resources is None else self._resolved(program, resources)
        saved = await self._sources.save_build(program_id, inputs_id, source)
        try:
            return await self._new_revision(program_id, inputs_id, limits, by, "deploy")
        except BaseException:
            if saved and inputs_id not in self.kept_builds(program_id):
                await self._sources.remove_build(program_id, inputs_id)
            raise

    async def update(
        self, program_id: str, paths: list[str], asked: Configuration, by: str
    ) -> Program:
        """AIP-134: the masked fields changed, as a new revision of the same source."""
        program = self.get(program_id)
        wanted = revisions.apply_mask(paths, revisions.configuration_of(program), asked)
        settings = RunSettings(
            validate_readiness(wanted.settings.readiness),
            validate_restart_policy(wanted.settings.restart_policy),
            validate_stop(wanted.settings.stop),
        )
        limits = self._resolved(program, wanted.resources)
        return await self._new_revision(
            program_id, program.build_id, limits, by, revisions.describe_update(paths), settings
        )

    async def rollback(self, program_id: str, number: int, by: str) -> Program:
        """Roll out a kept revision again (0: the one before the current), as a new revision."""
        program = self.get(program_id)
        records = self.revisions(program_id)
        if number < 0:
            raise InvalidArgument("revision_number", "must not be negative")
        if number == 0:
            older = [r for r in records if r.number < program.version]
            if not older:
                raise FailedPrecondition(
                    f"program {program_id} runs revision {program.version}: no revision "
                    "before it to roll back to",
                    program.state.name,
                )
            number = older[0].number
        chosen = next((r for r in records if r.number == number), None)
        if chosen is None:
            raise NotFound(f"revision {number} of program {program_id} not found")
        if chosen.build_id not in self.kept_builds(program_id):
            raise FailedPrecondition(
                f"revision {number} of program {program_id} is no longer kept (only the "
                f"{revisions.KEPT_REVISIONS} newest revisions keep their image and source)",
                program.state.name,
            )
        return await self._new_revision(
            program_id,
            chosen.build_id,
            chosen.resources,
            by,
            f"rollback to revision {number}",
            chosen.settings,
        )

    def _resolved(self, program: Program, asked: Resources) -> Resources:
        revisions.check_state_size(program.resources, asked)
        return resolve_resources(
            asked.memory_bytes,
            asked.milli_cpus,
            asked.pids,
            self._resource_policy,
            state_bytes=program.resources.state_bytes,
        )

    async def _new_revision(
        self,
        program_id: str,
        build: str,
        limits: Resources,
        by: str,
        description: str,
        settings: RunSettings | None = None,
    ) -> Program:
        program = self.get(program_id)
        keep = revisions.keep_after(self.revisions(program_id), build)
        event = ev.DeployRequested(
            self._clock.now(), build, limits, by, description, keep, settings
        )
        # More memory or CPU for a running program: checked and committed as one.
        async with self.quotas.held(program.user_id):
            program = self.get(program_id)
            owner = program.user_id
            quotas.check_resize(owner, self.quotas.get(owner), self.usage(owner), program, limits)
            return await self._supervisor(program_id).request(event)

    # --- queries -----------------------------------------------------------------

    def get(self, program_id: str) -> Program:
        validate_program_id(program_id)
        program = self._programs.get(program_id)
        if program is None:
            raise NotFound(f"program {program_id} not found")
        return program

    def usage(self, user_id: str) -> quotas.Usage:
        """What the user's programs hold now, as their quota counts it."""
        return quotas.usage_of(user_id, self._programs.values())

    async def source(self, program_id: str) -> ProgramSource:
        """The source of the revision the program runs."""
        program = self.get(program_id)
        return await self._sources.load_build(program_id, program.build_id)

    def logs(
        self, program_id: str, tail: int | None, streams: frozenset[LogStream], follow: bool
    ) -> AsyncIterator[LogLine]:
        """The program's log lines; with `follow`, then new ones until it is deleted."""
        self.get(program_id)
        if tail is not None and tail < 0:
            raise InvalidArgument("tail", "must not be negative")
        return self._logs.lines(program_id, tail, streams, follow)

    def list_programs(self, page_size: int = 0, page_token: str = "", user_id: str = "") -> Page:
        if user_id:
            validate_user_id(user_id)
        matching = [
            program
            for program in self._programs.values()
            if not user_id or program.user_id == user_id
        ]
        # Dicts keep insertion order, which is creation order: a stable order.
        return page_of(matching, self._order, page_size, page_token)

    async def wait(self, program_id: str, state: State, seconds: float) -> Program:
        """The program once it is in `state`; fails early if it can no longer get there."""
        if not 0 < seconds <= MAX_WAIT_SECONDS:
            raise InvalidArgument(
                "timeout", f"must be more than 0 and at most {MAX_WAIT_SECONDS} s"
            )
        subscription = self.hub.subscribe(program_id, capacity=16)
        try:
            program = self.get(program_id)
            async with deadline(self._timers, seconds):
                while True:
                    if program.state is state:
                        return program
                    if program.state is State.DELETED:
                        raise NotFound(f"program {program_id} was deleted")
                    if program.state is State.ERROR:
                        raise FailedPrecondition(
                            f"program {program_id} failed while waiting for {state.name}: "
                            f"{program.error}",
                            State.ERROR.name,
                        )
                    change = await subscription.next()
                    if isinstance(change, Change):
                        program = change.program
                    elif change is Closed.CLOSED:
                        raise Unavailable("the Host is shutting down; wait again once it is back")
                    else:  # fell behind: look again
                        subscription.drop_buffered()
                        program = self.get(program_id)
        except TimeoutError:
            current = self._programs.get(program_id)
            now = current.state.name if current else "gone"
            raise DeadlineExceeded(
                f"program {program_id} did not reach {state.name} within {seconds:g} s "
                f"(it is {now})"
            ) from None
        finally:
            subscription.unsubscribe()

    def watch(
        self, program_id: str = "", resume_revision: int | None = None, user_id: str | None = None
    ) -> WatchStart:
        """Subscribe and take the snapshot (or the replay) in one step, so nothing falls between.

        `user_id` limits the stream to that user's programs, resumed or not: one
        program of another user answers NOT_FOUND, like one that never existed.
        """
        if program_id:
            validate_program_id(program_id)
            owner = self._owner(program_id, resumed=resume_revision is not None)
            if owner is None or (user_id is not None and owner != user_id):
                raise NotFound(f"program {program_id} not found")
        subscription = self.hub.subscribe(program_id or None, user_id=user_id)
        if resume_revision is None:
            return WatchStart(self.snapshot(subscription), [], self.hub.revision, subscription)
        try:
            replay = list(self.hub.changes_after(resume_revision, subscription.wants))
        except BaseException:
            subscription.unsubscribe()
            raise
        return WatchStart(None, replay, self.hub.revision, subscription)

    def _owner(self, program_id: str, *, resumed: bool) -> str | None:
        """Whose program this is. A resumed watch may follow a deleted program to its end:
        its owner is in the stored log (a program that never was has none)."""
        program = self._programs.get(program_id)
        if program is not None:
            return program.user_id
        return self._log.owner(program_id) if resumed else None

    def current(self) -> tuple[list[Program], int]:
        """Every live program and the revision they are at, in one step (nothing between)."""
        return list(self._programs.values()), self.hub.revision

    def snapshot(self, subscription: Subscription) -> list[Program]:
        """The programs a subscription covers, now; drops what it had buffered."""
        subscription.drop_buffered()
        if subscription.program_id is None:
            candidates = list(self._programs.values())
        else:
            program = self._programs.get(subscription.program_id)
            candidates = [program] if program else []
        owner = subscription.user_id
        return [p for p in candidates if owner is None or p.user_id == owner]

    # --- internals ------------------------------------------------------------

    def _supervisor(self, program_id: str) -> Supervisor:
        """The program's supervisor, made on its first request (NOT_FOUND if there is none).

        One made while recovery is under way waits for the runtime to be reconciled,
        like the recovered ones do.
        """
        supervisor = self._supervisors.get(program_id)
        if supervisor is None:
            supervisor = self._spawn(self.get(program_id), after=self._recovery.gate)
        return supervisor

    def _spawn(self, program: Program, after: asyncio.Event | None = None) -> Supervisor:
        """A supervisor for the program, running now (or once `after` is set)."""
        assert self._tasks is not None, "use the registry as an async context manager"
        supervisor = Supervisor(
            program,
            handler=self._handler,
            clock=self._clock,
            timers=self._timers,
            commit=self._commit,
            policy=self._policy,
        )
        self._supervisors[program.id] = supervisor
        task = self._tasks.create_task(supervisor.run(after), name=f"supervisor:{program.id}")
        self._supervisor_tasks[program.id] = task
        task.add_done_callback(lambda _: self._supervisor_tasks.pop(program.id, None))
        return supervisor

    def _number(self, program_id: str) -> None:
        """Give a program its place in creation order (List's stable order)."""
        self._created += 1
        self._order[program_id] = self._created

    async def _commit(self, program: Program, event: ev.Event) -> Program:
        # Appended at once (the log makes the events appended meanwhile durable
        # together: group commit), then taken in, one at a time, in the order they were
        # appended: revisions are published in order.
        previous, turn = self._last_commit, asyncio.get_running_loop().create_future()
        self._last_commit = turn
        try:
            revision = await self._log.append(program, event)
            if previous is not None:
                await asyncio.shield(previous)
            committed = replace(program, revision=revision)
            before = self._programs.get(program.id)
            self._index_alias(before, committed)
            self.metrics.committed(before, committed, event)
            if before is None or before.state is not committed.state:
                log.info(
                    "program %s: %s (%s)%s",
                    committed.id,
                    committed.state.name,
                    type(event).__name__,
                    f": {committed.error}" if committed.error else "",
                )
            kind = ChangeKind.UPDATED
            if isinstance(event, ev.ProgramCreated):
                kind = ChangeKind.CREATED
                self._number(committed.id)
            if committed.state is State.DELETED:
                kind = ChangeKind.DELETED
                await self._forget(committed)
            else:
                self._programs[committed.id] = committed
                self._note(committed, event)
                made = revisions.revision_of(committed, event)
                if isinstance(event, ev.ProgramCreated) and made is not None:
                    self._revisions[committed.id] = [made]  # a new program has no older ones
                elif made is not None:
                    records = self._revisions_of(committed.id)
                    if not records or records[-1].number < made.number:
                        records.append(made)
            self.hub.publish(Change(kind, committed, event))
            return committed
        finally:
            _pass_turn(previous, turn)

    def _note(self, program: Program, event: ev.Event) -> None:
        """A Host line in the program's log for each change: its history, readable."""
        text = f"{type(event).__name__}: now {program.state.name}"
        if program.error and program.state in (State.ERROR, State.BACKOFF, State.DELETING):
            text += f" ({program.error})"
        elif isinstance(event, ev.WatcherProbed):
            # The program's own view changed: what it says, in the log beside its output.
            said = program.health_reason or f'reported "{program.watcher_state}"'
            text += f", {program.health.name.lower()}: {said}"
        self._logs.write(program.id, LogLine(event.at, LogStream.HOST, program.run, text))

    async def _forget(self, program: Program) -> None:
        await self.secrets.forget(program.id)
        await self._logs.remove(program.id)
        self._programs.pop(program.id, None)
        self._revisions.pop(program.id, None)
        self._supervisors.pop(program.id, None)
        self._order.pop(program.id, None)


class _InMemoryOnly:
    """The `SecretBox` of a registry without a store: nothing leaves memory, so nothing
    needs sealing (a Host with a store seals with its Host key)."""

    def seal(self, value: bytes, context: bytes) -> bytes:
        return bytes(value)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        return bytes(sealed)


def _pass_turn(previous: asyncio.Future[None] | None, turn: asyncio.Future[None]) -> None:
    """The next commit's turn comes once this one's did and it is done (even cancelled)."""

    def passed(_: object = None) -> None:
        if not turn.done():
            turn.set_result(None)

    if previous is None or previous.done():
        passed()
    else:
        previous.add_done_callback(passed)


def _checked_source(
    dockerfile: str, src_files: Mapping[str, bytes], limits: SourceLimits
) -> tuple[ProgramSource, str]:
    source = validate_source(dockerfile, src_files, limits)
    return source, build_id(source)
