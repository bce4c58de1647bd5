"""Program revisions: what each version ran, which are kept, and configuration changes.

Pure: no IO. A revision is made by the event that begins it (`ProgramCreated`
for revision 1, `DeployRequested` for each later one) and numbered by the
reducer; the store keeps the records, the registry reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from hershy.domain import events as ev
from hershy.domain.errors import InvalidArgument
from hershy.domain.model import (
    Program,
    ReadinessCheck,
    Resources,
    RestartPolicy,
    Revision,
    RunSettings,
    StopSettings,
    settings_of,
)

#: How many of a program's newest revisions keep their image and source (rollback targets).
KEPT_REVISIONS = 5


def revision_of(program: Program, event: ev.Event) -> Revision | None:
    """The revision record an accepted event begins (`program` as committed), if any."""
    match event:
        case ev.ProgramCreated():
            return Revision(
                program.id,
                1,
                event.build_id,
                event.resources,
                event.user_id,
                event.at,
                "create",
                RunSettings(event.readiness, event.restart_policy, event.stop),
            )
        case ev.DeployRequested():
            # A deploy keeps the settings the program has (at rest: already applied).
            settings = event.settings or settings_of(program)
            return Revision(
                program.id,
                program.latest_version,
                event.build_id,
                event.resources,
                event.by,
                event.at,
                event.description,
                settings,
            )
    return None


def first_revision(program: Program) -> Revision:
    """Revision 1 of a program stored before revisions were recorded."""
    return Revision(
        program.id,
        1,
        program.build_id,
        program.resources,
        program.user_id,
        program.created_at,
        "create",
        settings_of(program),
    )


def kept_builds(revisions: Sequence[Revision], current: Program) -> frozenset[str]:
    """The builds whose image and source are kept: the newest revisions' and the running one's."""
    newest = sorted(revisions, key=lambda revision: revision.number)[-KEPT_REVISIONS:]
    return frozenset(revision.build_id for revision in newest) | {current.build_id}


def keep_after(revisions: Sequence[Revision], build_id: str) -> frozenset[str]:
    """What a new revision of `build_id` keeps once it is rolled out: it and the newest before."""
    newest = sorted(revisions, key=lambda revision: revision.number)[-(KEPT_REVISIONS - 1) :]
    return frozenset(revision.build_id for revision in newest) | {build_id}


# --- UpdateProgram's field mask -----------------------------------------------------
#
# Each path a mask may name (the Program message's field names, AIP-134), and where
# it lands in a revision's configuration. Adding a field that can be updated in
# place is one line here (and its field in the Program message).


@dataclass(frozen=True, slots=True)
class Configuration:
    """What a revision runs besides its source: what UpdateProgram changes."""

    resources: Resources
    settings: RunSettings


def configuration_of(program: Program) -> Configuration:
    return Configuration(program.resources, settings_of(program))


#: path -> (the part of the configuration, its attribute; "" for the whole part).
UPDATE_PATHS: Mapping[str, tuple[str, str]] = {
    "resources": ("resources", ""),
    "resources.memory_bytes": ("resources", "memory_bytes"),
    "resources.milli_cpus": ("resources", "milli_cpus"),
    "resources.pids": ("resources", "pids"),
    "resources.state_bytes": ("resources", "state_bytes"),
    "readiness": ("readiness", ""),
    "readiness.path": ("readiness", "path"),
    "readiness.field": ("readiness", "field"),
    "readiness.ready_values": ("readiness", "ready_values"),
    "readiness.failed_values": ("readiness", "failed_values"),
    "readiness.timeout": ("readiness", "timeout_seconds"),
    "readiness.settle": ("readiness", "settle_seconds"),
    "readiness.liveness_grace": ("readiness", "liveness_grace_seconds"),
    "restart_policy": ("restart_policy", ""),
    "restart_policy.mode": ("restart_policy", "mode"),
    "restart_policy.max_restarts": ("restart_policy", "max_restarts"),
    "restart_policy.window": ("restart_policy", "window_seconds"),
    "stop": ("stop", ""),
    "stop.signal": ("stop", "signal"),
    "stop.grace": ("stop", "grace_seconds"),
}

#: The top-level paths: what an empty mask stands for when those fields are set.
UPDATE_FIELDS: tuple[Literal["resources", "readiness", "restart_policy", "stop"], ...] = (
    "resources",
    "readiness",
    "restart_policy",
    "stop",
)

#: Program fields that are set another way (the rest are output only).
_SET_ELSEWHERE: Mapping[str, str] = {
    "alias": "rename the program (RenameProgram)",
    "env": "set its variables (SetProgramEnv): they are not part of a revision",
    "build_id": "deploy new source (DeployProgram)",
    "revision_number": "roll back (RollbackProgram)",
}


def _refused(path: str) -> InvalidArgument:
    top = path.split(".", 1)[0]
    hint = _SET_ELSEWHERE.get(top)
    why = f"to change it, {hint}" if hint else "it is output only or no field of a program"
    return InvalidArgument(
        "update_mask",
        f"{path[:80]!r} cannot be updated ({why}); the paths are {', '.join(UPDATE_PATHS)}",
    )


_Part = Resources | ReadinessCheck | RestartPolicy | StopSettings


def _part(configuration: Configuration, part: str) -> _Part:
    if part == "resources":
        return configuration.resources
    found: _Part = getattr(configuration.settings, part)
    return found


def _with_part(configuration: Configuration, part: str, value: _Part) -> Configuration:
    settings = configuration.settings
    match value:
        case Resources():
            return replace(configuration, resources=value)
        case ReadinessCheck():
            return replace(configuration, settings=replace(settings, readiness=value))
        case RestartPolicy():
            return replace(configuration, settings=replace(settings, restart_policy=value))
        case StopSettings():
            return replace(configuration, settings=replace(settings, stop=value))
    raise AssertionError(f"no part {part}")


def apply_mask(paths: Sequence[str], current: Configuration, asked: Configuration) -> Configuration:
    """`current` with the masked fields taken from `asked` (unset there: the default).

    An empty mask is refused: callers turn AIP-134's "the fields that are set" into
    paths first (`UPDATE_FIELDS`), where they can tell what was set.
    """
    if not paths:
        raise InvalidArgument(
            "update_mask", f"is required: one or more of {', '.join(UPDATE_PATHS)}"
        )
    changed = current
    for path in paths:
        where = UPDATE_PATHS.get(path)
        if where is None:
            raise _refused(path)
        part, attribute = where
        wanted = _part(asked, part)
        if attribute:
            wanted = replace(_part(changed, part), **{attribute: getattr(wanted, attribute)})
        changed = _with_part(changed, part, wanted)
    return changed


def describe_update(paths: Sequence[str]) -> str:
    """How an update's revision came about, for its record: `update stop.signal, readiness`."""
    return "update " + ", ".join(dict.fromkeys(paths))


def check_state_size(current: Resources, asked: Resources) -> None:
    """The `/state` volume keeps the size it was made with (it holds the program's data)."""
    if asked.state_bytes not in (0, current.state_bytes):
        raise InvalidArgument(
            "resources.state_bytes",
            f"the /state volume keeps its size ({current.state_bytes} bytes) across "
            "revisions: leave it unset or the same",
        )


# --- what changed between revisions ----------------------------------------------


def _differences(prefix: str, before: object, after: object) -> list[str]:
    names = [name for name in getattr(type(after), "__slots__", ())]
    return [f"{prefix}.{name}" for name in names if getattr(before, name) != getattr(after, name)]


def changes(before: Revision | None, after: Revision) -> tuple[str, ...]:
    """The fields `after` changed from the revision `before` it (API paths; all for the first).

    `build_id` when its source changed; settings a record does not carry count as unchanged.
    """
    if before is None:
        return ()
    changed: list[str] = []
    if before.build_id != after.build_id:
        changed.append("build_id")
    changed += _differences("resources", before.resources, after.resources)
    if before.settings is not None and after.settings is not None:
        for part in ("readiness", "restart_policy", "stop"):
            changed += _differences(
                part, getattr(before.settings, part), getattr(after.settings, part)
            )
    return tuple(_api_path(path) for path in changed)


#: Attribute paths whose API field is named otherwise (durations lose `_seconds`).
_API_NAMES = {
    f"{part}.{attribute}": path
    for path, (part, attribute) in UPDATE_PATHS.items()
    if attribute and f"{part}.{attribute}" != path
}


def _api_path(path: str) -> str:
    return _API_NAMES.get(path, path)
