"""New revisions in place over the fake runtime: build beside, switch, revert, roll back."""

from __future__ import annotations

import asyncio

import pytest

from hershy.adapters.fake_runtime import FakeBehaviour
from hershy.adapters.source_files import MemorySourceStore
from hershy.domain import events as ev
from hershy.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from hershy.domain.model import (
    Program,
    ReadinessCheck,
    Resources,
    RestartMode,
    RestartPolicy,
    RolloutPhase,
    RunSettings,
    State,
    StopSettings,
)
from hershy.domain.revisions import KEPT_REVISIONS, Configuration
from hershy.domain.validation import ProgramSource, build_id
from hershy.service.registry import Registry
from hershy.service.watch import Change
from tests.unit.test_supervisor import DOCKERFILE, make_registry, ready_program

MiB = 1024 * 1024


def sources_of(registry: Registry) -> MemorySourceStore:
    store = registry._sources
    assert isinstance(store, MemorySourceStore)
    return store


UNSET = Resources(0, 0, 0, 0)
DEFAULTS = RunSettings()


def asked(resources: Resources = UNSET, settings: RunSettings = DEFAULTS) -> Configuration:
    """An UpdateProgram request's fields (unset ones at their defaults)."""
    return Configuration(resources, settings)


async def rollout_ended(registry: Registry, program_id: str) -> Program:
    """The program once its rollout ended and it settled (within 5 s)."""
    async with asyncio.timeout(5):
        while True:
            program = registry.get(program_id)
            ended = program.rollout is not None and not program.rollout.in_progress
            if ended and program.state not in (State.STOPPING, State.STARTING, State.BUILDING):
                return program
            await asyncio.sleep(0.01)


async def test_the_current_revision_serves_until_the_new_one_is_built_then_switches() -> None:
    registry, handler = make_registry(FakeBehaviour(ready_delay=0.01))
    async with registry:
        program_id = await ready_program(registry, b"v1")
        before = registry.get(program_id)
        subscription = registry.hub.subscribe(program_id, capacity=256)
        handler.behaviour.build_delay = 0.3
        deploying = await registry.deploy(
            program_id, DOCKERFILE, {"main.txt": b"v2"}, None, "alice"
        )
        assert deploying.state is State.READY
        assert deploying.rollout is not None
        assert deploying.rollout.phase is RolloutPhase.BUILDING
        assert deploying.version == 1
        assert deploying.latest_version == 2
        await asyncio.sleep(0.15)
        # Still building: the old container runs, the program stays READY.
        assert registry.get(program_id).state is State.READY
        assert registry.get(program_id).container_id == before.container_id
        done = await rollout_ended(registry, program_id)
        assert done.state is State.READY
        assert done.rollout is not None
        assert done.rollout.phase is RolloutPhase.SUCCEEDED
        assert done.version == 2
        assert done.id == program_id
        assert done.build_id == build_id(ProgramSource(DOCKERFILE.encode(), {"main.txt": b"v2"}))
        assert done.container_id != before.container_id
        assert list(handler.world.containers) == [done.container_id]  # the old one is gone
        states = []
        subscription.close()  # what is buffered is read, then it ends
        while isinstance(change := await subscription.next(), Change):
            states.append(change.program.state)
        # Away from READY only for the switch: stopping the old, starting the new.
        assert states[: states.index(State.STOPPING)] == [State.READY] * states.index(
            State.STOPPING
        )
        assert State.BUILDING not in states
        subscription.unsubscribe()


async def test_a_candidate_that_does_not_build_leaves_the_old_one_running_and_says_why() -> None:
    registry, handler = make_registry(FakeBehaviour(ready_delay=0.01))
    async with registry:
        program_id = await ready_program(registry, b"v1")
        container = registry.get(program_id).container_id
        handler.behaviour.failing_builds = 1
        handler.behaviour.failure_reason = "COPY failed: no such file"
        await registry.deploy(program_id, DOCKERFILE, {"main.txt": b"v3"}, None, "alice")
        done = await rollout_ended(registry, program_id)
        assert done.rollout is not None
        assert done.rollout.phase is RolloutPhase.REVERTED
        assert "revision 2 failed to build: COPY failed: no such file" in done.rollout.reason
        assert done.state is State.READY
        assert done.version == 1
        assert done.container_id == container  # never stopped


async def test_a_candidate_that_never_becomes_ready_is_reverted_by_itself() -> None:
    registry, handler = make_registry(FakeBehaviour(ready_delay=0.01))
    async with registry:
        program_id = await ready_program(registry, b"v1")
        v1 = registry.get(program_id)
        handler.behaviour.failing_starts = 1
        handler.behaviour.failure_reason = "no answer on /watcher/status within 60 s"
        await registry.deploy(program_id, DOCKERFILE, {"main.txt": b"v4"}, None, "alice")
        done = await rollout_ended(registry, program_id)
        assert done.rollout is not None
        assert done.rollout.phase is RolloutPhase.REVERTED
        assert "revision 2 did not become READY" in done.rollout.reason
        assert "no answer on /watcher/status" in done.rollout.reason
        assert done.state is State.READY
        assert (done.version, done.build_id, done.image_id) == (1, v1.build_id, v1.image_id)
        assert list(handler.world.containers) == [done.container_id]


async def test_a_change_while_a_rollout_runs_is_refused_naming_it() -> None:
    registry, handler = make_registry(FakeBehaviour(ready_delay=0.01))
    async with registry:
        program_id = await ready_program(registry)
        handler.behaviour.build_delay = 5
        await registry.deploy(program_id, DOCKERFILE, {"main.txt": b"v2"}, None, "alice")
        with pytest.raises(FailedPrecondition, match="rollout to revision 2 is BUILDING"):
            await registry.deploy(program_id, DOCKERFILE, {"main.txt": b"v3"}, None, "alice")
        with pytest.raises(FailedPrecondition, match="rollout to revision 2 is BUILDING"):
            await registry.restart(program_id)
        with pytest.raises(FailedPrecondition, match="rollout"):
            await registry.update(
                program_id, ["resources.memory_bytes"], asked(Resources(256 * MiB)), "a"
            )
        # The refused deploy's source was not kept.
        v3 = build_id(ProgramSource(DOCKERFILE.encode(), {"main.txt": b"v3"}))
        assert (program_id, v3) not in sources_of(registry).builds
        assert [r.number for r in registry.revisions(program_id)] == [2, 1]


async def test_stop_wins_over_a_rollout_and_leaves_nothing_running() -> None:
    registry, handler = make_registry(FakeBehaviour(ready_delay=0.01))
    async with registry:
        program_id = await ready_program(registry)
        handler.behaviour.build_delay = 5
        await registry.deploy(program_id, DOCKERFILE, {"main.txt": b"v2"}, None, "alice")
        await registry.stop(program_id)
        stopped = await registry.wait(program_id, State.STOPPED, 2)
        assert stopped.rollout is not None
        assert stopped.rollout.phase is RolloutPhase.CANCELLED
        assert stopped.version == 1
        assert handler.world.containers == {}
        assert handler.builds_run == 1  # the candidate's build was cancelled


async def test_delete_wins_over_a_rollout() -> None:
    registry, handler = make_registry(FakeBehaviour(ready_delay=0.01))
    async with registry:
        program_id = await ready_program(registry)
        handler.behaviour.build_delay = 5
        await registry.deploy(program_id, DOCKERFILE, {"main.txt": b"v2"}, None, "alice")
        await registry.delete(program_id)
        await registry.wait(program_id, State.DELETED, 2)
        assert handler.world.containers == {}
        assert sources_of(registry).builds == {}
        with pytest.raises(NotFound):
            registry.revisions(program_id)


async def test_revisions_are_listed_newest_first_and_rollback_makes_a_new_one() -> None:
    registry, _handler = make_registry(FakeBehaviour(ready_delay=0.01))
    async with registry:
        program_id = await ready_program(registry, b"v1")
        v1 = registry.get(program_id)
        await registry.deploy(program_id, DOCKERFILE, {"main.txt": b"v2"}, None, "bob")
        await rollout_ended(registry, program_id)
        await registry.rollback(program_id, 0, "alice")  # 0: the one before the current
        back = await rollout_ended(registry, program_id)
        assert back.rollout is not None
        assert back.rollout.phase is RolloutPhase.SUCCEEDED
        assert (back.version, back.build_id) == (3, v1.build_id)
        listed = registry.revisions(program_id)
        assert [(r.number, r.created_by, r.description) for r in listed] == [
            (3, "alice", "rollback to revision 1"),
            (2, "bob", "deploy"),
            (1, "alice", "create"),
        ]
        with pytest.raises(NotFound, match="revision 9"):
            await registry.rollback(program_id, 9, "alice")


async def test_only_the_newest_revisions_keep_their_source_and_can_be_rolled_back_to() -> None:
    registry, _handler = make_registry(FakeBehaviour(ready_delay=0.01))
    async with registry:
        program_id = await ready_program(registry, b"v1")
        for number in range(2, KEPT_REVISIONS + 3):
            await registry.deploy(
                program_id, DOCKERFILE, {"main.txt": f"v{number}".encode()}, None, "alice"
            )
            await rollout_ended(registry, program_id)
        program = registry.get(program_id)
        assert program.version == KEPT_REVISIONS + 2
        kept = registry.kept_builds(program_id)
        assert len(kept) == KEPT_REVISIONS
        store = sources_of(registry)
        assert program_id not in store.sources  # revision 1's source went
        assert {build for (owner, build) in store.builds if owner == program_id} == kept
        with pytest.raises(FailedPrecondition, match="no longer kept"):
            await registry.rollback(program_id, 1, "alice")
        assert (await registry.source(program_id)).files == {
            "main.txt": f"v{KEPT_REVISIONS + 2}".encode()
        }


async def test_update_changes_masked_resources_as_a_new_revision() -> None:
    registry, _handler = make_registry(FakeBehaviour(ready_delay=0.01))
    async with registry:
        program_id = await ready_program(registry)
        before = registry.get(program_id)
        await registry.update(
            program_id, ["resources.memory_bytes"], asked(Resources(256 * MiB)), "al"
        )
        done = await rollout_ended(registry, program_id)
        assert done.resources.memory_bytes == 256 * MiB
        assert done.resources.milli_cpus == before.resources.milli_cpus
        assert done.build_id == before.build_id
        assert done.version == 2
        assert registry.revisions(program_id)[0].description == "update resources.memory_bytes"
        with pytest.raises(InvalidArgument, match="cannot be updated"):
            await registry.update(program_id, ["user_id"], asked(Resources()), "al")
        with pytest.raises(InvalidArgument, match="is required"):
            await registry.update(program_id, [], asked(Resources()), "al")
        with pytest.raises(InvalidArgument, match="keeps its size"):
            await registry.update(
                program_id, ["resources.state_bytes"], asked(Resources(state_bytes=64 * MiB)), "al"
            )
        assert registry.get(program_id).latest_version == 2


async def test_a_deploy_at_rest_replaces_the_revision_and_the_next_start_runs_it() -> None:
    registry, _handler = make_registry(FakeBehaviour(ready_delay=0.01))
    async with registry:
        program = await registry.create("alice", DOCKERFILE, {"main.txt": b"v1"})
        changed = await registry.deploy(program.id, DOCKERFILE, {"main.txt": b"v2"}, None, "a")
        assert changed.state is State.CREATED
        assert changed.version == 2
        await registry.start(program.id)
        ready = await registry.wait(program.id, State.READY, 5)
        assert ready.build_id == changed.build_id
        assert (await registry.source(program.id)).files == {"main.txt": b"v2"}


async def test_a_late_candidate_of_a_superseded_rollout_is_ignored() -> None:
    registry, handler = make_registry(FakeBehaviour(ready_delay=0.01))
    async with registry:
        program_id = await ready_program(registry)
        handler.behaviour.build_delay = 0.2
        await registry.deploy(program_id, DOCKERFILE, {"main.txt": b"v2"}, None, "alice")
        await registry.stop(program_id)
        await registry.wait(program_id, State.STOPPED, 2)
        await registry.start(program_id)
        ready = await registry.wait(program_id, State.READY, 5)
        # A candidate result for revision 2 arriving now changes nothing.
        supervisor = registry._supervisors[program_id]
        supervisor.emit(ev.CandidateBuilt(supervisor.now(), ready.run, 2, "sha256:late"))
        await asyncio.sleep(0.1)
        now = registry.get(program_id)
        assert (now.state, now.container_id, now.version) == (State.READY, ready.container_id, 1)


# --- updates beyond resources: readiness, restart policy, stop ---------------------------


async def test_update_of_restart_policy_and_stop_is_a_revision_the_new_run_uses() -> None:
    registry, _handler = make_registry(FakeBehaviour(ready_delay=0.01))
    async with registry:
        program_id = await ready_program(registry)
        before = registry.get(program_id)
        wanted = RunSettings(
            restart_policy=RestartPolicy(RestartMode.ON_FAILURE, max_restarts=3),
            stop=StopSettings("SIGINT", 5.0),
        )
        await registry.update(
            program_id, ["restart_policy.mode", "stop"], asked(settings=wanted), "al"
        )
        done = await rollout_ended(registry, program_id)
        assert done.rollout is not None
        assert done.rollout.phase is RolloutPhase.SUCCEEDED
        assert (done.version, done.state) == (2, State.READY)
        assert done.run > before.run  # restarted on the new configuration
        # Only the masked field of restart_policy changed; stop as a whole.
        assert done.restart_policy == RestartPolicy(RestartMode.ON_FAILURE)
        assert done.stop == StopSettings("SIGINT", 5.0)
        assert done.resources == before.resources
        assert done.build_id == before.build_id
        newest = registry.revisions(program_id)[0]
        assert newest.description == "update restart_policy.mode, stop"
        assert newest.settings == RunSettings(done.readiness, done.restart_policy, done.stop)


async def test_rollback_restores_the_whole_configuration_of_a_revision() -> None:
    registry, _handler = make_registry(FakeBehaviour(ready_delay=0.01))
    async with registry:
        program_id = await ready_program(registry)
        v1 = registry.get(program_id)
        slow = RunSettings(
            readiness=ReadinessCheck(timeout_seconds=30.0),
            restart_policy=RestartPolicy(RestartMode.NEVER),
            stop=StopSettings("SIGQUIT", 2.0),
        )
        await registry.update(
            program_id,
            ["readiness.timeout", "restart_policy", "stop", "resources.memory_bytes"],
            asked(Resources(256 * MiB), slow),
            "al",
        )
        v2 = await rollout_ended(registry, program_id)
        assert (v2.readiness.timeout_seconds, v2.restart_policy.mode) == (30.0, RestartMode.NEVER)
        await registry.rollback(program_id, 1, "al")
        back = await rollout_ended(registry, program_id)
        assert back.version == 3
        assert (back.readiness, back.restart_policy, back.stop, back.resources) == (
            v1.readiness,
            v1.restart_policy,
            v1.stop,
            v1.resources,
        )


async def test_an_update_whose_readiness_is_never_met_reverts_to_the_previous_config() -> None:
    registry, handler = make_registry(FakeBehaviour(ready_delay=0.01))
    async with registry:
        program_id = await ready_program(registry)
        v1 = registry.get(program_id)
        handler.behaviour.failing_starts = 1
        handler.behaviour.failure_reason = "no answer on /never within 2 s"
        await registry.update(
            program_id,
            ["readiness.path"],
            asked(settings=RunSettings(readiness=ReadinessCheck(path="/never"))),
            "al",
        )
        done = await rollout_ended(registry, program_id)
        assert done.rollout is not None
        assert done.rollout.phase is RolloutPhase.REVERTED
        assert "revision 2 did not become READY (start failed: no answer on /never" in (
            done.rollout.reason
        )
        assert (done.state, done.version, done.readiness) == (State.READY, 1, v1.readiness)


async def test_update_refuses_bad_paths_and_values_naming_them() -> None:
    registry, _handler = make_registry(FakeBehaviour(ready_delay=0.01))
    async with registry:
        program_id = await ready_program(registry)
        for path, hint in (
            ("state", "output only"),
            ("restart_count", "output only"),
            ("env", "SetProgramEnv"),
            ("alias", "RenameProgram"),
            ("readiness.nope", "output only"),
            ("stop.grace_seconds", "output only"),
        ):
            with pytest.raises(InvalidArgument, match=hint) as caught:
                await registry.update(program_id, [path], asked(), "al")
            assert caught.value.field == "update_mask"
            assert repr(path) in caught.value.message
        with pytest.raises(InvalidArgument) as bad:
            await registry.update(
                program_id,
                ["stop.signal"],
                asked(settings=RunSettings(stop=StopSettings("KILL"))),
                "al",
            )
        assert bad.value.field == "stop.signal"
        window = RunSettings(restart_policy=RestartPolicy(window_seconds=0.001))
        with pytest.raises(InvalidArgument) as bad:
            await registry.update(
                program_id, ["restart_policy.window"], asked(settings=window), "al"
            )
        assert bad.value.field == "restart_policy.window"
        # Nothing was made of the refused updates.
        assert registry.get(program_id).latest_version == 1


async def test_every_change_while_a_rollout_runs_is_refused_naming_it() -> None:
    registry, handler = make_registry(FakeBehaviour(ready_delay=0.01))
    async with registry:
        program_id = await ready_program(registry)
        handler.behaviour.build_delay = 5
        await registry.deploy(program_id, DOCKERFILE, {"main.txt": b"v2"}, None, "alice")
        never = asked(settings=RunSettings(restart_policy=RestartPolicy(RestartMode.NEVER)))
        for change in (
            registry.update(program_id, ["restart_policy"], never, "a"),
            registry.rollback(program_id, 1, "a"),
            registry.set_env(program_id, {"MODE": "fast"}, []),
        ):
            with pytest.raises(FailedPrecondition, match="rollout to revision 2 is BUILDING"):
                await change
        program = registry.get(program_id)
        assert program.env == ()
        assert program.restart_policy == RestartPolicy()
        assert program.latest_version == 2
