"""End-to-end: a program's readiness check, restart policy and stop settings over REST
and gRPC (issue #14), on `hershy serve --runtime fake`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from tests.e2e.rest_support import (
    DOCKERFILE,
    RestHost,
    new_user,
    running_rest_server,
)


@pytest.fixture(scope="module")
def rest_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestHost]:
    with running_rest_server(tmp_path_factory.mktemp("hershy-health")) as host:
        yield host


async def create(http: aiohttp.ClientSession, host: RestHost, **extra: Any) -> tuple[int, Any]:
    body = {"user_id": new_user(), "dockerfile": DOCKERFILE, "src_files": {"run": "hi\n"}}
    async with http.post(f"{host.url}/programs", json={**body, **extra}) as response:
        return response.status, await response.json(content_type=None)


async def test_defaults_are_hershs(rest_host: RestHost, http: aiohttp.ClientSession) -> None:
    status, program = await create(http, rest_host)
    assert status == 201, program
    assert program["readiness"] == {
        "path": "/watcher/status",
        "field": "state",
        "ready_values": ["Ready", "Running"],
        "failed_values": ["Crashed", "Killed"],
        "timeout_seconds": 0.0,
        "settle_seconds": 1.0,
        "liveness_grace_seconds": 30.0,
    }
    assert program["restart_policy"] == {
        "mode": "always",
        "max_restarts": 0,
        "window_seconds": 600.0,
    }
    assert program["stop"] == {"signal": "SIGTERM", "grace_seconds": 0.0}
    assert program["health"] == "unknown"
    assert program["watcher_state"] == ""
    assert program["watcher_answered_at"] is None


async def test_settings_given_are_kept_and_shown(
    rest_host: RestHost, http: aiohttp.ClientSession
) -> None:
    status, program = await create(
        http,
        rest_host,
        readiness={
            "path": "/healthz",
            "field": "",
            "timeout_seconds": 5,
            "liveness_grace_seconds": 10,
        },
        restart_policy={"mode": "on-failure", "max_restarts": 3, "window_seconds": 60},
        stop={"signal": "SIGINT", "grace_seconds": 2.5},
    )
    assert status == 201, program
    assert program["readiness"]["path"] == "/healthz"
    assert program["readiness"]["field"] == ""
    assert program["readiness"]["timeout_seconds"] == 5.0
    assert program["readiness"]["liveness_grace_seconds"] == 10.0
    assert program["restart_policy"] == {
        "mode": "on-failure",
        "max_restarts": 3,
        "window_seconds": 60.0,
    }
    assert program["stop"] == {"signal": "SIGINT", "grace_seconds": 2.5}
    async with http.get(f"{rest_host.url}/programs/{program['program_id']}") as response:
        again = await response.json()
    assert again["stop"] == program["stop"]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"readiness": {"path": "no-slash"}}, "readiness.path"),
        ({"readiness": {"pathh": "/x"}}, "readiness.pathh"),
        ({"readiness": {"ready_values": "Ready"}}, "readiness.ready_values"),
        ({"readiness": {"timeout_seconds": "5"}}, "readiness.timeout_seconds"),
        ({"readiness": {"liveness_grace_seconds": -1}}, "readiness.liveness_grace_seconds"),
        ({"readiness": []}, "readiness"),
        ({"restart_policy": {"mode": "sometimes"}}, "restart_policy.mode"),
        ({"restart_policy": {"max_restarts": 1.5}}, "restart_policy.max_restarts"),
        ({"restart_policy": {"max_restarts": 5000}}, "restart_policy.max_restarts"),
        ({"stop": {"signal": "SIGSEGV"}}, "stop.signal"),
        ({"stop": {"grace_seconds": 1e6}}, "stop.grace"),
    ],
)
async def test_bad_settings_are_400_naming_the_field(
    rest_host: RestHost, http: aiohttp.ClientSession, extra: dict[str, Any], field: str
) -> None:
    status, body = await create(http, rest_host, **extra)
    assert status == 400, body
    assert body["field"] == field, body


async def test_grpc_create_takes_and_returns_the_settings(rest_host: RestHost) -> None:
    async with grpc.aio.insecure_channel(rest_host.grpc_address) as channel:
        stub = pb_grpc.ProgramServiceStub(channel)
        program = await stub.CreateProgram(
            pb.CreateProgramRequest(
                user_id=new_user(),
                dockerfile="FROM scratch\n",
                readiness=pb.ReadinessCheck(field="phase", ready_values=["up"]),
                restart_policy=pb.RestartPolicy(mode=pb.RESTART_MODE_NEVER),
                stop=pb.StopSettings(signal="SIGQUIT", grace=Duration(seconds=4)),
            )
        )
        assert program.readiness.field == "phase"
        assert list(program.readiness.ready_values) == ["up"]
        assert program.readiness.path == "/watcher/status"
        assert program.restart_policy.mode == pb.RESTART_MODE_NEVER
        assert program.stop.signal == "SIGQUIT"
        assert program.stop.grace.seconds == 4
        assert program.health == pb.HEALTH_UNKNOWN
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateProgram(
                pb.CreateProgramRequest(
                    user_id=new_user(),
                    dockerfile="FROM scratch\n",
                    restart_policy=pb.RestartPolicy(mode=pb.RestartMode.ValueType(9)),
                )
            )
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "restart_policy.mode" in (refused.value.details() or "")
