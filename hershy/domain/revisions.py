"""Program revisions: what each version ran, which are kept, and configuration changes.

Pure: no IO. A revision is made by the event that begins it (`ProgramCreated`
for revision 1, `DeployRequested` for each later one) and numbered by the
reducer; the store keeps the records, the registry reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from hershy.domain import events as ev
from hershy.domain.errors import InvalidArgument
from hershy.domain.model import Program, Resources, Revision

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
            )
        case ev.DeployRequested():
            return Revision(
                program.id,
                program.latest_version,
                event.build_id,
                event.resources,
                event.by,
                event.at,
                event.description,
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
# Each path a mask may name, and how it changes the configuration. Adding a field
# that can be updated in place is one line here (and its field in the request).

ResourceChange = Callable[[Resources, Resources], Resources]

UPDATE_PATHS: Mapping[str, ResourceChange] = {
    "resources": lambda current, asked: asked,
    "resources.memory_bytes": lambda current, asked: replace(
        current, memory_bytes=asked.memory_bytes
    ),
    "resources.milli_cpus": lambda current, asked: replace(current, milli_cpus=asked.milli_cpus),
    "resources.pids": lambda current, asked: replace(current, pids=asked.pids),
    "resources.state_bytes": lambda current, asked: replace(current, state_bytes=asked.state_bytes),
}


def apply_mask(paths: Sequence[str], current: Resources, asked: Resources) -> Resources:
    """`current` with the masked fields taken from `asked` (0 there: the Host's default)."""
    if not paths:
        raise InvalidArgument(
            "update_mask", f"is required: one or more of {', '.join(UPDATE_PATHS)}"
        )
    changed = current
    for path in paths:
        change = UPDATE_PATHS.get(path)
        if change is None:
            raise InvalidArgument(
                "update_mask",
                f"{path[:80]!r} cannot be updated: use {', '.join(UPDATE_PATHS)}",
            )
        changed = change(changed, asked)
    return changed


def check_state_size(current: Resources, asked: Resources) -> None:
    """The `/state` volume keeps the size it was made with (it holds the program's data)."""
    if asked.state_bytes not in (0, current.state_bytes):
        raise InvalidArgument(
            "resources.state_bytes",
            f"the /state volume keeps its size ({current.state_bytes} bytes) across "
            "revisions: leave it unset or the same",
        )
