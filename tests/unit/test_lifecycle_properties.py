"""Properties of the lifecycle over random interleavings of requests and results.

A small simulated world executes the reducer's effects the way the
supervisor and a well-behaved runtime do, with an inbox in FIFO order, so
results can arrive late (after a cancel, after a new run began). Hypothesis
picks what happens next. After every step, and once everything has settled,
the invariants must hold.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from hershy.domain import effects as fx
from hershy.domain import events as ev
from hershy.domain.model import (
    ROLLOUT_IN_PROGRESS,
    BackoffPolicy,
    Health,
    Program,
    ReadinessCheck,
    Resources,
    RestartMode,
    RestartPolicy,
    RolloutPhase,
    State,
)
from hershy.domain.reducer import Ignored, Rejected, Transition, create, reduce

POLICY = BackoffPolicy(initial=1, factor=2, cap=8, reset_after=30)
AT_REST = (State.CREATED, State.STOPPED, State.DELETED)
#: A short liveness grace, so that random answers can make liveness crashes.
CHECK = ReadinessCheck(liveness_grace_seconds=1.0)
#: What a WatcherAPI may answer: (answered, state).
ANSWERS = [
    (True, "Ready"),
    (True, "Running"),
    (True, "InitRun"),
    (True, "WaitRecover"),
    (True, "Crashed"),
    (True, "Killed"),
    (False, ""),
]
POLICIES = [
    RestartPolicy(),
    RestartPolicy(RestartMode.ON_FAILURE),
    RestartPolicy(RestartMode.NEVER),
    RestartPolicy(RestartMode.ALWAYS, max_restarts=2, window_seconds=20),
    RestartPolicy(RestartMode.ON_FAILURE, max_restarts=1, window_seconds=5),
]


@dataclass
class Job:
    """An effect the runtime is carrying out."""

    effect: fx.HandledEffect | fx.BuildCandidate
    container: str | None = None  # created by a StartContainer job


@dataclass
class World:
    containers: dict[str, int] = field(default_factory=dict)  # container -> run
    addresses: dict[str, str] = field(default_factory=dict)  # container -> where it is reached
    dead: set[str] = field(default_factory=set)  # containers that exited on their own
    jobs: list[Job] = field(default_factory=list)
    timer: fx.StartRestartTimer | None = None
    inbox: deque[ev.Event] = field(default_factory=deque)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.world = World()
        self.program: Program = create(ev.ProgramCreated(0.0, "p", "u", "b-1"))
        self.deleted = False
        self.stop_is_last_word = False
        self.last_update = 0.0
        #: When the last probe result arrived: the reducer sees time pass through them.
        self.last_probe_at = 0.0

    @initialize(restart_policy=st.sampled_from(POLICIES))
    def created_with(self, restart_policy: RestartPolicy) -> None:
        self.program = create(
            ev.ProgramCreated(0.0, "p", "u", "b-1", readiness=CHECK, restart_policy=restart_policy)
        )

    # --- the world: what the supervisor and a runtime do with effects ----------

    def tick(self) -> float:
        self.now += 0.5
        return self.now

    def apply(self, effects: tuple[fx.Effect, ...]) -> None:
        for effect in effects:
            match effect:
                case fx.CancelInflight():
                    for job in [j for j in self.world.jobs if _cancellable(j)]:
                        # A cancelled start removes the container it created.
                        if job.container is not None:
                            self.world.containers.pop(job.container, None)
                        self.world.jobs.remove(job)
                case fx.CancelTimers():
                    self.world.timer = None
                case fx.StartRestartTimer():
                    self.world.timer = effect
                case _:
                    self.world.jobs.append(Job(effect))

    def deliver(self, event: ev.Event) -> None:
        before = self.program
        if isinstance(event, ev.WatcherProbed):
            self.last_probe_at = event.at
        outcome = reduce(before, event, POLICY)
        if isinstance(outcome, Transition):
            if isinstance(event, ev.StopRequested):
                self.stop_is_last_word = True
            if isinstance(event, ev.StartRequested | ev.RestartRequested):
                self.stop_is_last_word = False
            if isinstance(event, ev.DeployRequested) and before.state is State.BACKOFF:
                self.stop_is_last_word = False  # a deploy to a crashing program starts it
        if self.deleted:
            assert isinstance(outcome, Rejected | Ignored), "a deleted program came back"
            assert not (isinstance(outcome, Ignored) and outcome.effects)
        match outcome:
            case Transition(program=after, effects=effects):
                if isinstance(event, ev.AliasChanged | ev.EnvChanged):
                    # A new name or new variables never touch what runs: a start uses them.
                    assert (after.state, after.run, after.container_id) == (
                        before.state,
                        before.run,
                        before.container_id,
                    )
                    assert effects == ()
                assert after.updated_at >= self.last_update
                self.last_update = after.updated_at
                self.program = after
                self.apply(effects)
            case Ignored(effects=effects):
                self.apply(effects)
            case Rejected():
                assert isinstance(event, ev.UserRequest | ev.AliasChanged | ev.EnvChanged)
        if self.program.state is State.DELETED:
            self.deleted = True

    def complete(self, job: Job, succeed: bool) -> None:
        """One step of a job: most finish in one step; a start takes two."""
        at = self.tick()
        effect = job.effect
        match effect:
            case fx.Build(run=run):
                self.world.jobs.remove(job)
                self.world.inbox.append(
                    ev.BuildSucceeded(at, run, "img") if succeed else ev.BuildFailed(at, run, "x")
                )
            case fx.StartContainer(run=run) if job.container is None:
                # Like the Docker handler: what this run or an older one left goes first.
                for name, owner_run in list(self.world.containers.items()):
                    if owner_run <= run:
                        del self.world.containers[name]
                if not succeed:
                    self.world.jobs.remove(job)
                    self.world.inbox.append(ev.StartFailed(at, run, "x"))
                    return
                number = next(self.world.ids)
                job.container = f"c{number}"
                self.world.containers[job.container] = run
                # Like the runtimes: every container is placed anew.
                address = f"127.0.0.1:{19000 + number}"
                self.world.addresses[job.container] = address
                self.world.inbox.append(ev.ContainerCreated(at, run, job.container, address))
            case fx.StartContainer(run=run):
                self.world.jobs.remove(job)
                if succeed:
                    self.world.inbox.append(ev.ContainerReady(at, run))
                else:
                    if job.container is not None:
                        self.world.containers.pop(job.container, None)
                    self.world.inbox.append(ev.StartFailed(at, run, "x"))
            case fx.StopContainer(run=run, container_id=container_id):
                self.world.jobs.remove(job)
                if succeed:
                    for name, owner_run in list(self.world.containers.items()):
                        if name == container_id or owner_run <= run:
                            del self.world.containers[name]
                    self.world.inbox.append(ev.ContainerStopped(at, run))
                else:
                    self.world.inbox.append(ev.StopFailed(at, run, "x"))
            case fx.BuildCandidate(run=run, version=version):
                self.world.jobs.remove(job)
                self.world.inbox.append(
                    ev.CandidateBuilt(at, run, version, f"img-v{version}")
                    if succeed
                    else ev.CandidateBuildFailed(at, run, version, "x")
                )
            case fx.PruneBuilds():
                self.world.jobs.remove(job)
            case fx.AdoptContainer(run=run, container_id=container_id):
                self.world.jobs.remove(job)
                if container_id not in self.world.containers or container_id in self.world.dead:
                    self.world.inbox.append(ev.ContainerExited(at, run, -1))
            case fx.Teardown(run=run):
                self.world.jobs.remove(job)
                if succeed:
                    self.world.containers.clear()
                    self.world.inbox.append(ev.TornDown(at, run))
                else:
                    self.world.inbox.append(ev.TeardownFailed(at, run, "x"))

    # --- what hypothesis may make happen ------------------------------------------

    @rule(build=st.sampled_from(["b-1", "b-2", "b-3"]), memory=st.sampled_from([256, 512]))
    def deploy_request(self, build: str, memory: int) -> None:
        resources = Resources(memory_bytes=memory * 1024 * 1024)
        keep = frozenset({build, self.program.build_id})
        self.world.inbox.append(ev.DeployRequested(self.tick(), build, resources, "u", "", keep))

    @precondition(
        lambda self: (
            self.program.state is State.READY
            and (self.program.rollout is None or not self.program.rollout.in_progress)
        )
    )
    @rule(build=st.sampled_from(["b-2", "b-3"]))
    def deploy_while_ready(self, build: str) -> None:
        """Rollouts of a serving program, often: their every phase meets every result."""
        keep = frozenset({build, self.program.build_id})
        self.world.inbox.append(ev.DeployRequested(self.tick(), build, Resources(), "u", "", keep))

    @rule(kind=st.sampled_from(["start", "stop", "restart", "delete"]))
    def user_request(self, kind: str) -> None:
        at = self.tick()
        kinds: dict[str, Callable[[float], ev.UserRequest]] = {
            "start": ev.StartRequested,
            "stop": ev.StopRequested,
            "restart": ev.RestartRequested,
            "delete": ev.DeleteRequested,
        }
        request = kinds[kind](at)
        # Requests share the inbox with results, in arrival order, as in the supervisor.
        self.world.inbox.append(request)

    @rule(kind=st.sampled_from(["alias", "env"]), value=st.sampled_from(["", "a", "b"]))
    def config_change(self, kind: str, value: str) -> None:
        at = self.tick()
        env = (("X", value),) if value else ()
        change = ev.AliasChanged(at, value) if kind == "alias" else ev.EnvChanged(at, env)
        self.world.inbox.append(change)

    @precondition(lambda self: bool(self.world.jobs))
    @rule(data=st.data(), succeed=st.booleans())
    def job_step(self, data: st.DataObject, succeed: bool) -> None:
        job = data.draw(st.sampled_from(self.world.jobs))
        self.complete(job, succeed)

    @precondition(
        lambda self: any(isinstance(job.effect, fx.StartContainer) for job in self.world.jobs)
    )
    @rule()
    def a_start_fails(self) -> None:
        """A start that fails (a switch's too: it must revert), as often as a build does."""
        job = next(j for j in self.world.jobs if isinstance(j.effect, fx.StartContainer))
        self.complete(job, succeed=False)

    @precondition(lambda self: bool(self.world.inbox))
    @rule()
    def deliver_next(self) -> None:
        self.deliver(self.world.inbox.popleft())

    @precondition(lambda self: bool(set(self.world.containers) - self.world.dead))
    @rule(data=st.data(), code=st.integers(0, 255))
    def container_exits(self, data: st.DataObject, code: int) -> None:
        name = data.draw(st.sampled_from(sorted(set(self.world.containers) - self.world.dead)))
        self.world.dead.add(name)
        self.world.inbox.append(
            ev.ContainerExited(self.tick(), self.world.containers[name], code, False, name)
        )

    @precondition(lambda self: bool(set(self.world.containers) - self.world.dead))
    @rule(data=st.data(), answer=st.sampled_from(ANSWERS))
    def watcher_answers(self, data: st.DataObject, answer: tuple[bool, str]) -> None:
        """A probe of a live container's WatcherAPI (liveness or the start's), any answer."""
        name = data.draw(st.sampled_from(sorted(set(self.world.containers) - self.world.dead)))
        self.world.inbox.append(ev.WatcherProbed(self.tick(), self.world.containers[name], *answer))

    @precondition(lambda self: self.world.timer is not None)
    @rule()
    def timer_fires(self) -> None:
        timer = self.world.timer
        assert timer is not None
        self.world.timer = None
        self.now = max(self.now, timer.at)
        self.world.inbox.append(ev.RestartTimerFired(self.tick(), timer.run))

    @rule()
    def everything_in_flight_finishes(self) -> None:
        """Reach resting states in one step, so deep sequences stay likely."""
        self.run_to_rest(steps=200, fire_timers=False)

    @rule()
    def host_killed_and_restarted(self) -> None:
        """kill -9 of the Host: work in flight and unprocessed results are lost; containers
        stay. On start, what no program owns is reaped, then the program resumes."""
        self.world.jobs.clear()
        self.world.timer = None
        self.world.inbox.clear()
        for name, run in list(self.world.containers.items()):
            if self.program.state is State.DELETED or run != self.program.run:
                del self.world.containers[name]
        if not self.deleted:
            self.deliver(ev.HostRestarted(self.tick()))

    # --- invariants -----------------------------------------------------------------

    @invariant()
    def a_ready_program_runs_exactly_its_own_container(self) -> None:
        if self.program.state is State.READY:
            assert self.program.container_id in self.world.containers
            assert self.world.containers[self.program.container_id] == self.program.run

    @invariant()
    def a_ready_program_is_reached_where_its_container_was_placed(self) -> None:
        if self.program.state is State.READY:
            assert self.program.container_id is not None
            assert self.program.proxy_target == self.world.addresses[self.program.container_id]

    @invariant()
    def a_program_is_placed_only_once_it_ran(self) -> None:
        if self.program.run == 0:
            assert self.program.proxy_target == ""

    @invariant()
    def a_program_is_judged_only_while_it_runs(self) -> None:
        if self.program.state not in (State.STARTING, State.READY, State.STOPPING):
            assert self.program.health is Health.UNKNOWN
            assert self.program.unhealthy_since is None

    @invariant()
    def a_ready_program_is_never_unhealthy_past_its_grace(self) -> None:
        since = self.program.unhealthy_since
        if self.program.state is State.READY and since is not None:
            assert self.program.health is Health.UNHEALTHY
            assert self.last_probe_at - since < CHECK.liveness_grace_seconds

    @invariant()
    def the_restart_policy_is_kept(self) -> None:
        rules = self.program.restart_policy
        if rules.mode is RestartMode.NEVER:
            assert self.program.restart_count == 0
        if rules.max_restarts:
            assert len(self.program.recent_restarts) <= rules.max_restarts
        if self.program.state is State.STOPPED and self.program.last_exit_code not in (None, 0):
            # Stopped by itself only with exit code 0; else it was a user's stop.
            assert self.program.error is None

    @invariant()
    def a_rollout_is_under_way_only_while_the_program_moves(self) -> None:
        rollout = self.program.rollout
        if rollout is not None and rollout.phase in ROLLOUT_IN_PROGRESS:
            assert self.program.state in (
                State.READY,
                State.STOPPING,
                State.STARTING,
                State.BUILDING,
            ), self.program.state.name
            if rollout.phase is RolloutPhase.BUILDING:
                # The current revision keeps serving while the candidate builds.
                assert self.program.state is State.READY
                assert self.program.version == rollout.previous.number

    @invariant()
    def revision_numbers_only_grow(self) -> None:
        assert 1 <= self.program.version <= self.program.latest_version

    @invariant()
    def a_restart_is_scheduled_only_in_backoff(self) -> None:
        if self.world.timer is not None:
            assert self.program.state is State.BACKOFF

    def run_to_rest(self, *, steps: int, fire_timers: bool) -> bool:
        """Deliver results and finish jobs (successfully) until nothing is left; True if so."""
        for _ in range(steps):
            if self.world.inbox:
                self.deliver(self.world.inbox.popleft())
            elif self.world.jobs:
                self.complete(self.world.jobs[0], succeed=True)
            elif fire_timers and self.world.timer is not None:
                self.timer_fires()
            else:
                return True
        return False

    def settle(self) -> None:
        """Let every job finish successfully and every result arrive; no new requests."""
        if not self.run_to_rest(steps=1000, fire_timers=True):
            raise AssertionError("the lifecycle never settled")

    def teardown(self) -> None:
        self.settle()
        if self.program.state is State.DELETING:
            # The last teardown failed; deleting again must finish the job.
            assert self.program.error is not None
            self.world.inbox.append(ev.DeleteRequested(self.tick()))
            self.settle()
        state = self.program.state
        leftovers = set(self.world.containers)
        if state in AT_REST:
            assert not leftovers, f"{state.name} with containers {leftovers} left behind"
        elif state is State.ERROR:
            # A failed stop leaves its container, tracked so Start/Stop retry it.
            assert leftovers <= {self.program.container_id}
        elif state is State.READY:
            assert leftovers == {self.program.container_id}
            assert self.program.container_id not in self.world.dead, "READY on a dead container"
        else:
            raise AssertionError(f"settled in {state.name}, which is not a resting state")
        if self.stop_is_last_word:
            assert state in (State.STOPPED, State.ERROR, State.DELETED), state.name
        rollout = self.program.rollout
        if rollout is not None:
            assert rollout.phase not in ROLLOUT_IN_PROGRESS, "a rollout never ended"
            if state is State.READY and rollout.phase is RolloutPhase.SUCCEEDED:
                assert self.program.version == rollout.target.number
                assert self.program.build_id == rollout.target.build_id
            if state is State.READY and rollout.phase is RolloutPhase.REVERTED:
                assert self.program.version == rollout.previous.number
                assert self.program.build_id == rollout.previous.build_id
        if self.deleted:
            assert state is State.DELETED


def _cancellable(job: Job) -> bool:
    return isinstance(job.effect, fx.Build | fx.BuildCandidate | fx.StartContainer)


Lifecycle.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestLifecycle = Lifecycle.TestCase


class Rollouts(Lifecycle):
    """The same world and invariants, from a program that serves: deploys meet every result."""

    @initialize(restart_policy=st.sampled_from(POLICIES))
    def created_with(self, restart_policy: RestartPolicy) -> None:
        """Created with the policy, then serving (READY on c0) with a rollout in flight."""
        super().created_with(restart_policy)
        program = self.program
        for event in (
            ev.StartRequested(0.1),
            ev.BuildSucceeded(0.2, 1, "img"),
            ev.ContainerCreated(0.3, 1, "c0", "127.0.0.1:19000"),
            ev.ContainerReady(0.4, 1),
        ):
            outcome = reduce(program, event, POLICY)
            assert isinstance(outcome, Transition)
            program = outcome.program
        self.program = program
        self.world.containers["c0"] = 1
        self.world.addresses["c0"] = "127.0.0.1:19000"
        self.now = self.last_update = 0.4
        # A rollout in flight from the first step: its every phase meets what follows.
        self.deliver(ev.DeployRequested(0.5, "b-2", Resources(), "u", "", frozenset({"b-2"})))

    @precondition(
        lambda self: (
            self.program.rollout is not None
            and self.program.rollout.phase in (RolloutPhase.SWITCHING, RolloutPhase.REVERTING)
        )
    )
    @rule(data=st.data(), action=st.sampled_from(["step", "fail", "stop", "delete", "crash"]))
    def during_a_switch(self, data: st.DataObject, action: str) -> None:
        """Whatever can happen while the program moves between revisions."""
        starts = [j for j in self.world.jobs if isinstance(j.effect, fx.StartContainer)]
        match action:
            case "fail" if starts:
                self.complete(starts[0], succeed=False)
            case "stop":
                self.world.inbox.append(ev.StopRequested(self.tick()))
            case "delete":
                self.world.inbox.append(ev.DeleteRequested(self.tick()))
            case "crash" if self.world.containers:
                name = data.draw(st.sampled_from(sorted(self.world.containers)))
                self.world.dead.add(name)
                run = self.world.containers[name]
                self.world.inbox.append(ev.ContainerExited(self.tick(), run, 1, False, name))
            case _ if self.world.inbox:
                self.deliver(self.world.inbox.popleft())
            case _ if self.world.jobs:
                self.complete(self.world.jobs[0], succeed=True)

    @precondition(lambda self: self.program.rollout is None or not self.program.rollout.in_progress)
    @rule()
    def everything_in_flight_finishes(self) -> None:
        """Only between rollouts: a rollout's steps are taken one by one, with any in between."""
        self.run_to_rest(steps=200, fire_timers=False)


Rollouts.TestCase.settings = settings(max_examples=300, stateful_step_count=30, deadline=None)
TestRollouts = Rollouts.TestCase
