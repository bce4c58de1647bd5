"""Prints the reducer's answer to every (state, event) pair, one line each.

`tests/unit/testdata/transitions.txt` is this script's reviewed output; the
unit tests compare against it (like etcd-io/raft's data-driven tests), so any
change to the lifecycle shows up as a readable diff. Regenerate with
`python -m tests.unit.lifecycle_table > tests/unit/testdata/transitions.txt`
and review the diff before committing it.
"""

from __future__ import annotations

from dataclasses import fields, replace

from hershy.domain import events as ev
from hershy.domain.effects import Effect
from hershy.domain.model import (
    Health,
    Program,
    ReadinessCheck,
    Resources,
    RestartMode,
    RestartPolicy,
    Rollout,
    RolloutPhase,
    State,
    Version,
)
from hershy.domain.reducer import Ignored, Outcome, Rejected, Transition, reduce

T0 = 1000.0
NOW = 2000.0


def program_in(state: State) -> Program:
    """A typical program in `state`, in run 1 (placed at 19001 by the runtime)."""
    base = Program(
        id="p1",
        user_id="alice",
        build_id="b-1",
        proxy_target="",
        created_at=T0,
        updated_at=T0,
    )
    if state is State.CREATED:
        return base
    run1 = replace(base, state=state, run=1, proxy_target="127.0.0.1:19001")
    match state:
        case State.BUILDING | State.DELETING | State.DELETED:
            return run1
        case State.STARTING:
            return replace(run1, image_id="img-1")
        case State.READY | State.STOPPING:
            return replace(run1, image_id="img-1", container_id="c-1", ready_since=T0)
        case State.STOPPED:
            return replace(run1, image_id="img-1")
        case State.BACKOFF:
            return replace(
                run1,
                image_id="img-1",
                container_id="c-1",
                restart_count=1,
                crash_streak=1,
                last_exit_code=1,
                next_restart_at=NOW + 10,
                error="exited with code 1",
            )
        case State.ERROR:
            return replace(run1, image_id="img-1", error="start failed: boom")
    raise AssertionError(state)


def events_for(run: int) -> list[ev.Event]:
    return [
        ev.StartRequested(NOW),
        ev.StopRequested(NOW),
        ev.RestartRequested(NOW),
        ev.DeleteRequested(NOW),
        ev.HostRestarted(NOW),
        ev.AliasChanged(NOW, "bot"),
        ev.EnvChanged(NOW, (("MODE", "live"),)),
        ev.BuildSucceeded(NOW, run, "img-2"),
        ev.BuildFailed(NOW, run, "syntax error"),
        ev.ContainerCreated(NOW, run, "c-2", "127.0.0.1:19002"),
        ev.ContainerReady(NOW, run),
        ev.StartFailed(NOW, run, "no answer"),
        ev.ContainerExited(NOW, run, 2),
        ev.ContainerStopped(NOW, run),
        ev.StopFailed(NOW, run, "daemon gone"),
        ev.RestartTimerFired(NOW, run),
        ev.TornDown(NOW, run),
        ev.TeardownFailed(NOW, run, "busy"),
        ev.WatcherProbed(NOW, run, True, "Ready"),
        ev.WatcherProbed(NOW, run, True, "InitRun"),
        ev.WatcherProbed(NOW, run, True, "Crashed", "nil message"),
        ev.WatcherProbed(NOW, run, False, "", "ConnectionRefused"),
        ev.DeployRequested(NOW, "b-2", Resources(), "alice", "deploy", frozenset({"b-1", "b-2"})),
        ev.CandidateBuilt(NOW, run, 2, "img-2"),
        ev.CandidateBuildFailed(NOW, run, 2, "syntax error"),
    ]


def rolling_out(phase: RolloutPhase, state: State) -> Program:
    """A program moving from revision 1 to 2: `phase` of the rollout, in `state`."""
    program = program_in(state)
    rollout = Rollout(
        target=Version(2, "b-2", Resources()),
        previous=Version(1, "b-1", Resources()),
        phase=phase,
        started_at=T0,
        previous_image_id="img-1",
        candidate_image_id=None if phase is RolloutPhase.BUILDING else "img-2",
        keep=frozenset({"b-1", "b-2"}),
    )
    if phase is RolloutPhase.REVERTING:
        rollout = replace(rollout, reason="revision 2 did not become READY (start failed)")
    if (phase, state) in (
        (RolloutPhase.SWITCHING, State.STARTING),
        (RolloutPhase.REVERTING, State.STOPPING),
    ):
        # The candidate started: the program runs (or ran) revision 2 from then on.
        program = replace(program, version=2, build_id="b-2", image_id="img-2")
    return replace(program, latest_version=2, rollout=rollout)


#: The situations of a rollout, beside the plain states.
ROLLOUTS = (
    (RolloutPhase.BUILDING, State.READY),
    (RolloutPhase.SWITCHING, State.STOPPING),
    (RolloutPhase.SWITCHING, State.STARTING),
    (RolloutPhase.REVERTING, State.STOPPING),
    (RolloutPhase.REVERTING, State.STARTING),
)


def describe_event(event: ev.Event) -> str:
    run = getattr(event, "run", None)
    name = type(event).__name__
    if isinstance(event, ev.WatcherProbed):
        name += f"[{event.state or 'no answer'}]"
    return name + ("" if run is None else f"(run {run})")


def describe_effect(effect: Effect) -> str:
    args = ", ".join(
        f"{field.name}={_stable(getattr(effect, field.name))}"
        for field in fields(effect)
        if field.repr
    )
    return f"{type(effect).__name__}({args})"


def _stable(value: object) -> str:
    """`repr`, but a set's members in sorted order (their order changes with the hash seed)."""
    if isinstance(value, frozenset | set):
        return "{" + ", ".join(repr(item) for item in sorted(value)) + "}"
    return repr(value)


def describe(before: Program, outcome: Outcome) -> str:
    match outcome:
        case Rejected(message=message):
            return f"REJECTED {message}"
        case Ignored(reason=reason, effects=effects):
            text = f"ignored ({reason})"
        case Transition(program=after, effects=effects):
            changes = [
                f"{field.name}={_shown(getattr(after, field.name))}"
                for field in fields(after)
                if field.name not in ("state", "updated_at")
                and getattr(after, field.name) != getattr(before, field.name)
            ]
            text = f"-> {after.state.name}" + (f" [{', '.join(changes)}]" if changes else "")
    if effects:
        text += " do " + "; ".join(describe_effect(effect) for effect in effects)
    return text


def _shown(value: object) -> str:
    """A field's new value; a rollout in short: `2<-1 PHASE (reason)`."""
    if isinstance(value, Rollout):
        text = f"{value.target.number}<-{value.previous.number} {value.phase.name}"
        if value.candidate_image_id:
            text += f" image {value.candidate_image_id}"
        return text + (f" ({value.reason})" if value.reason else "")
    return repr(value)


def table() -> str:
    lines = []
    situations = [(state.name, program_in(state)) for state in State] + [
        (f"{state.name}/rollout {phase.name}", rolling_out(phase, state))
        for phase, state in ROLLOUTS
    ]
    for name, program in situations:
        for run in (1, 0):
            for event in events_for(run):
                if run == 0 and not hasattr(event, "run"):
                    continue  # user requests carry no run: listed once
                outcome = reduce(program, event)
                lines.append(f"{name} + {describe_event(event)}: {describe(program, outcome)}")
        lines.append("")
    lines.extend(policy_lines())
    return "\n".join(lines)


def policy_lines() -> list[str]:
    """Restart policies and liveness: a READY (or STARTING) program's run ending by itself."""
    lines = []
    policies = {
        "always": RestartPolicy(),
        "on-failure": RestartPolicy(RestartMode.ON_FAILURE),
        "never": RestartPolicy(RestartMode.NEVER),
        "limit 1": RestartPolicy(max_restarts=1, window_seconds=100),
    }
    grace = ReadinessCheck(liveness_grace_seconds=30)
    unhealthy = {"health": Health.UNHEALTHY, "unhealthy_since": NOW - 30}
    for name, policy in policies.items():
        for state in (State.STARTING, State.READY):
            program = replace(program_in(state), restart_policy=policy, readiness=grace)
            if state is State.STARTING:
                program = replace(program, container_id="c-1")
            if name == "limit 1":
                program = replace(program, recent_restarts=(NOW - 50,))
            cases: list[tuple[str, Program, ev.Event]] = [
                ("exit 0", program, ev.ContainerExited(NOW, 1, 0)),
                ("exit 3", program, ev.ContainerExited(NOW, 1, 3)),
            ]
            if state is State.READY:
                cases.append(
                    (
                        "no answer for its grace",
                        replace(program, **unhealthy),  # type: ignore[arg-type]
                        ev.WatcherProbed(NOW, 1, False, "", "TimeoutError"),
                    )
                )
            for what, before, event in cases:
                outcome = reduce(before, event)
                lines.append(f"{state.name}[{name}] + {what}: {describe(before, outcome)}")
        lines.append("")
    return lines


if __name__ == "__main__":
    print(table(), end="")
