"""New revisions in place on the real engine and runsc (issue 15's "Must show").

v1 counts in `/state`; v2 (other code) is built while v1 keeps counting, then
runs on the same `/state` and id and counts on; v3 does not build and v4 never
becomes READY: each is reverted to v2 by itself, with the reason; a rollback to
v1 runs v1 again. Nothing is left in Docker once the program is deleted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import pytest

from hershy.adapters.docker.image_names import image_tag
from hershy.domain.model import (
    Program,
    RestartMode,
    RestartPolicy,
    RolloutPhase,
    RunSettings,
    State,
    StopSettings,
)
from hershy.domain.revisions import Configuration
from tests.integration.conftest import (
    BASE_IMAGE,
    USER,
    Host,
    eventually,
    image_owner_of,
    images_of,
    open_host,
)

pytestmark = pytest.mark.docker

#: Counts in /state from where the last revision stopped; says which code runs. Each file is
#: replaced whole (written aside, then renamed): a reader never sees one half-written.
COUNTER = b"""trap 'exit 0' TERM
/watcher-stub &
n=$(cat /state/count 2>/dev/null || echo 0)
while true; do
  n=$((n+STEP))
  echo "$n" > /state/count.new && mv /state/count.new /state/count
  echo "$CODE" > /state/code.new && mv /state/code.new /state/code
  sleep 0.05
done
"""
#: v2's code: another script (it also leaves a mark of its own).
COUNTER_V2 = COUNTER.replace(b"/watcher-stub &", b"/watcher-stub &\necho seen > /state/v2-ran")


def dockerfile(code: str, *, step: int = 1, extra: str = "", env: str = "") -> str:
    lines = [
        f"FROM {BASE_IMAGE}",
        "COPY watcher-stub /watcher-stub",
        "COPY counter.sh /counter.sh",
        f"ENV CODE={code} STEP={step} {env}".rstrip(),
    ]
    if extra:
        lines.append(extra)
    lines.append('ENTRYPOINT ["/bin/sh", "/counter.sh"]')
    return "\n".join(lines) + "\n"


@pytest.fixture
async def host(
    tmp_path: Path, docker_client: docker.DockerClient, stub_binary: bytes
) -> AsyncIterator[Host]:
    # A short readiness deadline: v4 is reverted after it, not after a minute.
    async with open_host(tmp_path / "data", docker_client, stub_binary, ready_timeout=8) as h:
        yield h


def read_state(host: Host, program_id: str, name: str) -> str:
    path = host.program_dir(program_id) / "state" / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def count(host: Host, program_id: str) -> int:
    text = read_state(host, program_id, "count")
    return int(text) if text.isdigit() else 0


async def rollout_ended(host: Host, program_id: str, number: int, within: float) -> Program:
    def settled(program: Program) -> bool:
        rollout = program.rollout
        return (
            rollout is not None
            and rollout.target.number == number
            and not rollout.in_progress
            and program.state in (State.READY, State.ERROR, State.BACKOFF, State.STOPPED)
        )

    return await eventually(
        lambda: host.registry.get(program_id),
        settled,
        within=within,
        interval=0.05,
        what=f"the rollout of {program_id} to revision {number} ends",
    )


async def test_deploys_in_place_revert_by_themselves_and_roll_back(host: Host) -> None:
    registry = host.registry
    files = {"watcher-stub": host.stub, "counter.sh": COUNTER}
    v1 = await registry.create(USER, dockerfile("v1"), files)
    host.created.append(v1.id)
    await registry.start(v1.id)
    await registry.wait(v1.id, State.READY, 60)
    await eventually(lambda: count(host, v1.id), lambda n: n >= 20, within=30, what="v1 counts")
    assert read_state(host, v1.id, "code") == "v1"
    v1_ready = registry.get(v1.id)

    # v2: other code, with a slow build step. v1 serves until v2 is built.
    v2_files = {"watcher-stub": host.stub, "counter.sh": COUNTER_V2}
    deploying = await registry.deploy(
        v1.id, dockerfile("v2", step=1000, extra="RUN sleep 4"), v2_files, None, "alice"
    )
    assert deploying.rollout is not None
    assert deploying.rollout.phase is RolloutPhase.BUILDING
    while registry.get(v1.id).rollout.phase is RolloutPhase.BUILDING:  # type: ignore[union-attr]
        now = registry.get(v1.id)
        assert now.state is State.READY
        assert now.container_id == v1_ready.container_id
        assert read_state(host, v1.id, "code") == "v1"
        await asyncio.sleep(0.2)
    before_switch = count(host, v1.id)
    v2 = await rollout_ended(host, v1.id, 2, within=120)
    assert v2.rollout is not None
    assert v2.rollout.phase is RolloutPhase.SUCCEEDED, v2.rollout.reason
    assert (v2.id, v2.state, v2.version) == (v1.id, State.READY, 2)
    assert v2.container_id != v1_ready.container_id
    await eventually(
        lambda: read_state(host, v1.id, "code"), lambda c: c == "v2", within=20, what="v2 runs"
    )
    # The same /state: v2 counts on from where v1 stopped, and left its own mark.
    assert count(host, v1.id) > before_switch
    assert read_state(host, v1.id, "v2-ran") == "seen"
    assert len(host.docker.containers.list(filters={"label": f"dev.hershy.program={v1.id}"})) == 1

    # v3 does not build: v2 keeps running (it never stopped), and the program says why.
    await registry.deploy(v1.id, dockerfile("v3", extra="RUN exit 7"), files, None, "alice")
    v3 = await rollout_ended(host, v1.id, 3, within=120)
    assert v3.rollout is not None
    assert v3.rollout.phase is RolloutPhase.REVERTED
    assert "revision 3 failed to build" in v3.rollout.reason
    assert (v3.state, v3.version, v3.container_id) == (State.READY, 2, v2.container_id)
    still = count(host, v1.id)
    await eventually(lambda: count(host, v1.id), lambda n: n > still, within=10, what="v2 counts")

    # v4 never becomes READY: past the readiness deadline v2 starts again by itself.
    started = time.monotonic()
    await registry.deploy(v1.id, dockerfile("v4", env="STUB_NEVER_READY=1"), files, None, "al")
    v4 = await rollout_ended(host, v1.id, 4, within=120)
    assert v4.rollout is not None
    assert v4.rollout.phase is RolloutPhase.REVERTED, v4.rollout.reason
    assert "revision 4 did not become READY" in v4.rollout.reason
    assert (v4.state, v4.version, v4.build_id) == (State.READY, 2, v2.build_id)
    assert time.monotonic() - started >= 8  # it was given its readiness deadline
    await eventually(
        lambda: read_state(host, v1.id, "code"), lambda c: c == "v2", within=20, what="v2 again"
    )

    # Roll back to v1: its kept image runs again, on the same /state.
    at_rollback = count(host, v1.id)
    await registry.rollback(v1.id, 1, "alice")
    back = await rollout_ended(host, v1.id, 5, within=120)
    assert back.rollout is not None
    assert back.rollout.phase is RolloutPhase.SUCCEEDED, back.rollout.reason
    assert (back.state, back.build_id, back.version) == (State.READY, v1.build_id, 5)
    await eventually(
        lambda: read_state(host, v1.id, "code"), lambda c: c == "v1", within=20, what="v1 again"
    )
    assert count(host, v1.id) > at_rollback
    listed = [(r.number, r.description) for r in registry.revisions(v1.id)]
    assert listed == [
        (5, "rollback to revision 1"),
        (4, "deploy"),
        (3, "deploy"),
        (2, "deploy"),
        (1, "create"),
    ]
    # Images: one per kept build that was built (v3 never was), tagged by build.
    tags = sorted(tag for image in images_of(host.docker, v1.id) for tag in image.tags)
    built = {v1.build_id, v2.build_id, v4.rollout.target.build_id}
    assert tags == sorted(image_tag(image_owner_of(host), v1.user_id, v1.id, b) for b in built)


def program_container(host: Host, program_id: str) -> Any:
    owned = {"label": f"dev.hershy.program={program_id}"}
    (container,) = host.docker.containers.list(filters=owned)
    return container


async def test_updates_of_settings_roll_out_revert_and_roll_back(host: Host) -> None:
    """UpdateProgram beyond resources: readiness, restart policy and stop are revisions."""
    registry = host.registry
    files = {"watcher-stub": host.stub, "counter.sh": COUNTER}
    v1 = await registry.create(USER, dockerfile("v1"), files)
    host.created.append(v1.id)
    await registry.start(v1.id)
    v1 = await registry.wait(v1.id, State.READY, 60)
    await eventually(lambda: count(host, v1.id), lambda n: n >= 5, within=30, what="v1 counts")

    # The restart policy, the readiness deadline and the stop settings: a new revision, the
    # program restarted with them (the new container carries them) and READY.
    settings = RunSettings(
        readiness=replace(v1.readiness, timeout_seconds=20.0),
        restart_policy=RestartPolicy(RestartMode.ON_FAILURE, max_restarts=5),
        stop=StopSettings("SIGINT", 3.0),
    )
    await registry.update(
        v1.id,
        ["restart_policy", "readiness.timeout", "stop"],
        Configuration(v1.resources, settings),
        "alice",
    )
    v2 = await rollout_ended(host, v1.id, 2, within=120)
    assert v2.rollout is not None
    assert v2.rollout.phase is RolloutPhase.SUCCEEDED, v2.rollout.reason
    assert (v2.state, v2.version, v2.build_id) == (State.READY, 2, v1.build_id)
    assert v2.container_id != v1.container_id
    assert (v2.readiness, v2.restart_policy, v2.stop) == (
        settings.readiness,
        settings.restart_policy,
        settings.stop,
    )
    container = program_container(host, v1.id)
    assert container.id == v2.container_id
    assert container.attrs["Config"]["StopSignal"] == "SIGINT"
    assert container.labels["dev.hershy.stop-grace"] == "3"
    at_switch = count(host, v1.id)
    await eventually(
        lambda: count(host, v1.id), lambda n: n > at_switch, within=20, what="v2 counts on"
    )

    # A readiness check that can never be met: past its deadline, back to revision 2 by
    # itself, with the reason shown, and revision 2's settings in force again.
    never = RunSettings(
        readiness=replace(v2.readiness, path="/watcher/never", timeout_seconds=5.0),
        restart_policy=v2.restart_policy,
        stop=v2.stop,
    )
    started = time.monotonic()
    await registry.update(v1.id, ["readiness"], Configuration(v2.resources, never), "alice")
    v3 = await rollout_ended(host, v1.id, 3, within=120)
    assert v3.rollout is not None
    assert v3.rollout.phase is RolloutPhase.REVERTED, v3.rollout.reason
    assert "revision 3 did not become READY" in v3.rollout.reason
    assert "back to revision 2" in v3.rollout.reason
    assert time.monotonic() - started >= 5  # it was given its own readiness deadline
    assert (v3.state, v3.version, v3.readiness) == (State.READY, 2, v2.readiness)
    assert program_container(host, v1.id).attrs["Config"]["StopSignal"] == "SIGINT"

    # Rollback to revision 1 restores its whole configuration, read back from the Host.
    await registry.rollback(v1.id, 1, "alice")
    back = await rollout_ended(host, v1.id, 4, within=120)
    assert back.rollout is not None
    assert back.rollout.phase is RolloutPhase.SUCCEEDED, back.rollout.reason
    got = registry.get(v1.id)
    assert (got.state, got.version) == (State.READY, 4)
    assert (got.readiness, got.restart_policy, got.stop, got.resources) == (
        v1.readiness,
        v1.restart_policy,
        v1.stop,
        v1.resources,
    )
    assert program_container(host, v1.id).attrs["Config"]["StopSignal"] == "SIGTERM"
    listed = [(r.number, r.description) for r in registry.revisions(v1.id)]
    assert listed == [
        (4, "rollback to revision 1"),
        (3, "update readiness"),
        (2, "update restart_policy, readiness.timeout, stop"),
        (1, "create"),
    ]
