"""One supervisor per program: the only place its events are applied.

The supervisor takes events from its inbox strictly in order, applies the
pure reducer, has the registry commit the change, and starts the effects.
Long effects (a build, a start) run as tasks the supervisor owns, so a slow
build never blocks a Stop; their results come back through the inbox as
events like any other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hershy.domain import effects as fx
from hershy.domain import events as ev
from hershy.domain.errors import FailedPrecondition
from hershy.domain.model import BackoffPolicy, Program, State
from hershy.domain.reducer import Ignored, Rejected, Transition, reduce
from hershy.service.ports import Clock, EffectHandler, Timers

log = logging.getLogger(__name__)

#: Commits a change and returns the program as committed (with its revision).
Commit = Callable[[Program, ev.Event], Awaitable[Program]]


@dataclass(slots=True)
class _Message:
    event: ev.Event
    reply: asyncio.Future[Program] | None = field(default=None)


class Supervisor:
    def __init__(
        self,
        program: Program,
        *,
        handler: EffectHandler,
        clock: Clock,
        timers: Timers,
        commit: Commit,
        policy: BackoffPolicy,
    ) -> None:
        self.program = program
        self._handler = handler
        self._clock = clock
        self._timers = timers
        self._commit = commit
        self._policy = policy
        self._inbox: asyncio.Queue[_Message] = asyncio.Queue()
        self._inflight: set[asyncio.Task[None]] = set()
        self._timer: asyncio.Task[None] | None = None
        self._tasks: asyncio.TaskGroup | None = None
        #: Set after a Host restart once the program was compared with the runtime.
        self.reconciled = asyncio.Event()

    # --- the Outbox port, for effect results --------------------------------

    def now(self) -> float:
        return self._clock.now()

    def emit(self, event: ev.EffectResult | ev.HostRestarted) -> None:
        self._inbox.put_nowait(_Message(event))

    # --- requests -------------------------------------------------------------

    async def request(self, event: ev.UserRequest | ev.ConfigChange) -> Program:
        """Apply a user's request; returns the program once the change is committed."""
        reply: asyncio.Future[Program] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(_Message(event, reply))
        return await reply

    # --- the loop ---------------------------------------------------------------

    async def run(self, after: asyncio.Event | None = None) -> None:
        """Process events until the program is deleted (or the task is cancelled).

        With `after`, nothing is processed before it is set (a recovering Host
        reconciles the runtime first); events and requests wait in the inbox.
        """
        if after is not None:
            await after.wait()
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            try:
                while self.program.state is not State.DELETED:
                    await self._handle(await self._inbox.get())
            finally:
                # Leaving for good: nothing of this program may keep running.
                for task in (*self._inflight, self._timer):
                    if task is not None:
                        task.cancel()
                self._refuse_pending()

    async def _handle(self, message: _Message) -> None:
        outcome = reduce(self.program, message.event, self._policy)
        match outcome:
            case Rejected(state=state, message=text):
                _reply(message, error=FailedPrecondition(text, state.name))
                return
            case Ignored(reason=reason, effects=effects):
                # Nothing to commit; its effects (clean-up, resuming) run all the same.
                log.debug("program %s: ignored %s: %s", self.program.id, message.event, reason)
            case Transition(program=changed, effects=effects):
                try:
                    self.program = await self._commit(changed, message.event)
                except Exception as error:
                    # Not committed means not accepted: run none of its effects.
                    log.exception("program %s: commit failed", self.program.id)
                    _reply(message, error=error)
                    return
        _reply(message, program=self.program)
        started = self._start(effects)
        if isinstance(message.event, ev.HostRestarted):
            # Reconciled once every container the store says runs has been looked at.
            checks = [task for effect, task in started if isinstance(effect, fx.AdoptContainer)]
            self._mark_reconciled(checks)

    def _mark_reconciled(self, checks: list[asyncio.Task[None]]) -> None:
        if not checks:
            self.reconciled.set()
            return
        remaining = len(checks)

        def one_done(_: asyncio.Task[None]) -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                self.reconciled.set()

        for task in checks:
            task.add_done_callback(one_done)

    def _start(
        self, effects: tuple[fx.Effect, ...]
    ) -> list[tuple[fx.HandledEffect, asyncio.Task[None]]]:
        """Start effects in order; the ones after a CancelInflight wait for the cancelled tasks.

        Returns the handled effects with the tasks carrying them out.
        """
        assert self._tasks is not None
        cancelled: list[asyncio.Task[None]] = []
        started: list[tuple[fx.HandledEffect, asyncio.Task[None]]] = []
        for effect in effects:
            match effect:
                case fx.CancelInflight():
                    for task in self._inflight:
                        task.cancel()
                    cancelled.extend(self._inflight)
                    self._inflight.clear()
                case fx.CancelTimers():
                    if self._timer is not None:
                        self._timer.cancel()
                        self._timer = None
                case fx.StartRestartTimer(run=run, at=at):
                    if self._timer is not None:
                        self._timer.cancel()
                    self._timer = self._tasks.create_task(self._fire_restart(run, at))
                case fx.Build() | fx.StartContainer():
                    task = self._tasks.create_task(self._execute(effect, tuple(cancelled)))
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
                    started.append((effect, task))
                case fx.BuildCandidate():
                    # A build like any other (cancelled by a Stop), reported as the candidate's.
                    outbox = _CandidateOutbox(self, effect.version)
                    work = self._execute(effect.as_build(), tuple(cancelled), outbox)
                    task = self._tasks.create_task(work)
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
                case fx.StopContainer() | fx.AdoptContainer() | fx.Teardown() | fx.PruneBuilds():
                    task = self._tasks.create_task(self._execute(effect, tuple(cancelled)))
                    started.append((effect, task))
        return started

    async def _execute(
        self,
        effect: fx.HandledEffect,
        after: tuple[asyncio.Task[None], ...],
        outbox: _CandidateOutbox | None = None,
    ) -> None:
        if after:
            # Cancelled tasks undo what they started; wait until they have.
            await asyncio.wait(after)
        reports = outbox or self
        try:
            await self._handler.execute(self.program.id, effect, reports)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("program %s: %s failed: %s", self.program.id, type(effect).__name__, error)
            failure = fx.failure_of(effect, self.now(), str(error) or type(error).__name__)
            if failure is not None:
                reports.emit(failure)

    async def _fire_restart(self, run: int, at: float) -> None:
        await self._timers.sleep(at - self._clock.now())
        self._timer = None
        self.emit(ev.RestartTimerFired(self._clock.now(), run))

    def _refuse_pending(self) -> None:
        while not self._inbox.empty():
            message = self._inbox.get_nowait()
            _reply(
                message,
                error=FailedPrecondition(
                    f"program {self.program.id} is {self.program.state.name}",
                    self.program.state.name,
                ),
            )


class _CandidateOutbox:
    """The outbox of a rollout's build: its results are the candidate's, numbered by revision."""

    def __init__(self, supervisor: Supervisor, version: int) -> None:
        self._supervisor = supervisor
        self._version = version

    def now(self) -> float:
        return self._supervisor.now()

    def emit(self, event: ev.EffectResult) -> None:
        match event:
            case ev.BuildSucceeded(at=at, run=run, image_id=image_id):
                self._supervisor.emit(ev.CandidateBuilt(at, run, self._version, image_id))
            case ev.BuildFailed(at=at, run=run, reason=reason):
                self._supervisor.emit(ev.CandidateBuildFailed(at, run, self._version, reason))
            case _:
                self._supervisor.emit(event)


def _reply(
    message: _Message, *, program: Program | None = None, error: Exception | None = None
) -> None:
    if message.reply is None or message.reply.done():
        return
    if error is not None:
        message.reply.set_exception(error)
    elif program is not None:
        message.reply.set_result(program)
