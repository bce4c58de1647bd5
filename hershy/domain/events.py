"""Everything that can happen to a program, as past-tense facts.

Two families: a user's requests (`*Requested`) and the results of effects the
Host carried out. Every event carries the time it happened (`at`, Unix
seconds); results also carry the `run` they belong to.
"""

from __future__ import annotations

from dataclasses import dataclass

from hershy.domain.model import ReadinessCheck, Resources, RestartPolicy, RunSettings, StopSettings


@dataclass(frozen=True, slots=True)
class ProgramCreated:
    at: float
    program_id: str
    user_id: str
    build_id: str
    #: Where the program's WatcherAPI was to be reached. Empty since the runtime picks
    #: that at every start (`ContainerCreated.address`); in stores written before, it
    #: holds the address fixed at Create, which stays the program's until its next start.
    proxy_target: str = ""
    resources: Resources = Resources()
    #: The name its user chose; "" if none.
    alias: str = ""
    #: Its environment variables, sorted by name.
    env: tuple[tuple[str, str], ...] = ()
    readiness: ReadinessCheck = ReadinessCheck()
    restart_policy: RestartPolicy = RestartPolicy()
    stop: StopSettings = StopSettings()


# --- a user's requests -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartRequested:
    at: float


@dataclass(frozen=True, slots=True)
class StopRequested:
    at: float


@dataclass(frozen=True, slots=True)
class RestartRequested:
    at: float


@dataclass(frozen=True, slots=True)
class DeleteRequested:
    at: float


@dataclass(frozen=True, slots=True)
class AliasChanged:
    """The user renamed the program (`alias` "": it has no name any more)."""

    at: float
    alias: str


@dataclass(frozen=True, slots=True)
class EnvChanged:
    """The program's environment variables are now `env` (the next start uses them)."""

    at: float
    env: tuple[tuple[str, str], ...]


#: Changes to how a program is named and configured: accepted in every state but
#: DELETING, with no effect on what runs (a start picks them up).
ConfigChange = AliasChanged | EnvChanged


@dataclass(frozen=True, slots=True)
class DeployRequested:
    """A new revision: these build inputs and this configuration, rolled out in place.

    The reducer numbers the revision (`Program.latest_version + 1`); the store
    keeps it as the program's revision record with `by` and `description`.
    """

    at: float
    build_id: str
    resources: Resources
    #: Who asked (a user id), for the revision record.
    by: str = ""
    #: How it came about, e.g. `deploy`, `update resources`, `rollback to revision 1`.
    description: str = ""
    #: The builds to keep once the rollout ends (the newest revisions'); the rest go.
    keep: frozenset[str] = frozenset()
    #: The new revision's readiness check, restart policy and stop settings; None keeps
    #: the program's (a deploy of new source).
    settings: RunSettings | None = None


UserRequest = StartRequested | StopRequested | RestartRequested | DeleteRequested | DeployRequested


@dataclass(frozen=True, slots=True)
class HostRestarted:
    """The Host started again with this program in its store: pick up where it was."""

    at: float


# --- results of effects ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BuildSucceeded:
    at: float
    run: int
    image_id: str


@dataclass(frozen=True, slots=True)
class BuildQueued:
    """The build waits in the Host's build queue with `ahead` builds before it (0: it runs)."""

    at: float
    run: int
    ahead: int


@dataclass(frozen=True, slots=True)
class BuildFailed:
    at: float
    run: int
    reason: str


@dataclass(frozen=True, slots=True)
class CandidateBuilt:
    """A rollout's new revision (`version`) was built while the current one runs."""

    at: float
    run: int
    version: int
    image_id: str


@dataclass(frozen=True, slots=True)
class CandidateBuildFailed:
    """A rollout's new revision (`version`) did not build; the current one runs on."""

    at: float
    run: int
    version: int
    reason: str


@dataclass(frozen=True, slots=True)
class ContainerCreated:
    at: float
    run: int
    container_id: str
    #: Where the Host reaches this container's WatcherAPI (`HOST:PORT`), as the runtime
    #: placed it. Empty in stores written before the runtime chose it: the program
    #: keeps the address it had.
    address: str = ""
    #: Where the runtime placed it, when it places programs on machines of a cluster:
    #: the node and the pod (Kubernetes); empty on one machine's Docker.
    node: str = ""
    pod: str = ""


@dataclass(frozen=True, slots=True)
class ContainerReady:
    at: float
    run: int


@dataclass(frozen=True, slots=True)
class StartFailed:
    at: float
    run: int
    reason: str


@dataclass(frozen=True, slots=True)
class ContainerExited:
    at: float
    run: int
    exit_code: int
    oom_killed: bool = False
    #: Which container exited, when known: the exit of a container the Host
    #: removed on purpose (a leftover) is not the program's crash.
    container_id: str | None = None


@dataclass(frozen=True, slots=True)
class ContainerStopped:
    at: float
    run: int


@dataclass(frozen=True, slots=True)
class StopFailed:
    at: float
    run: int
    reason: str


@dataclass(frozen=True, slots=True)
class RestartTimerFired:
    at: float
    run: int


@dataclass(frozen=True, slots=True)
class WatcherProbed:
    """What the program's WatcherAPI answered one probe (its readiness check).

    The runtime reports a probe when its answer differs from the one before, and every
    probe while the answer is a bad one (none, or a failed state), so that the time a
    bad answer has lasted is seen; the reducer records only changes.
    """

    at: float
    run: int
    #: Whether it answered 2xx with a readable body (with the check's field, if it has one).
    answered: bool
    #: The check's field in the answer (Hersh: `state`); "" when it did not answer.
    state: str = ""
    #: Why it did not answer (`ConnectionRefused`, `it answered 503`, ...), or what the
    #: program said beside its state (an `error` or `message` field), cut short.
    detail: str = ""


@dataclass(frozen=True, slots=True)
class TornDown:
    at: float
    run: int


@dataclass(frozen=True, slots=True)
class TeardownFailed:
    at: float
    run: int
    reason: str


EffectResult = (
    BuildSucceeded
    | BuildQueued
    | BuildFailed
    | CandidateBuilt
    | CandidateBuildFailed
    | ContainerCreated
    | ContainerReady
    | StartFailed
    | ContainerExited
    | ContainerStopped
    | StopFailed
    | RestartTimerFired
    | TornDown
    | TeardownFailed
    | WatcherProbed
)

Event = ProgramCreated | UserRequest | ConfigChange | HostRestarted | EffectResult
