"""End-to-end: new revisions in place over REST and gRPC, on `hershy serve --runtime fake`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.protobuf.duration_pb2 import Duration

from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from hershy_client import AsyncClient
from tests.e2e.rest_support import RestHost, client_session, running_rest_server
from tests.e2e.test_rest_auth import Session, User, call, make_user, ready_program_of

DOCKERFILE = "FROM scratch\n"


@pytest.fixture(scope="module")
def rest_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestHost]:
    with running_rest_server(tmp_path_factory.mktemp("hershy-deploy"), auth=True) as host:
        yield host


async def settled(http: Session, url: str, user: User, number: int) -> dict[str, Any]:
    """The program once revision `number`'s rollout ended and it is Ready again."""
    async with asyncio.timeout(10):
        while True:
            status, program, _ = await call(http, "GET", url, user.headers)
            assert status == 200, program
            rollout = program["rollout"]
            ended = rollout is not None and rollout["phase"] not in (
                "BUILDING",
                "SWITCHING",
                "REVERTING",
            )
            target = ended and rollout["target_revision_number"] == number
            if target and program["state"] == "Ready":
                return dict(program)
            await asyncio.sleep(0.05)


async def test_deploy_patch_history_and_rollback_over_rest(
    rest_host: RestHost, http: Session
) -> None:
    owner = await make_user(rest_host, "dep")
    program = await ready_program_of(http, rest_host, owner)
    url = f"{rest_host.url}/programs/{program['program_id']}"
    assert program["revision_number"] == 1
    assert program["rollout"] is None

    body = {"dockerfile": DOCKERFILE, "src_files": {"app.txt": "v2\n"}}
    status, answer, _ = await call(http, "POST", f"{url}/deploy", owner.headers, json=body)
    assert status == 202, answer
    assert answer["latest_revision_number"] == 2
    v2 = await settled(http, url, owner, 2)
    assert v2["rollout"]["phase"] == "SUCCEEDED"
    assert v2["program_id"] == program["program_id"]
    assert v2["revision_number"] == 2
    assert v2["build_id"] != program["build_id"]

    status, source, _ = await call(http, "GET", f"{url}/source", owner.headers)
    assert status == 200
    assert "app.txt" in str(source)  # the source of the revision it runs

    patch = {"resources": {"memory_bytes": 256 * 1024 * 1024}}
    status, answer, _ = await call(http, "PATCH", url, owner.headers, json=patch)
    assert status == 202, answer
    v3 = await settled(http, url, owner, 3)
    assert v3["resources"]["memory_bytes"] == 256 * 1024 * 1024
    assert v3["build_id"] == v2["build_id"]

    status, bad, _ = await call(http, "PATCH", url, owner.headers, json={"user_id": "eve"})
    assert status == 400, bad
    status, bad, _ = await call(
        http, "PATCH", url, owner.headers, json={"resources": {"state_bytes": 64 * 1024 * 1024}}
    )
    assert status == 400, bad
    assert "keeps its size" in bad["message"]

    status, history, _ = await call(http, "GET", f"{url}/revisions", owner.headers)
    assert status == 200
    listed = [(r["number"], r["description"], r["current"]) for r in history["revisions"]]
    assert listed == [
        (3, "update resources.memory_bytes", True),
        (2, "deploy", False),
        (1, "create", False),
    ]
    assert all(r["created_by"] == owner.user_id for r in history["revisions"])
    assert all(r["kept"] for r in history["revisions"])

    status, answer, _ = await call(http, "POST", f"{url}/rollback?revision=1", owner.headers)
    assert status == 202, answer
    back = await settled(http, url, owner, 4)
    assert back["build_id"] == program["build_id"]
    assert back["resources"] == program["resources"]
    status, missing, _ = await call(http, "POST", f"{url}/rollback?revision=99", owner.headers)
    assert status == 404, missing


async def test_another_users_program_answers_like_a_missing_one(
    rest_host: RestHost, http: Session
) -> None:
    owner, other = await make_user(rest_host, "own"), await make_user(rest_host, "oth")
    program = await ready_program_of(http, rest_host, owner)
    url = f"{rest_host.url}/programs/{program['program_id']}"
    body = {"dockerfile": DOCKERFILE, "src_files": {"evil": "x"}}
    attempts: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", f"{url}/deploy", {"json": body}),
        ("PATCH", url, {"json": {"resources": {"memory_bytes": 1}}}),
        ("GET", f"{url}/revisions", {}),
        ("POST", f"{url}/rollback", {}),
    ]
    for method, target, extra in attempts:
        status, answer, _ = await call(http, method, target, other.headers, **extra)
        assert status == 404, (method, target, answer)
        status, _, _ = await call(http, method, target, {}, **extra)
        assert status == 401
    status, now, _ = await call(http, "GET", url, owner.headers)
    assert now["revision_number"] == 1  # nothing the other user sent was applied
    assert now["latest_revision_number"] == 1


async def test_deploy_and_rollback_through_grpc(rest_host: RestHost) -> None:
    owner = await make_user(rest_host, "grpc")
    metadata = (("authorization", f"Bearer {owner.token}"),)
    async with grpc.aio.insecure_channel(rest_host.grpc_address) as channel:
        stub: pb_grpc.ProgramServiceAsyncStub = pb_grpc.ProgramServiceStub(channel)
        program = await stub.CreateProgram(
            pb.CreateProgramRequest(user_id=owner.user_id, dockerfile=DOCKERFILE),
            metadata=metadata,
        )
        await stub.StartProgram(pb.StartProgramRequest(name=program.name), metadata=metadata)
        await stub.WaitProgram(
            pb.WaitProgramRequest(name=program.name, state=pb.STATE_READY), metadata=metadata
        )
        binary = bytes(range(256))
        deployed = await stub.DeployProgram(
            pb.DeployProgramRequest(
                name=program.name, dockerfile=DOCKERFILE, src_files={"bin/app": binary}
            ),
            metadata=metadata,
        )
        assert deployed.rollout.target_revision_number == 2
        async with asyncio.timeout(10):
            while True:
                now = await stub.GetProgram(
                    pb.GetProgramRequest(name=program.name), metadata=metadata
                )
                if now.rollout.phase == pb.ROLLOUT_PHASE_SUCCEEDED and now.state == pb.STATE_READY:
                    break
                await asyncio.sleep(0.05)
        source = await stub.GetProgramSource(
            pb.GetProgramSourceRequest(name=program.name), metadata=metadata
        )
        assert source.src_files["bin/app"] == binary
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.UpdateProgram(
                pb.UpdateProgramRequest(program=pb.Program(name=program.name)),
                metadata=metadata,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        revisions = await stub.ListProgramRevisions(
            pb.ListProgramRevisionsRequest(name=program.name), metadata=metadata
        )
        assert [r.number for r in revisions.revisions] == [2, 1]
        assert revisions.revisions[0].name == f"{program.name}/revisions/2"
        back = await stub.RollbackProgram(
            pb.RollbackProgramRequest(name=program.name), metadata=metadata
        )
        assert back.rollout.target_revision_number == 3


async def test_patch_readiness_restart_policy_and_stop_as_revisions(
    rest_host: RestHost, http: Session
) -> None:
    owner = await make_user(rest_host, "upd")
    program = await ready_program_of(http, rest_host, owner)
    url = f"{rest_host.url}/programs/{program['program_id']}"
    patch = {
        "restart_policy": {"mode": "on-failure", "max_restarts": 3},
        "stop": {"signal": "SIGINT", "grace_seconds": 4},
        "readiness": {"timeout_seconds": 20},
    }
    status, answer, _ = await call(http, "PATCH", url, owner.headers, json=patch)
    assert status == 202, answer
    v2 = await settled(http, url, owner, 2)
    assert v2["rollout"]["phase"] == "SUCCEEDED"
    assert v2["restart_policy"] == {"mode": "on-failure", "max_restarts": 3, "window_seconds": 600}
    assert v2["stop"] == {"signal": "SIGINT", "grace_seconds": 4}
    assert v2["readiness"]["timeout_seconds"] == 20
    assert v2["readiness"]["path"] == program["readiness"]["path"]  # not in the mask: kept
    assert v2["build_id"] == program["build_id"]
    assert v2["run"] > program["run"]

    # Only what the mask names changes; a field of an object left out takes its default.
    status, answer, _ = await call(
        http,
        "PATCH",
        f"{url}?update_mask=restart_policy",
        owner.headers,
        json={"restart_policy": {"mode": "never"}, "stop": {"signal": "SIGKILL"}},
    )
    assert status == 202, answer
    v3 = await settled(http, url, owner, 3)
    assert v3["restart_policy"] == {"mode": "never", "max_restarts": 0, "window_seconds": 600}
    assert v3["stop"] == v2["stop"]

    status, history, _ = await call(http, "GET", f"{url}/revisions", owner.headers)
    assert status == 200
    newest, middle = history["revisions"][0], history["revisions"][1]
    assert newest["description"] == "update restart_policy"
    assert newest["changed_fields"] == ["restart_policy.mode", "restart_policy.max_restarts"]
    assert newest["restart_policy"]["mode"] == "never"
    assert set(middle["changed_fields"]) == {
        "readiness.timeout_seconds",
        "restart_policy.mode",
        "restart_policy.max_restarts",
        "stop.signal",
        "stop.grace_seconds",
    }
    assert history["revisions"][-1]["changed_fields"] == []

    # Refused, naming the path: unknown, output only, set elsewhere; and bad values.
    refused: list[tuple[str, dict[str, Any]]] = [
        ("state", {"resources": {}}),
        ("restart_count", {"resources": {}}),
        ("env", {"resources": {}}),
        ("stop.nope", {"stop": {}}),
    ]
    for mask, body in refused:
        status, bad, _ = await call(
            http, "PATCH", f"{url}?update_mask={mask}", owner.headers, json=body
        )
        assert status == 400, bad
        assert repr(mask) in bad["message"], bad
    status, bad, _ = await call(http, "PATCH", url, owner.headers, json={"env": {"A": "b"}})
    assert status == 400, bad
    status, bad, _ = await call(
        http, "PATCH", url, owner.headers, json={"stop": {"signal": "SIGSEGV"}}
    )
    assert status == 400, bad
    assert "stop.signal" in bad["message"], bad

    # Rollback restores that revision's whole configuration.
    status, answer, _ = await call(http, "POST", f"{url}/rollback?revision=1", owner.headers)
    assert status == 202, answer
    back = await settled(http, url, owner, 4)
    for field in ("readiness", "restart_policy", "stop", "resources", "build_id"):
        assert back[field] == program[field], field


async def test_update_through_grpc_with_no_mask_takes_the_fields_set(rest_host: RestHost) -> None:
    owner = await make_user(rest_host, "upg")
    async with client_session() as http:
        program = await ready_program_of(http, rest_host, owner)
    metadata = (("authorization", f"Bearer {owner.token}"),)
    name = f"programs/{program['program_id']}"
    async with grpc.aio.insecure_channel(rest_host.grpc_address) as channel:
        stub: pb_grpc.ProgramServiceAsyncStub = pb_grpc.ProgramServiceStub(channel)
        asked = pb.Program(
            name=name, restart_policy=pb.RestartPolicy(mode=pb.RESTART_MODE_ON_FAILURE)
        )
        updated = await stub.UpdateProgram(
            pb.UpdateProgramRequest(program=asked), metadata=metadata
        )
        assert updated.latest_revision_number == 2
        async with asyncio.timeout(10):
            while True:
                now = await stub.GetProgram(pb.GetProgramRequest(name=name), metadata=metadata)
                if now.rollout.phase == pb.ROLLOUT_PHASE_SUCCEEDED and now.state == pb.STATE_READY:
                    break
                await asyncio.sleep(0.05)
        assert now.restart_policy.mode == pb.RESTART_MODE_ON_FAILURE
        revisions = await stub.ListProgramRevisions(
            pb.ListProgramRevisionsRequest(name=name), metadata=metadata
        )
        assert revisions.revisions[0].description == "update restart_policy"
        assert revisions.revisions[0].restart_policy.mode == pb.RESTART_MODE_ON_FAILURE
        assert list(revisions.revisions[0].changed_fields) == ["restart_policy.mode"]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.UpdateProgram(
                pb.UpdateProgramRequest(
                    program=pb.Program(name=name),
                    update_mask=field_mask_pb2.FieldMask(paths=["id"]),
                ),
                metadata=metadata,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'id'" in (refused.value.details() or "")


async def test_python_client_update_and_revisions(rest_host: RestHost) -> None:
    owner = await make_user(rest_host, "pyc")
    async with AsyncClient(rest_host.grpc_address, token=owner.token, timeout=10) as hershy:
        program = await hershy.create(owner.user_id, DOCKERFILE, {})
        await hershy.start(program)
        await hershy.wait(program, "ready", timeout=10)
        grace = Duration(seconds=3)
        await hershy.update(
            program,
            stop=pb.StopSettings(signal="SIGQUIT", grace=grace),
            update_mask=["stop.grace"],
        )
        async with asyncio.timeout(10):
            while True:
                now = await hershy.get(program)
                if now.rollout.phase == pb.ROLLOUT_PHASE_SUCCEEDED and now.state == pb.STATE_READY:
                    break
                await asyncio.sleep(0.05)
        assert now.stop.grace.seconds == 3
        assert now.stop.signal == "SIGTERM"  # not in the mask
        newest = (await hershy.revisions(program))[0]
        assert list(newest.changed_fields) == ["stop.grace"]
        assert newest.description == "update stop.grace"
