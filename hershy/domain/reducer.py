"""The program lifecycle as a pure function: `reduce(program, event) -> outcome`.

No IO, no clock, no randomness: the time is `event.at`, ids arrive in events,
and the work to do comes back as effects (data) for the supervisor to run.

Three outcomes:
- `Transition`: the event is accepted; the program changed; run the effects.
- `Ignored`: the event changes nothing (a late result of an old run, a
  container exit during a stop, an idempotent repeat). It may still carry
  clean-up effects, e.g. to stop a container nobody wants any more.
- `Rejected`: a user's request the current state cannot accept; the caller
  gets FAILED_PRECONDITION naming the state.

Invariants the tests check over random event sequences: nothing is left
running once a program is at rest, DELETED is terminal, and a user's Stop
wins over a pending automatic restart.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from hershy.domain import effects as fx
from hershy.domain import events as ev
from hershy.domain.health import LIVE_HEALTH, Answer, classify, describe
from hershy.domain.model import (
    BackoffPolicy,
    Health,
    Program,
    RestartMode,
    Rollout,
    RolloutPhase,
    State,
    Version,
    settings_of,
)


@dataclass(frozen=True, slots=True)
class Transition:
    """The program changes: commit it (a new revision), then run `effects`."""

    program: Program
    effects: tuple[fx.Effect, ...] = ()


@dataclass(frozen=True, slots=True)
class Ignored:
    """The program does not change and nothing is committed; `reason` says why.

    `effects` are not the event's effects but clean-up the Host owes all the
    same, and usually empty: a container nobody wants any more is stopped (a
    late `ContainerCreated` of a cancelled start or an old run), and after a
    Host restart what was under way is resumed or adopted (`HostRestarted`).
    """

    reason: str
    effects: tuple[fx.Effect, ...] = ()


@dataclass(frozen=True, slots=True)
class Rejected:
    """A user's request the state cannot take: answered FAILED_PRECONDITION, never dropped."""

    state: State
    message: str


Outcome = Transition | Ignored | Rejected

DEFAULT_POLICY = BackoffPolicy()


def create(event: ev.ProgramCreated) -> Program:
    """The program a `ProgramCreated` event brings into being."""
    return Program(
        id=event.program_id,
        user_id=event.user_id,
        build_id=event.build_id,
        proxy_target=event.proxy_target,
        resources=event.resources,
        alias=event.alias,
        env=event.env,
        readiness=event.readiness,
        restart_policy=event.restart_policy,
        stop=event.stop,
        created_at=event.at,
        updated_at=event.at,
    )


def reduce(program: Program, event: ev.Event, policy: BackoffPolicy = DEFAULT_POLICY) -> Outcome:
    """Apply one event to one program."""
    return _rollout_settled(_reduce(program, event, policy))


def _reduce(program: Program, event: ev.Event, policy: BackoffPolicy) -> Outcome:
    if program.state is State.DELETED:
        if isinstance(event, ev.EffectResult):
            return Ignored("the program is deleted")
        return _refuse(program, "change", "deleted programs are gone for good")
    if program.state is State.DELETING and isinstance(
        event, ev.StartRequested | ev.StopRequested | ev.RestartRequested | ev.DeployRequested
    ):
        return _refuse(program, _verb(event), "it is being deleted")
    match event:
        case ev.ProgramCreated():
            return _refuse(program, "create", "the program already exists")
        case ev.StartRequested():
            return _on_start(program, event.at)
        case ev.StopRequested():
            return _cancelling_rollout(
                program, _on_stop(program, event.at), event.at, "a Stop won over it"
            )
        case ev.RestartRequested():
            if _rolling_out(program):
                return _refuse(program, "restart", _rollout_under_way(program))
            return _on_restart(program, event.at)
        case ev.DeleteRequested():
            return _cancelling_rollout(
                program, _on_delete(program, event.at), event.at, "a Delete won over it"
            )
        case ev.DeployRequested():
            return _on_deploy(program, event)
        case ev.AliasChanged() | ev.EnvChanged():
            return _on_config_change(program, event)
        case ev.HostRestarted():
            return _on_host_restarted(program, event.at)
        case ev.ContainerStopped():
            return _on_container_stopped(program, event)
        case _ if event.run != program.run:
            return _stale(program, event)
        case ev.BuildSucceeded():
            return _on_build_succeeded(program, event)
        case ev.BuildQueued():
            if program.state is State.BUILDING or _rollout_phase(program) is RolloutPhase.BUILDING:
                note = f"build queued: {event.ahead} ahead" if event.ahead > 0 else ""
                return Transition(_at(program, event.at, note=note))
            return Ignored(f"build queue news while {program.state.name}")
        case ev.BuildFailed():
            if program.state is State.BUILDING:
                return _fail(program, event.at, f"build failed: {event.reason}")
            return Ignored(f"build result while {program.state.name}")
        case ev.CandidateBuilt():
            return _on_candidate_built(program, event)
        case ev.CandidateBuildFailed():
            return _on_candidate_build_failed(program, event)
        case ev.ContainerCreated():
            return _on_container_created(program, event)
        case ev.ContainerReady():
            if program.state is State.STARTING:
                ready = _at(
                    program,
                    event.at,
                    state=State.READY,
                    ready_since=event.at,
                    error=None,
                    health=Health.HEALTHY,
                    health_reason="",
                    unhealthy_since=None,
                )
                return _rollout_ready(ready, event.at)
            return Ignored(f"readiness while {program.state.name}")
        case ev.WatcherProbed():
            return _on_watcher_probed(program, event, policy)
        case ev.StartFailed():
            return _on_start_failed(program, event)
        case ev.ContainerExited():
            return _on_container_exited(program, event, policy)
        case ev.StopFailed():
            return _on_stop_failed(program, event)
        case ev.RestartTimerFired():
            return _on_restart_timer(program, event.at)
        case ev.TornDown():
            if program.state is State.DELETING:
                return Transition(
                    _at(
                        program,
                        event.at,
                        state=State.DELETED,
                        container_id=None,
                        image_id=None,
                        error=None,
                    )
                )
            return Ignored(f"teardown result while {program.state.name}")
        case ev.TeardownFailed():
            if program.state is State.DELETING:
                return Transition(_at(program, event.at, error=f"delete failed: {event.reason}"))
            return Ignored(f"teardown result while {program.state.name}")


# --- a user's requests -------------------------------------------------------


def _on_start(program: Program, at: float) -> Outcome:
    if program.state in (State.CREATED, State.STOPPED, State.ERROR):
        return _begin_run(program, at)
    if program.state is State.BACKOFF:
        return _refuse(program, "start", "a restart is already scheduled; use restart to start now")
    return _refuse(program, "start", "it is not at rest")


def _on_stop(program: Program, at: float) -> Outcome:
    match program.state:
        case State.BUILDING | State.STARTING | State.READY:
            return _stop(program, at, fx.CancelInflight())
        case State.BACKOFF:
            # A user's Stop wins over the pending automatic restart.
            return _stop(program, at, fx.CancelTimers())
        case State.ERROR:
            # Clears the error and removes anything a failed run left behind.
            return _stop(program, at)
        case State.STOPPING if program.restart_pending:
            # Stop wins over a restart requested earlier.
            return Transition(_at(program, at, restart_pending=False))
        case State.STOPPING:
            return Ignored("already stopping")
        case _:
            return _refuse(program, "stop", "nothing is running")


def _on_restart(program: Program, at: float) -> Outcome:
    match program.state:
        case State.CREATED | State.STOPPED | State.ERROR:
            return _begin_run(program, at)
        case State.BUILDING | State.STARTING | State.READY:
            return _stop(program, at, fx.CancelInflight(), then_start=True)
        case State.BACKOFF:
            return _stop(program, at, fx.CancelTimers(), then_start=True)
        case State.STOPPING if program.restart_pending:
            return Ignored("a restart is already pending")
        case State.STOPPING:
            return Transition(_at(program, at, restart_pending=True))
        case _:
            return _refuse(program, "restart", "it is being deleted")


def _on_delete(program: Program, at: float) -> Outcome:
    if program.state is State.DELETING:
        if program.error is None:
            return Ignored("already being deleted")
        # The last teardown failed: try again.
        return Transition(
            _at(program, at, error=None),
            (fx.Teardown(program.run, program.container_id),),
        )
    return Transition(
        _at(
            program,
            at,
            state=State.DELETING,
            restart_pending=False,
            next_restart_at=None,
            error=None,
        ),
        (fx.CancelInflight(), fx.CancelTimers(), fx.Teardown(program.run, program.container_id)),
    )


def _on_config_change(program: Program, event: ev.ConfigChange) -> Outcome:
    """A new name or new variables: kept; what runs goes on as it is (a start uses them)."""
    if program.state is State.DELETING:
        return _refuse(program, "change", "it is being deleted")
    match event:
        case ev.AliasChanged(alias=alias):
            if alias == program.alias:
                return Ignored("the same name")
            return Transition(_at(program, event.at, alias=alias))
        case ev.EnvChanged(env=env):
            if env == program.env:
                return Ignored("the same variables")
            if _rolling_out(program):
                # The candidate (or the revert) would start with variables nobody rolled out.
                return _refuse(program, "change the variables of", _rollout_under_way(program))
            return Transition(_at(program, event.at, env=env))


def _on_host_restarted(program: Program, at: float) -> Outcome:
    """Finish or redo what was under way when the Host stopped; adopt what runs."""
    run, container = program.run, program.container_id
    match program.state:
        case State.BUILDING:
            effects: tuple[fx.Effect, ...] = (fx.Build(run, program.build_id, program.user_id),)
        case State.STARTING if program.image_id is not None:
            # The start is redone; the handler removes what the cut-off one left, and
            # that container's exit must not count as the program's crash.
            redo = (_start_container(program, run, program.image_id),)
            if container is not None:
                return Transition(_at(program, at, container_id=None), redo)
            effects = redo
        case State.READY:
            effects = (
                fx.AdoptContainer(run, container, program.readiness),
                *_candidate_build(program),
            )
        case State.STOPPING:
            effects = (fx.StopContainer(run, container),)
        case State.BACKOFF if program.next_restart_at is not None:
            effects = (
                fx.StopContainer(run, container),
                fx.StartRestartTimer(run, program.next_restart_at),
            )
        case State.DELETING:
            effects = (fx.Teardown(run, container),)
        case State.STOPPED | State.ERROR if run > 0:
            # At rest after it ran: the removal of its last container (an exit under
            # `on-failure` or `never`, a failed start) may have been cut off by the kill.
            effects = (fx.StopContainer(run, container),)
        case _:
            effects = ()
    return Ignored(f"resuming in {program.state.name}", effects)


# --- results of effects ------------------------------------------------------


def _on_build_succeeded(program: Program, event: ev.BuildSucceeded) -> Outcome:
    if program.state is not State.BUILDING:
        return Ignored(f"build result while {program.state.name}")
    return Transition(
        _at(program, event.at, state=State.STARTING, image_id=event.image_id),
        (_start_container(program, program.run, event.image_id),),
    )


def _on_container_created(program: Program, event: ev.ContainerCreated) -> Outcome:
    if program.state is State.STARTING:
        # The runtime places the container: its address is the program's from now on
        # (an event from an older store has none, and the program keeps what it had).
        address = event.address or program.proxy_target
        return Transition(
            _at(
                program,
                event.at,
                container_id=event.container_id,
                proxy_target=address,
                node=event.node,
                pod=event.pod,
                **_NO_VIEW,
            )
        )
    # Nobody wants this container any more (the run is being stopped or
    # deleted): make sure it goes.
    return Ignored(
        f"container created while {program.state.name}",
        (fx.StopContainer(event.run, event.container_id),),
    )


def _on_start_failed(program: Program, event: ev.StartFailed) -> Outcome:
    if program.state is not State.STARTING:
        return Ignored(f"start result while {program.state.name}")
    reason = f"start failed: {event.reason}"
    if _rollout_phase(program) is RolloutPhase.SWITCHING:
        return _revert(program, event.at, reason)
    return _failing_rollout(program, _fail(program, event.at, reason), reason)


def _on_container_exited(
    program: Program, event: ev.ContainerExited, policy: BackoffPolicy
) -> Outcome:
    if program.state not in (State.READY, State.STARTING):
        # Expected during a stop or delete; old news otherwise.
        return Ignored(f"container exit while {program.state.name}")
    if event.container_id is not None and event.container_id != program.container_id:
        return Ignored(f"exit of container {event.container_id}, not the program's own")
    if program.state is State.STARTING and _rollout_phase(program) is RolloutPhase.SWITCHING:
        return _revert(program, event.at, f"exited with code {event.exit_code} before READY")
    reason = f"exited with code {event.exit_code}"
    if event.oom_killed:
        reason += " (killed: out of memory)"
    crashed = _crashed(program, event.at, reason, event.exit_code, policy)
    return _rollout_after_crash(program, crashed, event.at, reason)


def _rollout_after_crash(program: Program, crashed: Transition, at: float, reason: str) -> Outcome:
    """A run that ended by itself during a rollout: a candidate still building is
    cancelled; a revert whose previous revision crashed has failed."""
    if _rollout_phase(program) is RolloutPhase.BUILDING:
        return _cancelling_rollout(program, crashed, at, f"revision {program.version} {reason}")
    return _failing_rollout(program, crashed, reason)


def _crashed(
    program: Program, at: float, reason: str, exit_code: int | None, policy: BackoffPolicy
) -> Transition:
    """The run ended by itself (an exit, or a liveness failure): what its restart policy says.

    Exit code 0 under `on-failure` or `never` ends it STOPPED; any other end under
    `never`, or past the restart limit, ends it ERROR; the rest is a crash: BACKOFF,
    then the automatic restart.
    """
    building_candidate = _rollout_phase(program) is RolloutPhase.BUILDING
    cleanup: tuple[fx.Effect, ...] = (
        (fx.CancelInflight(),) if program.state is State.STARTING or building_candidate else ()
    )
    stop_it = (*cleanup, fx.StopContainer(program.run, program.container_id))
    code = program.last_exit_code if exit_code is None else exit_code
    rules = program.restart_policy
    ended = {
        "last_exit_code": code,
        "ready_since": None,
        "next_restart_at": None,
        "health": Health.UNKNOWN,
        "unhealthy_since": None,
    }
    if exit_code == 0 and rules.mode is not RestartMode.ALWAYS:
        return Transition(
            _at(
                program,
                at,
                state=State.STOPPED,
                error=None,
                health_reason="",
                container_id=None,  # exited; the StopContainer that follows removes it
                **ended,
            ),
            stop_it,
        )
    if rules.mode is RestartMode.NEVER:
        return Transition(
            _at(program, at, state=State.ERROR, error=f"{reason} (restart policy: never)", **ended),
            stop_it,
        )
    recent = tuple(t for t in program.recent_restarts if t > at - rules.window_seconds)
    if rules.max_restarts > 0 and len(recent) >= rules.max_restarts:
        gave_up = (
            f"{reason}; restarted {len(recent)} time{'' if len(recent) == 1 else 's'} "
            f"within {rules.window_seconds:g} s, "
            f"the restart limit: not restarted again"
        )
        return Transition(
            _at(program, at, state=State.ERROR, error=gave_up, recent_restarts=recent, **ended),
            stop_it,
        )
    ran_long_enough = (
        program.ready_since is not None and at - program.ready_since >= policy.reset_after
    )
    streak = 1 if ran_long_enough else program.crash_streak + 1
    restart_at = at + policy.delay(streak)
    return Transition(
        _at(
            program,
            at,
            state=State.BACKOFF,
            restart_count=program.restart_count + 1,
            crash_streak=streak,
            error=reason,
            recent_restarts=(*recent, at) if rules.max_restarts > 0 else (),
            **{**ended, "next_restart_at": restart_at},
        ),
        (*stop_it, fx.StartRestartTimer(program.run, restart_at)),
    )


def _on_watcher_probed(program: Program, event: ev.WatcherProbed, policy: BackoffPolicy) -> Outcome:
    """Record the program's own view when it changes; after READY, a bad answer held past
    the liveness grace is a crash."""
    if program.state not in (State.STARTING, State.READY):
        return Ignored(f"watcher answer while {program.state.name}")
    check = program.readiness
    answer = classify(check, event.answered, event.state)
    words = describe(event.answered, event.state, event.detail)
    if program.state is State.STARTING:
        # The start's own judge decides readiness (ContainerReady/StartFailed): here only
        # the view, for people watching it initialise.
        health = Health.UNHEALTHY if answer is Answer.FAILED else Health.INITIALISING
        reason = "" if answer is Answer.READY else words
        return _view(program, event, health, reason, unhealthy_since=None)
    health = LIVE_HEALTH[answer]
    if health is not Health.UNHEALTHY:
        reason = "" if health is Health.HEALTHY else words
        return _view(program, event, health, reason, unhealthy_since=None)
    since = program.unhealthy_since if program.unhealthy_since is not None else event.at
    lasted = event.at - since
    if lasted >= check.liveness_grace_seconds:
        who = "the program " if event.answered else ""
        why = (
            f"liveness: {who}{words} for {lasted:.0f} s (grace {check.liveness_grace_seconds:g} s)"
        )
        crash = _crashed(program, event.at, why, None, policy)
        viewed = Transition(
            _at(crash.program, event.at, **_view_fields(event), health_reason=why), crash.effects
        )
        return _rollout_after_crash(program, viewed, event.at, why)
    return _view(program, event, health, words, unhealthy_since=since)


def _view(
    program: Program,
    event: ev.WatcherProbed,
    health: Health,
    reason: str,
    *,
    unhealthy_since: float | None,
) -> Outcome:
    """The program with this answer as its view, if anything of the view changed."""
    state = event.state if event.answered else program.watcher_state
    if (
        state == program.watcher_state
        and health is program.health
        and reason == program.health_reason
        and unhealthy_since == program.unhealthy_since
    ):
        return Ignored("the program's view did not change")
    return Transition(
        _at(
            program,
            event.at,
            **_view_fields(event, program),
            health=health,
            health_reason=reason,
            unhealthy_since=unhealthy_since,
        )
    )


def _view_fields(event: ev.WatcherProbed, program: Program | None = None) -> dict[str, object]:
    if not event.answered:
        return {}
    fields_: dict[str, object] = {"watcher_answered_at": event.at, "watcher_state": event.state}
    if program is None or event.state != program.watcher_state:
        fields_["watcher_state_since"] = event.at
    return fields_


#: A new container's view of the program: nothing known yet.
_NO_VIEW: dict[str, object] = {
    "watcher_state": "",
    "watcher_state_since": None,
    "watcher_answered_at": None,
    "health": Health.UNKNOWN,
    "health_reason": "",
    "unhealthy_since": None,
}


def _on_container_stopped(program: Program, event: ev.ContainerStopped) -> Outcome:
    if event.run == program.run and program.state is State.STOPPING:
        if not program.restart_pending and _rollout_phase(program) in _SWITCH_PHASES:
            return _start_next_version(program, event.at)
        if program.restart_pending:
            return _begin_run(_at(program, event.at, container_id=None), event.at)
        return Transition(
            _at(
                program,
                event.at,
                state=State.STOPPED,
                container_id=None,
                ready_since=None,
                error=None,
                health=Health.UNKNOWN,
                unhealthy_since=None,
            )
        )
    if (
        event.run == program.run
        and program.container_id is not None
        and program.state in (State.BACKOFF, State.ERROR)
    ):
        # The crashed or failed run's container is gone.
        return Transition(_at(program, event.at, container_id=None))
    # Includes the removal of a crashed run's container finishing after the
    # next run began: that run's container is not this one.
    return Ignored(f"container stop result while {program.state.name}")


def _on_stop_failed(program: Program, event: ev.StopFailed) -> Outcome:
    reason = f"could not stop the container: {event.reason}"
    match program.state:
        case State.STOPPING:
            # Keep the container id: Start and Stop from ERROR try again.
            return Transition(
                _at(program, event.at, state=State.ERROR, error=reason, restart_pending=False)
            )
        case State.BACKOFF:
            # Do not restart beside a container that would not go away.
            return Transition(
                _at(program, event.at, state=State.ERROR, error=reason, next_restart_at=None),
                (fx.CancelTimers(),),
            )
        case _:
            return Ignored(f"stop result while {program.state.name}")


def _on_restart_timer(program: Program, at: float) -> Outcome:
    if program.state is not State.BACKOFF or program.image_id is None:
        return Ignored(f"restart timer while {program.state.name}")
    run = program.run + 1
    return Transition(
        _at(
            program,
            at,
            state=State.STARTING,
            run=run,
            container_id=None,
            next_restart_at=None,
        ),
        (_start_container(program, run, program.image_id),),
    )


# --- building blocks ---------------------------------------------------------


_FIELDS = tuple(field.name for field in fields(Program))
#: States in which the program's WatcherAPI is asked how it is (STOPPING: still running).
_PROBED_STATES = frozenset({State.STARTING, State.READY, State.STOPPING})
_FIELD_SET = frozenset(_FIELDS)


def _at(program: Program, at: float, **changes: object) -> Program:
    """The program with `changes` applied, changed at time `at`.

    `dataclasses.replace` re-validates through `__init__` and was two thirds of
    the reducer's time; this copies the slots directly (Program has no
    `__post_init__`), still refusing a field that does not exist.
    """
    if not changes.keys() <= _FIELD_SET:
        raise TypeError(f"Program has no field {sorted(changes.keys() - _FIELD_SET)}")
    changes["updated_at"] = at
    if changes.get("state", program.state) is not program.state:
        changes.setdefault("note", "")  # a note is about the state it was made in
        if changes["state"] not in _PROBED_STATES:
            # Nothing runs to be judged: the verdict goes (its last words stay readable).
            changes.setdefault("health", Health.UNKNOWN)
            changes.setdefault("unhealthy_since", None)
    changed = object.__new__(Program)
    for name in _FIELDS:
        object.__setattr__(
            changed, name, changes[name] if name in changes else getattr(program, name)
        )
    return changed


def _begin_run(program: Program, at: float) -> Outcome:
    """Start a new run: build (or reuse) the image, then start it.

    A container left behind by a failed stop goes first.
    """
    if program.container_id is not None:
        return _stop(program, at, then_start=True)
    run = program.run + 1
    return Transition(
        _at(
            program,
            at,
            state=State.BUILDING,
            run=run,
            error=None,
            crash_streak=0,
            ready_since=None,
            next_restart_at=None,
            restart_pending=False,
            recent_restarts=(),
        ),
        (fx.Build(run, program.build_id, program.user_id),),
    )


def _start_container(program: Program, run: int, image_id: str) -> fx.StartContainer:
    return fx.StartContainer(
        run,
        image_id,
        program.build_id,
        program.resources,
        env=program.env,
        readiness=program.readiness,
        stop=program.stop,
    )


def _stop(program: Program, at: float, *first: fx.Effect, then_start: bool = False) -> Transition:
    return Transition(
        _at(
            program,
            at,
            state=State.STOPPING,
            restart_pending=then_start,
            next_restart_at=None,
        ),
        (*first, fx.StopContainer(program.run, program.container_id)),
    )


def _fail(program: Program, at: float, reason: str) -> Transition:
    cleanup: tuple[fx.Effect, ...] = ()
    if program.container_id is not None:
        cleanup = (fx.StopContainer(program.run, program.container_id),)
    return Transition(
        _at(
            program,
            at,
            state=State.ERROR,
            error=reason,
            ready_since=None,
            restart_pending=False,
            health=Health.UNKNOWN,
            unhealthy_since=None,
        ),
        cleanup,
    )


def _stale(program: Program, event: ev.EffectResult) -> Ignored:
    if isinstance(event, ev.ContainerCreated):
        # A container of an old run appeared late: nobody owns it.
        return Ignored(
            f"container of old run {event.run}",
            (fx.StopContainer(event.run, event.container_id),),
        )
    return Ignored(f"result of old run {event.run} (current run {program.run})")


def _verb(
    event: ev.StartRequested | ev.StopRequested | ev.RestartRequested | ev.DeployRequested,
) -> str:
    return type(event).__name__.removesuffix("Requested").lower()


def _refuse(program: Program, action: str, why: str) -> Rejected:
    return Rejected(
        program.state,
        f"cannot {action} program {program.id} while it is {program.state.name}: {why}",
    )


# --- rollouts: new revisions in place, with automatic revert ---------------------
#
# A deploy to a READY program builds the candidate while the current revision
# keeps serving (the program stays READY, `rollout.phase` BUILDING); once built,
# the current container stops and the candidate starts on the same `/state` and
# id (SWITCHING, through STOPPING and STARTING). If the candidate does not build,
# or fails before READY (its start fails, it exits, or it misses the readiness
# deadline), the previous revision runs again (REVERTED, with the reason).
# Stop and Delete win over a rollout (CANCELLED); a Restart or another deploy
# meanwhile is refused, naming the rollout. Candidate results carry their
# revision number, so those of a superseded rollout are ignored.

#: Phases in which the program's stop leads to starting the other revision.
_SWITCH_PHASES = (RolloutPhase.SWITCHING, RolloutPhase.REVERTING)
#: States in which a deploy just replaces the revision: nothing runs to keep serving.
_REPLACED_AT_REST = (State.CREATED, State.STOPPED, State.ERROR)


def _rollout_phase(program: Program) -> RolloutPhase | None:
    return program.rollout.phase if program.rollout is not None else None


def _rolling_out(program: Program) -> bool:
    return program.rollout is not None and program.rollout.in_progress


def _rollout_under_way(program: Program) -> str:
    assert program.rollout is not None
    rollout = program.rollout
    return (
        f"the rollout to revision {rollout.target.number} is {rollout.phase.name} "
        f"(from revision {rollout.previous.number}); wait until it ends, or stop the program"
    )


def _on_deploy(program: Program, event: ev.DeployRequested) -> Outcome:
    if _rolling_out(program):
        return _refuse(program, "deploy", _rollout_under_way(program))
    number = program.latest_version + 1
    current = settings_of(program)
    target = Version(number, event.build_id, event.resources, event.settings or current)
    rollout = Rollout(
        target=target,
        previous=Version(program.version, program.build_id, program.resources, current),
        phase=RolloutPhase.BUILDING,
        started_at=event.at,
        previous_image_id=program.image_id,
        keep=event.keep,
    )
    prune = fx.PruneBuilds(program.run, event.keep | {event.build_id})
    if program.state is State.READY:
        return Transition(
            _at(program, event.at, latest_version=number, rollout=rollout),
            (fx.BuildCandidate(program.run, number, event.build_id, program.user_id),),
        )
    if program.state in _REPLACED_AT_REST or program.state is State.BACKOFF:
        at_rest = program.state in _REPLACED_AT_REST
        done = replace(
            rollout,
            phase=RolloutPhase.SUCCEEDED,
            finished_at=event.at,
            reason=(
                f"applied while {program.state.name}: the next start runs it"
                if at_rest
                else "applied while BACKOFF: started at once (nothing ran to keep serving)"
            ),
        )
        replaced = _at(
            program,
            event.at,
            latest_version=number,
            version=number,
            build_id=target.build_id,
            resources=target.resources,
            rollout=done,
            **_settings_fields(target),
        )
        if at_rest:
            return Transition(replaced, (prune,))
        # The crashing revision is replaced now: its pending restart would run the old one.
        restart = _stop(replaced, event.at, fx.CancelTimers(), then_start=True)
        return Transition(restart.program, (*restart.effects, prune))
    return _refuse(
        program,
        "deploy",
        "deploy while it is READY (the current revision serves until the new one is built) "
        "or at rest",
    )


def _settings_fields(version: Version) -> dict[str, object]:
    """The program fields a revision's run settings set (none for an older record)."""
    settings = version.settings
    if settings is None:
        return {}
    return {
        "readiness": settings.readiness,
        "restart_policy": settings.restart_policy,
        "stop": settings.stop,
    }


def _candidate_build(program: Program) -> tuple[fx.Effect, ...]:
    """The candidate's build again, when a rollout waits for it (after a Host restart)."""
    rollout = program.rollout
    if rollout is None or rollout.phase is not RolloutPhase.BUILDING:
        return ()
    target = rollout.target
    return (fx.BuildCandidate(program.run, target.number, target.build_id, program.user_id),)


def _awaited_candidate(program: Program, version: int) -> Rollout | None:
    rollout = program.rollout
    if (
        program.state is State.READY
        and rollout is not None
        and rollout.phase is RolloutPhase.BUILDING
        and rollout.target.number == version
    ):
        return rollout
    return None


def _on_candidate_built(program: Program, event: ev.CandidateBuilt) -> Outcome:
    rollout = _awaited_candidate(program, event.version)
    if rollout is None:
        return Ignored(f"build of revision {event.version}, which no rollout waits for")
    switching = replace(rollout, phase=RolloutPhase.SWITCHING, candidate_image_id=event.image_id)
    return Transition(
        _at(program, event.at, state=State.STOPPING, rollout=switching, restart_pending=False),
        (fx.StopContainer(program.run, program.container_id),),
    )


def _on_candidate_build_failed(program: Program, event: ev.CandidateBuildFailed) -> Outcome:
    rollout = _awaited_candidate(program, event.version)
    if rollout is None:
        return Ignored(f"build of revision {event.version}, which no rollout waits for")
    reverted = replace(
        rollout,
        phase=RolloutPhase.REVERTED,
        finished_at=event.at,
        reason=(
            f"revision {rollout.target.number} failed to build: {event.reason}; revision "
            f"{rollout.previous.number} kept running"
        ),
    )
    return Transition(_at(program, event.at, rollout=reverted, note=""))


def _start_next_version(program: Program, at: float) -> Outcome:
    """The running revision stopped: start the candidate (switching) or the previous (reverting)."""
    rollout = program.rollout
    assert rollout is not None
    if rollout.phase is RolloutPhase.SWITCHING:
        version, image_id = rollout.target, rollout.candidate_image_id
    else:
        version, image_id = rollout.previous, rollout.previous_image_id
    changed = _at(
        program,
        at,
        version=version.number,
        build_id=version.build_id,
        resources=version.resources,
        container_id=None,
        ready_since=None,
        **_settings_fields(version),
    )
    if image_id is None:
        # Never ran from an image here (an older store): build it, the usual way.
        return _begin_run(changed, at)
    run = program.run + 1
    return Transition(
        _at(
            changed,
            at,
            state=State.STARTING,
            run=run,
            image_id=image_id,
            error=None,
            crash_streak=0,
            next_restart_at=None,
        ),
        (_start_container(changed, run, image_id),),
    )


def _revert(program: Program, at: float, reason: str) -> Outcome:
    """The candidate failed after the switch: remove it, then start the previous revision."""
    rollout = program.rollout
    assert rollout is not None
    reverting = replace(
        rollout,
        phase=RolloutPhase.REVERTING,
        reason=(
            f"revision {rollout.target.number} did not become READY ({reason}); back to "
            f"revision {rollout.previous.number}"
        ),
    )
    return Transition(
        _at(program, at, state=State.STOPPING, rollout=reverting, restart_pending=False),
        (fx.CancelInflight(), fx.StopContainer(program.run, program.container_id)),
    )


def _rollout_ready(ready: Program, at: float) -> Transition:
    """READY again: a switch succeeded, or a revert ended; keep only the newest builds."""
    rollout = ready.rollout
    if rollout is None or rollout.phase not in _SWITCH_PHASES:
        return Transition(ready)
    phase = (
        RolloutPhase.SUCCEEDED if rollout.phase is RolloutPhase.SWITCHING else RolloutPhase.REVERTED
    )
    ended = replace(rollout, phase=phase, finished_at=at)
    keep = rollout.keep | {rollout.target.build_id, rollout.previous.build_id}
    return Transition(
        _at(ready, at, rollout=ended, note=""),
        (fx.PruneBuilds(ready.run, keep),),
    )


def _ended(program: Program, outcome: Outcome, phase: RolloutPhase, reason: str) -> Outcome:
    """`outcome` with the rollout under way ended in `phase` for `reason`."""
    rollout = program.rollout
    if not isinstance(outcome, Transition) or rollout is None or not rollout.in_progress:
        return outcome
    changed = outcome.program
    ended = replace(rollout, phase=phase, reason=reason, finished_at=changed.updated_at)
    return Transition(_at(changed, changed.updated_at, rollout=ended), outcome.effects)


def _cancelling_rollout(program: Program, outcome: Outcome, at: float, why: str) -> Outcome:
    if isinstance(outcome, Ignored) and _rolling_out(program) and program.state is State.STOPPING:
        # Stopping to switch or revert: the Stop wins, so the stop ends in STOPPED.
        stopped = Transition(_at(program, at))
        return _ended(program, stopped, RolloutPhase.CANCELLED, why)
    return _ended(program, outcome, RolloutPhase.CANCELLED, why)


def _failing_rollout(program: Program, outcome: Outcome, reason: str) -> Outcome:
    """Starting the previous revision again failed too (a revert's last step)."""
    if _rollout_phase(program) is not RolloutPhase.REVERTING:
        return outcome
    assert program.rollout is not None
    why = (
        f"{program.rollout.reason}; revision {program.rollout.previous.number} failed too: {reason}"
    )
    return _ended(program, outcome, RolloutPhase.FAILED, why)


#: States a rollout can be under way in: the program is moving between revisions.
_ROLLING_STATES = frozenset({State.READY, State.STOPPING, State.STARTING, State.BUILDING})


def _rollout_settled(outcome: Outcome) -> Outcome:
    """No rollout stays under way once its program stopped moving (it failed or was
    stopped): it ends FAILED with the program's error, so the next deploy is taken."""
    if not isinstance(outcome, Transition):
        return outcome
    after = outcome.program
    rollout = after.rollout
    if rollout is None or not rollout.in_progress or after.state in _ROLLING_STATES:
        return outcome
    why = after.error or f"the program went {after.state.name}"
    ended = replace(rollout, phase=RolloutPhase.FAILED, reason=why, finished_at=after.updated_at)
    return Transition(_at(after, after.updated_at, rollout=ended), outcome.effects)
