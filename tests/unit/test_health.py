"""Readiness, liveness and restart policies in the pure domain (issue #14)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hershy.domain import effects as fx
from hershy.domain import events as ev
from hershy.domain.errors import InvalidArgument
from hershy.domain.health import StartJudge, StartVerdict
from hershy.domain.model import (
    Health,
    Program,
    ReadinessCheck,
    RestartMode,
    RestartPolicy,
    State,
    StopSettings,
)
from hershy.domain.reducer import Ignored, Outcome, Transition, reduce
from hershy.domain.validation import validate_readiness, validate_restart_policy, validate_stop
from tests.unit.lifecycle_table import NOW, T0, program_in


def accepted(outcome: Outcome) -> Transition:
    assert isinstance(outcome, Transition), outcome
    return outcome


# --- the start's judge ------------------------------------------------------------


def test_hersh_is_ready_only_after_its_initrun() -> None:
    judge = StartJudge(ReadinessCheck())
    # The zero value reads Ready before InitRun: not trusted at once.
    assert judge.feed(0.0, True, "Ready") is StartVerdict.PENDING
    assert judge.feed(0.2, True, "InitRun") is StartVerdict.PENDING
    assert judge.feed(5.0, True, "InitRun") is StartVerdict.PENDING
    assert judge.feed(5.1, True, "Ready") is StartVerdict.READY


def test_a_ready_answer_that_holds_for_the_settle_window_is_ready() -> None:
    judge = StartJudge(ReadinessCheck(settle_seconds=1.0))
    assert judge.feed(0.0, True, "Ready") is StartVerdict.PENDING
    assert judge.feed(0.5, True, "Ready") is StartVerdict.PENDING
    # A gap without an answer starts the window again.
    assert judge.feed(0.7, False, "") is StartVerdict.PENDING
    assert judge.feed(1.2, True, "Ready") is StartVerdict.PENDING
    assert judge.feed(2.2, True, "Ready") is StartVerdict.READY


def test_waitrecover_keeps_it_starting_and_crashed_fails_it_in_its_words() -> None:
    judge = StartJudge(ReadinessCheck())
    assert judge.feed(0.0, True, "WaitRecover", "nil message") is StartVerdict.PENDING
    assert judge.feed(99.0, True, "WaitRecover") is StartVerdict.PENDING
    assert judge.feed(100.0, True, "Crashed", "nil message") is StartVerdict.FAILED
    assert judge.reason == 'the program reported "Crashed" (nil message) while starting'


def test_a_check_without_a_field_takes_any_2xx_answer() -> None:
    judge = StartJudge(ReadinessCheck(path="/healthz", field=""))
    assert judge.feed(0.0, False, "", "it answered 503") is StartVerdict.PENDING
    assert judge.feed(0.1, True, "") is StartVerdict.READY


def test_custom_values() -> None:
    check = ReadinessCheck(field="phase", ready_values=("up",), failed_values=("dead",))
    judge = StartJudge(replace(check, settle_seconds=0))
    assert judge.feed(0.0, True, "Ready") is StartVerdict.PENDING  # not one of its values
    assert judge.feed(0.1, True, "up") is StartVerdict.READY
    assert StartJudge(check).feed(0.0, True, "dead") is StartVerdict.FAILED


# --- liveness after READY ------------------------------------------------------------


def test_the_same_answer_again_records_nothing() -> None:
    program = accepted(reduce(program_in(State.READY), ev.WatcherProbed(NOW, 1, True, "Ready")))
    again = reduce(program.program, ev.WatcherProbed(NOW + 10, 1, True, "Ready"))
    assert isinstance(again, Ignored)


def test_no_answer_past_the_grace_is_a_crash_with_backoff_and_the_reason() -> None:
    program = replace(program_in(State.READY), readiness=ReadinessCheck(liveness_grace_seconds=30))
    first = accepted(reduce(program, ev.WatcherProbed(NOW, 1, False, "", "TimeoutError")))
    assert first.program.state is State.READY
    assert first.program.health is Health.UNHEALTHY
    assert first.program.unhealthy_since == NOW
    assert isinstance(
        reduce(first.program, ev.WatcherProbed(NOW + 29, 1, False, "", "TimeoutError")), Ignored
    )
    crash = accepted(
        reduce(first.program, ev.WatcherProbed(NOW + 30, 1, False, "", "TimeoutError"))
    )
    assert crash.program.state is State.BACKOFF
    assert crash.program.error == ("liveness: no answer (TimeoutError) for 30 s (grace 30 s)")
    assert crash.program.restart_count == 1
    assert crash.effects == (
        fx.StopContainer(1, "c-1"),
        fx.StartRestartTimer(1, crash.program.next_restart_at or 0),
    )


def test_an_answer_within_the_grace_clears_it() -> None:
    program = program_in(State.READY)
    bad = accepted(reduce(program, ev.WatcherProbed(NOW, 1, True, "Crashed")))
    good = accepted(reduce(bad.program, ev.WatcherProbed(NOW + 5, 1, True, "Ready")))
    assert good.program.health is Health.HEALTHY
    assert good.program.unhealthy_since is None
    assert good.program.health_reason == ""
    # A new bad spell counts from its own start.
    again = accepted(reduce(good.program, ev.WatcherProbed(NOW + 40, 1, True, "Killed")))
    assert again.program.state is State.READY
    assert again.program.unhealthy_since == NOW + 40


def test_waitrecover_after_ready_is_degraded_not_a_crash() -> None:
    program = program_in(State.READY)
    step = accepted(reduce(program, ev.WatcherProbed(NOW, 1, True, "WaitRecover", "retrying")))
    assert step.program.health is Health.DEGRADED
    late = reduce(step.program, ev.WatcherProbed(NOW + 3600, 1, True, "WaitRecover", "retrying"))
    assert isinstance(late, Ignored)


def test_probes_of_an_old_run_or_at_rest_are_ignored() -> None:
    assert isinstance(reduce(program_in(State.READY), ev.WatcherProbed(NOW, 0, False)), Ignored)
    for state in (State.STOPPED, State.BACKOFF, State.ERROR, State.CREATED):
        assert isinstance(reduce(program_in(state), ev.WatcherProbed(NOW, 1, False)), Ignored)


def test_a_new_container_starts_with_no_view() -> None:
    program = replace(program_in(State.STARTING), watcher_state="Crashed", health=Health.UNHEALTHY)
    step = accepted(reduce(program, ev.ContainerCreated(NOW, 1, "c-9", "127.0.0.1:19009")))
    assert step.program.watcher_state == ""
    assert step.program.health is Health.UNKNOWN


# --- restart policies ----------------------------------------------------------------


def with_policy(policy: RestartPolicy) -> Program:
    return replace(program_in(State.READY), restart_policy=policy)


def test_always_restarts_even_after_exit_0() -> None:
    step = accepted(reduce(with_policy(RestartPolicy()), ev.ContainerExited(NOW, 1, 0)))
    assert step.program.state is State.BACKOFF


def test_on_failure_exit_0_ends_stopped_with_the_code_and_removes_the_container() -> None:
    program = with_policy(RestartPolicy(RestartMode.ON_FAILURE))
    step = accepted(reduce(program, ev.ContainerExited(NOW, 1, 0)))
    assert step.program.state is State.STOPPED
    assert step.program.last_exit_code == 0
    assert step.program.error is None
    assert step.program.restart_count == 0
    assert step.effects == (fx.StopContainer(1, "c-1"),)
    failing = accepted(reduce(program, ev.ContainerExited(NOW, 1, 2)))
    assert failing.program.state is State.BACKOFF


def test_never_ends_stopped_on_0_and_error_otherwise() -> None:
    program = with_policy(RestartPolicy(RestartMode.NEVER))
    assert accepted(reduce(program, ev.ContainerExited(NOW, 1, 0))).program.state is State.STOPPED
    failed = accepted(reduce(program, ev.ContainerExited(NOW, 1, 137, True)))
    assert failed.program.state is State.ERROR
    assert failed.program.error == (
        "exited with code 137 (killed: out of memory) (restart policy: never)"
    )
    assert failed.effects == (fx.StopContainer(1, "c-1"),)
    liveness = accepted(reduce(program, ev.WatcherProbed(NOW, 1, True, "Crashed")))
    gone = accepted(reduce(liveness.program, ev.WatcherProbed(NOW + 31, 1, True, "Crashed")))
    assert gone.program.state is State.ERROR
    assert gone.program.error is not None
    assert gone.program.error.startswith("liveness:")


def test_the_restart_limit_ends_error_with_the_reason() -> None:
    program = with_policy(RestartPolicy(max_restarts=2, window_seconds=100))
    first = accepted(reduce(program, ev.ContainerExited(NOW, 1, 1)))
    assert first.program.recent_restarts == (NOW,)
    second_run = replace(first.program, state=State.READY, run=2, recent_restarts=(NOW,))
    second = accepted(reduce(second_run, ev.ContainerExited(NOW + 10, 2, 1)))
    assert second.program.state is State.BACKOFF
    third_run = replace(second.program, state=State.READY, run=3)
    third = accepted(reduce(third_run, ev.ContainerExited(NOW + 20, 3, 1)))
    assert third.program.state is State.ERROR
    assert third.program.error == (
        "exited with code 1; restarted 2 times within 100 s, the restart limit: not restarted again"
    )
    # Restarts older than the window do not count.
    later = replace(third_run, recent_restarts=(NOW - 500, NOW - 400))
    assert (
        accepted(reduce(later, ev.ContainerExited(NOW + 20, 3, 1))).program.state is State.BACKOFF
    )


def test_a_users_start_forgets_the_counted_restarts() -> None:
    program = replace(program_in(State.ERROR), recent_restarts=(T0, T0 + 1))
    assert accepted(reduce(program, ev.StartRequested(NOW))).program.recent_restarts == ()


def test_settings_travel_from_create_to_the_start() -> None:
    from hershy.domain.reducer import create

    check = ReadinessCheck(path="/healthz", field="", timeout_seconds=5)
    stop = StopSettings("SIGINT", 3)
    program = create(ev.ProgramCreated(T0, "p", "u", "b", readiness=check, stop=stop))
    built = replace(program, state=State.BUILDING, run=1)
    step = accepted(reduce(built, ev.BuildSucceeded(NOW, 1, "img")))
    (start,) = step.effects
    assert isinstance(start, fx.StartContainer)
    assert start.readiness == check
    assert start.stop == stop


# --- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "field"),
    [
        (ReadinessCheck(path="watcher/status"), "readiness.path"),
        (ReadinessCheck(path="/a/../b"), "readiness.path"),
        (ReadinessCheck(path="/" + "a" * 300), "readiness.path"),
        (ReadinessCheck(path="/x\n"), "readiness.path"),
        (ReadinessCheck(field="a b"), "readiness.field"),
        (ReadinessCheck(ready_values=("",)), "readiness.ready_values"),
        (ReadinessCheck(ready_values=tuple(str(n) for n in range(17))), "readiness.ready_values"),
        (ReadinessCheck(failed_values=("Ready",)), "readiness.failed_values"),
        (ReadinessCheck(timeout_seconds=-1), "readiness.timeout"),
        (ReadinessCheck(timeout_seconds=float("nan")), "readiness.timeout"),
        (ReadinessCheck(settle_seconds=61), "readiness.settle"),
        (ReadinessCheck(liveness_grace_seconds=0.1), "readiness.liveness_grace"),
    ],
)
def test_bad_readiness_checks_are_refused_naming_the_field(
    check: ReadinessCheck, field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        validate_readiness(check)
    assert refused.value.field == field
    assert len(refused.value.message) < 300


def test_bad_restart_policies_and_stop_settings_are_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"restart_policy\.max_restarts"):
        validate_restart_policy(RestartPolicy(max_restarts=-1))
    with pytest.raises(InvalidArgument, match=r"restart_policy\.window"):
        validate_restart_policy(RestartPolicy(max_restarts=3, window_seconds=0))
    with pytest.raises(InvalidArgument, match=r"stop\.signal"):
        validate_stop(StopSettings("SIGSEGV"))
    with pytest.raises(InvalidArgument, match=r"stop\.grace"):
        validate_stop(StopSettings("SIGTERM", 301))
    assert validate_stop(StopSettings("SIGINT", 0)) == StopSettings("SIGINT", 0)
    assert validate_readiness(ReadinessCheck()) == ReadinessCheck()
