"""What the reducer asks the outside world to do, as data.

The supervisor executes effects in the order the reducer returned them.
`CancelInflight` and `CancelTimers` are carried out by the supervisor itself
before the effects after them start; the rest go to the effect handler, whose
results come back as events carrying the same `run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hershy.domain import events as ev
from hershy.domain.model import ReadinessCheck, Resources, StopSettings


@dataclass(frozen=True, slots=True)
class Build:
    """Build the program's image (or reuse the image of an identical build).

    Results: `BuildSucceeded` or `BuildFailed`.
    """

    run: int
    build_id: str
    #: Whose build it is: a build may reuse only its own user's cached layers.
    user_id: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class BuildCandidate:
    """Build a rollout's new revision while the current one keeps running.

    The supervisor carries it out as a `Build` of `build_id` (an image tagged
    per build, beside the running one) and reports `CandidateBuilt` or
    `CandidateBuildFailed` with the revision's `version`, so the result of a
    superseded rollout is told apart. Cancelled like any build.
    """

    run: int
    version: int
    build_id: str
    user_id: str = field(default="", compare=False, repr=False)

    def as_build(self) -> Build:
        return Build(self.run, self.build_id, self.user_id)


@dataclass(frozen=True, slots=True)
class PruneBuilds:
    """Remove the program's images and stored sources of builds not in `keep`.

    Best effort, no result event: what is left is removed at the next prune or
    with the program.
    """

    run: int
    keep: frozenset[str]


@dataclass(frozen=True, slots=True)
class StartContainer:
    """Create and start the container, then wait until its WatcherAPI answers.

    Removes any container of this run or an older one first: a program has
    one container at a time, whatever an earlier attempt left behind. The
    handler picks where the WatcherAPI is reached, anew at every start.

    Results: `ContainerCreated` (with that address) as soon as the container
    exists, then `ContainerReady` or `StartFailed` (after removing what it
    created). When the place it picked turns out to be taken, the handler
    removes that container and reports another `ContainerCreated` elsewhere.
    """

    run: int
    image_id: str
    build_id: str
    resources: Resources
    #: The program's environment variables (the secrets come from the handler's own store).
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: How it tells the program is initialised (and, once READY, alive).
    readiness: ReadinessCheck = field(default=ReadinessCheck(), repr=False)
    stop: StopSettings = field(default=StopSettings(), repr=False)


@dataclass(frozen=True, slots=True)
class StopContainer:
    """Stop (SIGTERM, grace period, kill) and remove the program's containers.

    Removes `container_id` and any container of the program labelled with a
    run up to `run`. Idempotent: a container already gone is success.
    Results: `ContainerStopped` or `StopFailed`.
    """

    run: int
    container_id: str | None


@dataclass(frozen=True, slots=True)
class AdoptContainer:
    """After a Host restart: take the running container back as it is (no restart).

    Results: nothing while it runs (but its liveness probes); `ContainerExited` if it
    died meanwhile.
    """

    run: int
    container_id: str | None
    readiness: ReadinessCheck = field(default=ReadinessCheck(), repr=False)


@dataclass(frozen=True, slots=True)
class CancelInflight:
    """Cancel the running build/start of the program and wait until they have cleaned up."""


@dataclass(frozen=True, slots=True)
class StartRestartTimer:
    """Fire `RestartTimerFired(run)` at time `at`."""

    run: int
    at: float


@dataclass(frozen=True, slots=True)
class CancelTimers:
    """Forget any pending timer of the program."""


@dataclass(frozen=True, slots=True)
class Teardown:
    """Remove everything the program owns: containers, images, its folder, its port.

    Results: `TornDown` or `TeardownFailed`.
    """

    run: int
    container_id: str | None


Effect = (
    Build
    | BuildCandidate
    | PruneBuilds
    | StartContainer
    | StopContainer
    | AdoptContainer
    | CancelInflight
    | StartRestartTimer
    | CancelTimers
    | Teardown
)


#: Effects the effect handler carries out (the others the supervisor does itself).
HandledEffect = Build | StartContainer | StopContainer | AdoptContainer | Teardown | PruneBuilds


def failure_of(
    effect: HandledEffect, at: float, reason: str
) -> (
    ev.BuildFailed | ev.StartFailed | ev.StopFailed | ev.ContainerExited | ev.TeardownFailed | None
):
    """The result event for an effect whose execution raised instead of reporting.

    None for a prune: it reports nothing (what it left is removed later).
    """
    match effect:
        case PruneBuilds():
            return None
        case Build():
            return ev.BuildFailed(at, effect.run, reason)
        case StartContainer():
            return ev.StartFailed(at, effect.run, reason)
        case StopContainer():
            return ev.StopFailed(at, effect.run, reason)
        case AdoptContainer():
            # Could not even look at it: treat it as gone, like a crash.
            return ev.ContainerExited(at, effect.run, -1)
        case Teardown():
            return ev.TeardownFailed(at, effect.run, reason)
