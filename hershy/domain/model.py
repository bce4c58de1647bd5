"""The program resource and its lifecycle states.

Pure data: no IO, no clock, no randomness. Times are plain floats (Unix
seconds) that arrive inside events; ids arrive the same way.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.Enum):
    """Lifecycle states; the values match `hershy.v1.State` numbers."""

    CREATED = 1
    BUILDING = 2
    STARTING = 3
    READY = 4
    STOPPING = 5
    STOPPED = 6
    BACKOFF = 7
    ERROR = 8
    DELETING = 9
    DELETED = 10


#: States in which some run of the program may be doing work (a build, a
#: container, a timer). Everything else is at rest.
ACTIVE_STATES = frozenset(
    {State.BUILDING, State.STARTING, State.READY, State.STOPPING, State.BACKOFF}
)


class LogStream(enum.Enum):
    """Where a log line came from; the values match `hershy.v1.LogStream` numbers."""

    BUILD = 1
    STDOUT = 2
    STDERR = 3
    HOST = 4


@dataclass(frozen=True, slots=True)
class LogLine:
    at: float
    stream: LogStream
    run: int
    text: str
    #: Where the runtime had the line (for Docker `<container>@<ns timestamp>`): a copy
    #: resumes right after the last line copied, so none is lost or repeated. "" if none.
    mark: str = ""


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Delays before restarting a crashed program, like Kubernetes' CrashLoopBackOff.

    The n-th consecutive crash waits `initial * factor**(n-1)`, at most `cap`.
    A run that stayed Ready for `reset_after` seconds resets the streak.
    """

    initial: float = 10.0
    factor: float = 2.0
    cap: float = 300.0
    reset_after: float = 600.0

    def delay(self, streak: int) -> float:
        """The wait before the restart that follows the `streak`-th consecutive crash."""
        if streak < 1:
            raise ValueError("streak starts at 1")
        # Cap the exponent too, so a long streak never overflows a float.
        exponent = min(streak - 1, 64)
        return float(min(self.cap, self.initial * self.factor**exponent))


@dataclass(frozen=True, slots=True)
class Resources:
    """Limits on a program's container and its `/state` volume."""

    memory_bytes: int = 512 * 1024 * 1024
    milli_cpus: int = 1000
    pids: int = 256
    #: The size of the program's `/state` volume (a file system of its own).
    state_bytes: int = 1024 * 1024 * 1024


class Health(enum.Enum):
    """The Host's verdict on a running program, from its own WatcherAPI answers.

    The values match `hershy.v1.Health` numbers.
    """

    #: Not running, or not asked yet.
    UNKNOWN = 1
    #: Answering, but not (yet) initialised: Hersh's `InitRun`, `WaitRecover`, or a first
    #: `Ready` not yet seen settling.
    INITIALISING = 2
    #: Answering with a ready value (`Ready`, `Running`).
    HEALTHY = 3
    #: Answering, but with a state that is neither ready nor failed (e.g. `WaitRecover`
    #: after it was Ready: recovering by itself).
    DEGRADED = 4
    #: Not answering, or reporting a failed state (`Crashed`, `Killed`); past the
    #: liveness grace this is a crash.
    UNHEALTHY = 5


#: What Hersh v0.2.0's `GET /watcher/status` reports in `state`, as the Host reads it.
HERSH_READY_VALUES = ("Ready", "Running")
HERSH_FAILED_VALUES = ("Crashed", "Killed")


@dataclass(frozen=True, slots=True)
class ReadinessCheck:
    """How the Host tells that a program is initialised, and that it stays alive.

    The default is Hersh's: `GET /watcher/status`, its JSON field `state`, ready when it
    is `Ready` or `Running` after the start was seen settling, failed when `Crashed` or
    `Killed`. An empty `field` accepts any 2xx answer (programs that are not Hersh).
    """

    path: str = "/watcher/status"
    field: str = "state"
    ready_values: tuple[str, ...] = HERSH_READY_VALUES
    failed_values: tuple[str, ...] = HERSH_FAILED_VALUES
    #: How long a start may take to be ready; 0: the Host's `--ready-timeout`.
    timeout_seconds: float = 0.0
    #: A first ready answer counts only once the same answer held this long (Hersh
    #: reports `Ready` for a moment before its InitRun); an answer after a settling one
    #: (`InitRun`, `WaitRecover`) counts at once.
    settle_seconds: float = 1.0
    #: After READY: how long no answer, or a failed state, is tolerated before it is
    #: treated as a crash.
    liveness_grace_seconds: float = 30.0


class RestartMode(enum.Enum):
    """When an exited program is restarted; the values match `hershy.v1.RestartMode`."""

    #: Any exit (or liveness failure) restarts it, with backoff.
    ALWAYS = 1
    #: Exit code 0 ends it STOPPED; any other exit restarts it.
    ON_FAILURE = 2
    #: Never restarted: exit 0 ends it STOPPED, anything else ERROR.
    NEVER = 3


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Like Kubernetes' `restartPolicy` with Nomad's `attempts`/`interval` limit."""

    mode: RestartMode = RestartMode.ALWAYS
    #: At most this many automatic restarts within `window_seconds`, then ERROR; 0: no limit.
    max_restarts: int = 0
    window_seconds: float = 600.0


@dataclass(frozen=True, slots=True)
class StopSettings:
    """How the program is asked to stop: `signal`, then `grace_seconds`, then SIGKILL."""

    signal: str = "SIGTERM"
    #: 0: the Host's `--stop-grace`.
    grace_seconds: float = 0.0


class RolloutPhase(enum.Enum):
    """Where a deploy of a new revision is; the values match `hershy.v1.RolloutPhase`."""

    #: The candidate's image builds; the current revision keeps running (READY).
    BUILDING = 1
    #: Built: the current revision stops, then the candidate starts on the same `/state`.
    SWITCHING = 2
    #: The candidate failed after the switch: the previous revision starts again.
    REVERTING = 3
    #: The candidate runs and answered: it is the program's revision now.
    SUCCEEDED = 4
    #: The candidate failed (to build, or to become READY): the previous revision runs.
    REVERTED = 5
    #: A Stop, Delete or crash won over the rollout.
    CANCELLED = 6
    #: The candidate failed and so did starting the previous revision again.
    FAILED = 7


#: Phases in which a rollout is still under way (another change must wait).
ROLLOUT_IN_PROGRESS = frozenset(
    {RolloutPhase.BUILDING, RolloutPhase.SWITCHING, RolloutPhase.REVERTING}
)


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How a revision is judged and handled while it runs (besides its `resources`).

    Part of each revision, like its source and limits: an update makes a new revision
    of them, a rollback restores them. Environment variables and secrets are not:
    they are the program's own settings, taken by whichever revision starts next.
    """

    readiness: ReadinessCheck = ReadinessCheck()
    restart_policy: RestartPolicy = RestartPolicy()
    stop: StopSettings = StopSettings()


def settings_of(program: Program) -> RunSettings:
    """The run settings `program` has now."""
    return RunSettings(program.readiness, program.restart_policy, program.stop)


@dataclass(frozen=True, slots=True)
class Version:
    """What one revision of a program runs: its build inputs and its configuration."""

    number: int
    build_id: str
    resources: Resources
    #: None in records stored before revisions carried them: the program's own stay.
    settings: RunSettings | None = None


@dataclass(frozen=True, slots=True)
class Rollout:
    """A program's latest deploy: in progress, or how it ended (Nomad's auto_revert)."""

    target: Version
    #: The revision that ran when the deploy began: started again if the target fails.
    previous: Version
    phase: RolloutPhase
    started_at: float
    #: The image the previous revision ran (a revert starts it without building).
    previous_image_id: str | None = None
    #: The target's image, once built.
    candidate_image_id: str | None = None
    #: Why it was reverted, cancelled or failed; empty while it goes well.
    reason: str = ""
    finished_at: float | None = None
    #: The builds whose images and sources stay once it ends (the newest revisions').
    keep: frozenset[str] = frozenset()

    @property
    def in_progress(self) -> bool:
        return self.phase in ROLLOUT_IN_PROGRESS


@dataclass(frozen=True, slots=True)
class Revision:
    """One version of a program, kept for its history and for rollbacks."""

    program_id: str
    number: int
    #: The build inputs' content hash (`build_id`): the source the revision runs.
    build_id: str
    resources: Resources
    #: Who made it (the caller's user), and when.
    created_by: str
    created_at: float
    #: How it came about: `create`, `deploy`, `update resources`, `rollback to revision 1`.
    description: str
    #: Its readiness check, restart policy and stop settings; None in records stored
    #: before revisions carried them (a rollback to one keeps the program's).
    settings: RunSettings | None = None


@dataclass(frozen=True, slots=True)
class Program:
    """One program as the reducer sees it.

    `run` numbers the build/start attempts: every effect and every result
    carries the run it belongs to, so a late result of an old run is told
    apart from the current one.

    `proxy_target` is where the Host reaches the program's WatcherAPI, as the
    runtime reported it when the container of its current (or last) run was
    created; empty until the program first runs.
    """

    id: str
    user_id: str
    build_id: str
    proxy_target: str
    created_at: float
    updated_at: float
    #: Where its current or last run was placed on a cluster (Kubernetes: the node and
    #: the pod); empty on Docker and before it first ran.
    node: str = ""
    pod: str = ""
    resources: Resources = Resources()
    state: State = State.CREATED
    run: int = 0
    image_id: str | None = None
    container_id: str | None = None
    error: str | None = None
    restart_count: int = 0
    crash_streak: int = 0
    last_exit_code: int | None = None
    ready_since: float | None = None
    next_restart_at: float | None = None
    restart_pending: bool = False
    #: What the program waits for, for people (the build queue); cleared when the state changes.
    note: str = ""
    #: The name its user chose (unique among that user's programs); "" if none.
    alias: str = ""
    #: Plain environment variables, sorted by name; a start (re)reads them.
    env: tuple[tuple[str, str], ...] = ()
    readiness: ReadinessCheck = ReadinessCheck()
    restart_policy: RestartPolicy = RestartPolicy()
    stop: StopSettings = StopSettings()
    #: The program's own view, from its WatcherAPI: the state it last reported ("" none),
    #: since when it reports it, and when it last answered (as of the last change: only
    #: changes are recorded).
    watcher_state: str = ""
    watcher_state_since: float | None = None
    watcher_answered_at: float | None = None
    health: Health = Health.UNKNOWN
    #: Why it is not healthy, in the Host's and the program's words ("" when healthy).
    health_reason: str = ""
    #: Since when it has not answered or reported a failed state (after READY).
    unhealthy_since: float | None = None
    #: When the automatic restarts counted by the restart limit happened (within its window).
    recent_restarts: tuple[float, ...] = ()
    #: The revision the program runs (or its next start runs): 1 from Create.
    version: int = 1
    #: The newest revision number given out; a deploy makes the next one.
    latest_version: int = 1
    #: The latest deploy (in progress, or how it ended); None before the first.
    rollout: Rollout | None = None
    # Host-wide revision of the last committed change. Stamped by the
    # registry when a change is committed; the reducer leaves it alone.
    revision: int = 0
