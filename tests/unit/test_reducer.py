"""The lifecycle, one event at a time."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from hershy.domain import effects as fx
from hershy.domain import events as ev
from hershy.domain.model import BackoffPolicy, Program, Resources, State
from hershy.domain.reducer import Ignored, Outcome, Rejected, Transition, create, reduce
from tests.unit.lifecycle_table import NOW, events_for, program_in, table

GOLDEN = Path(__file__).parent / "testdata" / "transitions.txt"


def accepted(outcome: Outcome) -> Transition:
    assert isinstance(outcome, Transition), outcome
    return outcome


def test_every_state_and_event_pair_matches_the_reviewed_table() -> None:
    assert table() == GOLDEN.read_text(), (
        "the lifecycle changed: regenerate with "
        "`python -m tests.unit.lifecycle_table > tests/unit/testdata/transitions.txt` "
        "and review the diff"
    )


def test_the_table_covers_every_state_and_event_kind() -> None:
    text = GOLDEN.read_text()
    for state in State:
        for event in events_for(1):
            assert f"{state.name} + {type(event).__name__}" in text


def test_create_makes_a_created_program_from_the_event() -> None:
    program = create(ev.ProgramCreated(5.0, "p9", "bob", "b-x", "127.0.0.1:19002"))
    assert (program.id, program.user_id, program.build_id) == ("p9", "bob", "b-x")
    assert program.state is State.CREATED
    assert program.created_at == program.updated_at == 5.0
    assert program.run == 0
    assert isinstance(reduce(program, ev.ProgramCreated(6.0, "p9", "bob", "b", "x")), Rejected)


def test_happy_path_from_created_to_ready_and_stopped() -> None:
    program = program_in(State.CREATED)
    step = accepted(reduce(program, ev.StartRequested(1.0)))
    assert step.program.state is State.BUILDING
    assert step.effects == (fx.Build(1, "b-1"),)
    step = accepted(reduce(step.program, ev.BuildSucceeded(2.0, 1, "img")))
    assert step.effects == (fx.StartContainer(1, "img", "b-1", Resources()),)
    step = accepted(reduce(step.program, ev.ContainerCreated(3.0, 1, "c", "127.0.0.1:19005")))
    assert step.program.container_id == "c"
    assert step.program.proxy_target == "127.0.0.1:19005"
    step = accepted(reduce(step.program, ev.ContainerReady(4.0, 1)))
    assert step.program.state is State.READY
    assert step.program.ready_since == 4.0
    step = accepted(reduce(step.program, ev.StopRequested(5.0)))
    assert step.program.state is State.STOPPING
    assert fx.StopContainer(1, "c") in step.effects
    step = accepted(reduce(step.program, ev.ContainerStopped(6.0, 1)))
    assert step.program.state is State.STOPPED
    assert step.program.container_id is None
    assert step.program.updated_at == 6.0


@pytest.mark.parametrize("state", [State.CREATED, State.STOPPED])
def test_stop_at_rest_is_refused_naming_the_state(state: State) -> None:
    outcome = reduce(program_in(state), ev.StopRequested(NOW))
    assert isinstance(outcome, Rejected)
    assert outcome.state is state
    assert state.name in outcome.message


@pytest.mark.parametrize("state", [State.BUILDING, State.STARTING, State.READY, State.STOPPING])
def test_start_while_active_is_refused_naming_the_state(state: State) -> None:
    outcome = reduce(program_in(state), ev.StartRequested(NOW))
    assert isinstance(outcome, Rejected)
    assert state.name in outcome.message


def test_stop_during_build_cancels_it_and_ends_stopped() -> None:
    step = accepted(reduce(program_in(State.BUILDING), ev.StopRequested(NOW)))
    assert step.program.state is State.STOPPING
    assert step.effects[0] == fx.CancelInflight()
    # The build finishing anyway must not start anything.
    late = reduce(step.program, ev.BuildSucceeded(NOW, 1, "img"))
    assert isinstance(late, Ignored)
    assert late.effects == ()
    done = accepted(reduce(step.program, ev.ContainerStopped(NOW, 1)))
    assert done.program.state is State.STOPPED


def test_stop_during_starting_stops_a_container_that_appears_late() -> None:
    step = accepted(reduce(program_in(State.STARTING), ev.StopRequested(NOW)))
    late = reduce(step.program, ev.ContainerCreated(NOW, 1, "c-late"))
    assert isinstance(late, Ignored)
    assert late.effects == (fx.StopContainer(1, "c-late"),)


def test_a_late_container_of_an_old_run_is_stopped_not_adopted() -> None:
    program = replace(program_in(State.STARTING), run=3)
    outcome = reduce(program, ev.ContainerCreated(NOW, 2, "c-old"))
    assert isinstance(outcome, Ignored)
    assert outcome.effects == (fx.StopContainer(2, "c-old"),)


@pytest.mark.parametrize(
    "event",
    [
        ev.BuildSucceeded(NOW, 1, "img-old"),
        ev.BuildFailed(NOW, 1, "old"),
        ev.ContainerReady(NOW, 1),
        ev.StartFailed(NOW, 1, "old"),
        ev.ContainerExited(NOW, 1, 9),
        ev.ContainerStopped(NOW, 1),
        ev.StopFailed(NOW, 1, "old"),
        ev.RestartTimerFired(NOW, 1),
    ],
)
def test_results_of_an_old_run_change_nothing(event: ev.EffectResult) -> None:
    for state in (State.BUILDING, State.STARTING, State.READY, State.STOPPING, State.BACKOFF):
        program = replace(program_in(state), run=2)
        assert isinstance(reduce(program, event), Ignored), (state, event)


def test_restart_stops_then_starts_a_new_run_reusing_the_build() -> None:
    step = accepted(reduce(program_in(State.READY), ev.RestartRequested(NOW)))
    assert step.program.state is State.STOPPING
    assert step.program.restart_pending
    step = accepted(reduce(step.program, ev.ContainerStopped(NOW + 1, 1)))
    assert step.program.state is State.BUILDING
    assert step.program.run == 2
    # Same build id: the handler reuses the image instead of building.
    assert step.effects == (fx.Build(2, "b-1"),)


def test_delete_from_every_state_tears_down_and_is_terminal() -> None:
    for state in State:
        if state in (State.DELETING, State.DELETED):
            continue
        step = accepted(reduce(program_in(state), ev.DeleteRequested(NOW)))
        assert step.program.state is State.DELETING
        assert step.effects[-1] == fx.Teardown(step.program.run, step.program.container_id)
        gone = accepted(reduce(step.program, ev.TornDown(NOW, step.program.run)))
        assert gone.program.state is State.DELETED
        for request in (ev.StartRequested(NOW), ev.RestartRequested(NOW), ev.DeleteRequested(NOW)):
            assert isinstance(reduce(gone.program, request), Rejected)


def test_a_failed_teardown_is_retried_by_deleting_again() -> None:
    deleting = accepted(reduce(program_in(State.READY), ev.DeleteRequested(NOW))).program
    failed = accepted(reduce(deleting, ev.TeardownFailed(NOW, 1, "busy"))).program
    assert failed.state is State.DELETING
    assert failed.error == "delete failed: busy"
    retry = accepted(reduce(failed, ev.DeleteRequested(NOW + 1)))
    assert retry.effects == (fx.Teardown(1, "c-1"),)
    assert isinstance(reduce(retry.program, ev.DeleteRequested(NOW + 2)), Ignored)


class TestCrashes:
    policy = BackoffPolicy(initial=10, factor=2, cap=300, reset_after=600)

    def crash(self, program: Program, at: float) -> Program:
        step = accepted(
            reduce(program, ev.ContainerExited(at, program.run, 137, True), self.policy)
        )
        assert step.program.state is State.BACKOFF
        assert fx.StopContainer(program.run, program.container_id) in step.effects
        assert fx.StartRestartTimer(program.run, step.program.next_restart_at or 0) in step.effects
        return step.program

    def come_back(self, program: Program, at: float) -> Program:
        step = accepted(reduce(program, ev.RestartTimerFired(at, program.run), self.policy))
        assert step.program.state is State.STARTING
        assert step.effects == (fx.StartContainer(program.run + 1, "img-1", "b-1", Resources()),)
        step = accepted(reduce(step.program, ev.ContainerCreated(at, step.program.run, "c")))
        return accepted(reduce(step.program, ev.ContainerReady(at, step.program.run))).program

    def test_delays_double_up_to_the_cap_and_count_restarts(self) -> None:
        program = program_in(State.READY)
        delays = []
        at = NOW
        for _ in range(8):
            program = self.crash(program, at)
            assert program.next_restart_at is not None
            delays.append(program.next_restart_at - at)
            at = program.next_restart_at
            program = self.come_back(program, at)
            at += 1
        assert delays == [10, 20, 40, 80, 160, 300, 300, 300]
        assert program.restart_count == 8
        assert program.last_exit_code == 137

    def test_the_reason_names_the_exit_code_and_oom(self) -> None:
        program = self.crash(program_in(State.READY), NOW)
        assert program.error == "exited with code 137 (killed: out of memory)"

    def test_ten_minutes_of_running_resets_the_streak(self) -> None:
        program = self.crash(program_in(State.READY), NOW)
        program = self.come_back(program, NOW + 10)
        program = self.crash(program, NOW + 20)
        assert program.crash_streak == 2
        program = self.come_back(program, NOW + 40)
        program = self.crash(program, NOW + 40 + 600)
        assert program.crash_streak == 1
        assert program.next_restart_at == NOW + 40 + 600 + 10

    def test_stop_wins_over_the_pending_restart(self) -> None:
        program = self.crash(program_in(State.READY), NOW)
        step = accepted(reduce(program, ev.StopRequested(NOW + 1)))
        assert step.effects[0] == fx.CancelTimers()
        # The timer fired just before it was cancelled: still no restart.
        assert isinstance(reduce(step.program, ev.RestartTimerFired(NOW + 10, 1)), Ignored)
        assert accepted(reduce(step.program, ev.ContainerStopped(NOW + 2, 1))).program.state is (
            State.STOPPED
        )

    def test_a_stop_request_cancels_a_pending_restart_request(self) -> None:
        stopping = accepted(reduce(program_in(State.READY), ev.RestartRequested(NOW))).program
        stopping = accepted(reduce(stopping, ev.StopRequested(NOW + 1))).program
        assert not stopping.restart_pending
        done = accepted(reduce(stopping, ev.ContainerStopped(NOW + 2, 1))).program
        assert done.state is State.STOPPED


def test_backoff_policy_rejects_a_zero_streak() -> None:
    with pytest.raises(ValueError, match="streak"):
        BackoffPolicy().delay(0)
    assert BackoffPolicy().delay(10_000) == 300.0


def test_start_from_error_with_a_leftover_container_removes_it_first() -> None:
    stuck = replace(program_in(State.ERROR), container_id="c-stuck")
    step = accepted(reduce(stuck, ev.StartRequested(NOW)))
    assert step.program.state is State.STOPPING
    assert step.program.restart_pending
    assert step.effects == (fx.StopContainer(1, "c-stuck"),)
    step = accepted(reduce(step.program, ev.ContainerStopped(NOW, 1)))
    assert step.program.state is State.BUILDING
    assert step.program.container_id is None


def test_the_exit_of_a_container_that_is_not_the_programs_own_is_no_crash() -> None:
    ready = program_in(State.READY)
    stranger = reduce(ready, ev.ContainerExited(NOW, 1, 137, False, "c-leftover"))
    assert isinstance(stranger, Ignored)
    own = accepted(reduce(ready, ev.ContainerExited(NOW, 1, 137, False, "c-1")))
    assert own.program.state is State.BACKOFF


def test_a_start_cut_off_by_a_host_restart_is_redone_without_its_old_container() -> None:
    starting = replace(program_in(State.STARTING), container_id="c-old")
    redo = accepted(reduce(starting, ev.HostRestarted(NOW)))
    assert redo.program.container_id is None
    assert [type(effect) for effect in redo.effects] == [fx.StartContainer]
    assert isinstance(reduce(redo.program, ev.ContainerExited(NOW, 1, 0, False, "c-old")), Ignored)


# --- where the program is reached: the runtime's to say, at every start --------------


def test_a_new_program_is_placed_nowhere_until_it_runs() -> None:
    program = create(ev.ProgramCreated(1.0, "p1", "alice", "b-1"))
    assert program.proxy_target == ""
    step = accepted(reduce(program, ev.StartRequested(2.0)))
    assert step.program.proxy_target == ""
    step = accepted(reduce(step.program, ev.BuildSucceeded(3.0, 1, "img")))
    assert step.program.proxy_target == ""


def test_a_start_records_where_the_runtime_placed_the_container() -> None:
    stopped = program_in(State.STOPPED)
    assert stopped.proxy_target == "127.0.0.1:19001"
    step = accepted(reduce(stopped, ev.StartRequested(NOW)))
    step = accepted(reduce(step.program, ev.BuildSucceeded(NOW, 2, "img-1")))
    step = accepted(reduce(step.program, ev.ContainerCreated(NOW, 2, "c-2", "127.0.0.1:19007")))
    assert step.program.proxy_target == "127.0.0.1:19007"
    # The place was taken after all: the runtime removed that container and made another.
    step = accepted(reduce(step.program, ev.ContainerCreated(NOW, 2, "c-3", "127.0.0.1:19008")))
    assert (step.program.container_id, step.program.proxy_target) == ("c-3", "127.0.0.1:19008")
    ready = accepted(reduce(step.program, ev.ContainerReady(NOW, 2))).program
    assert ready.state is State.READY
    assert ready.proxy_target == "127.0.0.1:19008"


def test_a_container_nobody_wants_moves_nothing() -> None:
    program = replace(program_in(State.STARTING), run=3)
    old = reduce(program, ev.ContainerCreated(NOW, 2, "c-old", "127.0.0.1:19009"))
    assert isinstance(old, Ignored)
    stopping = accepted(reduce(program_in(State.STARTING), ev.StopRequested(NOW))).program
    late = reduce(stopping, ev.ContainerCreated(NOW, 1, "c-late", "127.0.0.1:19009"))
    assert isinstance(late, Ignored)
    assert late.effects == (fx.StopContainer(1, "c-late"),)


def test_a_container_created_event_of_an_older_store_keeps_the_address_it_had() -> None:
    """Stores written before the runtime placed programs: ContainerCreated has no address."""
    program = program_in(State.STARTING)
    step = accepted(reduce(program, ev.ContainerCreated(NOW, 1, "c-2")))
    assert step.program.container_id == "c-2"
    assert step.program.proxy_target == program.proxy_target == "127.0.0.1:19001"
