"""End-to-end: the real `hershy serve --runtime fake` over gRPC.

Most tests share one server (the `server` fixture, one per module); tests that
shut a server down get their own (`own_server`). Tests on the shared server
use fresh programs and user ids, so they do not depend on each other.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from tests.e2e.conftest import CHANNEL_OPTIONS, SERVICE, SHUTDOWN_TIMEOUT, ServerProcess

if TYPE_CHECKING:
    from hershy.v1.program_pb2_grpc import ProgramServiceAsyncStub

Code = grpc.StatusCode
Response = pb.WatchProgramsResponse
DOCKERFILE = 'FROM scratch\nCOPY . /app\nCMD ["/app/run"]\n'
FILES = {"run": b"#!/bin/sh\necho hi\n", "lib/util.py": b"print('util')\n"}
#: A program id that matches the pattern but was never handed out.
UNKNOWN_NAME = "programs/prog-000000000000"
ERROR_DOMAIN = "hershy.dev"
MAX_FILE_BYTES = 32 * 1024 * 1024
#: After SIGTERM, open Watch streams end this fast (well before the 5 s gRPC grace).
STREAMS_END_WITHIN = 3.0


# --- helpers ------------------------------------------------------------------


def new_user(prefix: str = "user") -> str:
    """A user id no other test uses, so List filters see only this test's programs."""
    return f"{prefix}-{secrets.token_hex(4)}"


async def create(
    stub: ProgramServiceAsyncStub,
    user_id: str = "alice",
    dockerfile: str = DOCKERFILE,
    files: dict[str, bytes] | None = None,
) -> pb.Program:
    request = pb.CreateProgramRequest(
        user_id=user_id, dockerfile=dockerfile, src_files=FILES if files is None else files
    )
    return await stub.CreateProgram(request, timeout=10)


async def wait_for(
    stub: ProgramServiceAsyncStub, name: str, state: pb.State.ValueType, seconds: float = 5.0
) -> pb.Program:
    request = pb.WaitProgramRequest(name=name, state=state, timeout=seconds_to_duration(seconds))
    return await stub.WaitProgram(request, timeout=seconds + 5)


async def create_ready(stub: ProgramServiceAsyncStub, user_id: str = "alice") -> pb.Program:
    program = await create(stub, user_id)
    await stub.StartProgram(pb.StartProgramRequest(name=program.name), timeout=5)
    ready = await wait_for(stub, program.name, pb.STATE_READY)
    assert ready.state == pb.STATE_READY
    host, _, port = ready.proxy_target.rpartition(":")
    assert host == "127.0.0.1"
    assert 19001 <= int(port) <= 29999
    return ready


def seconds_to_duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


async def rpc_error(call: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """The error `call` fails with; fails the test unless the status code is `code`."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() == code, f"expected {code.name}, got {error.code().name}: {error.details()}"
    return error


async def final_code(call: Awaitable[Any]) -> grpc.StatusCode:
    """How a call ended: OK, or the code it failed with."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return Code.OK


def details_of(error: grpc.aio.AioRpcError) -> list[Any]:
    """The rich status details (google.rpc.Status.details) the server attached."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no rich status on {error.code().name}: {error.details()}"
    assert status.code == error.code().value[0]
    assert status.message == error.details()
    return list(status.details)


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    for detail in details_of(error):
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == ERROR_DOMAIN
            return info
    pytest.fail(f"no google.rpc.ErrorInfo in {error.code().name}: {error.details()}")


def bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    fields: list[str] = []
    for detail in details_of(error):
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields.extend(violation.field for violation in bad_request.field_violations)
    return fields


def assert_invalid_field(error: grpc.aio.AioRpcError, field: str) -> None:
    """INVALID_ARGUMENT naming `field` in the message, in BadRequest, with ErrorInfo."""
    assert error.code() == Code.INVALID_ARGUMENT
    message = error.details() or ""
    assert field in message, f"{field!r} not in {message!r}"
    assert field in bad_request_fields(error), (
        f"BadRequest fields {bad_request_fields(error)} do not include {field!r}"
    )
    assert error_info(error).reason in ("INVALID_ARGUMENT", "TOO_LARGE")


class Watch:
    """One WatchPrograms stream, read with timeouts so a missing message fails fast."""

    def __init__(self, stub: ProgramServiceAsyncStub, request: pb.WatchProgramsRequest) -> None:
        self.call = stub.WatchPrograms(request)

    async def next(self, within: float = 5.0) -> Response | None:
        """The next message, or None when the stream has ended."""
        try:
            message = await asyncio.wait_for(self.call.read(), within)
        except TimeoutError:
            pytest.fail(f"no Watch message within {within} s")
        if message is grpc.aio.EOF:
            return None
        assert isinstance(message, Response)
        return message

    async def synced(self) -> tuple[list[Response], Response]:
        """The snapshot and the SYNCED message that ends it."""
        snapshot: list[Response] = []
        while True:
            message = await self.next()
            assert message is not None, "the stream ended before SYNCED"
            if message.type == Response.TYPE_SYNCED:
                return snapshot, message
            assert message.type == Response.TYPE_SNAPSHOT, Response.Type.Name(message.type)
            snapshot.append(message)

    async def until(self, done: Callable[[Response], bool], within: float = 5.0) -> list[Response]:
        """Every message up to and including the first one `done` accepts."""
        messages: list[Response] = []
        deadline = time.monotonic() + within
        while True:
            message = await self.next(max(0.01, deadline - time.monotonic()))
            assert message is not None, f"the stream ended; got {summary(messages)}"
            messages.append(message)
            if done(message):
                return messages

    async def take(self, count: int, within: float = 5.0) -> list[Response]:
        """The next `count` messages."""
        messages: list[Response] = []
        for _ in range(count):
            message = await self.next(within)
            assert message is not None, f"the stream ended after {summary(messages)}"
            messages.append(message)
        return messages

    async def drain(self, within: float) -> None:
        """Read until the stream ends (or fails)."""
        while await self.next(within) is not None:
            pass

    async def assert_quiet(self, seconds: float = 0.2) -> None:
        """Nothing more arrives for a while."""
        try:
            message = await asyncio.wait_for(self.call.read(), seconds)
        except TimeoutError:
            return
        pytest.fail(f"unexpected Watch message: {message}")

    def cancel(self) -> None:
        self.call.cancel()


def is_change(name: str, state: pb.State.ValueType) -> Callable[[Response], bool]:
    return lambda message: message.program.name == name and message.program.state == state


def summary(messages: list[Response]) -> list[tuple[str, str, str, str]]:
    """Readable (type, program, state, event) tuples for assertion messages."""
    return [
        (
            Response.Type.Name(m.type).removeprefix("TYPE_"),
            m.program.id,
            pb.State.Name(m.program.state).removeprefix("STATE_"),
            m.event.WhichOneof("kind") or "",
        )
        for m in messages
    ]


def changes_of(name: str, messages: list[Response]) -> list[Response]:
    return [m for m in messages if m.program.name == name]


# --- health and reflection ----------------------------------------------------


async def test_health_check_reports_serving(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service
    error = await rpc_error(
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5),
        Code.NOT_FOUND,
    )
    assert error.code() == Code.NOT_FOUND


async def test_reflection_lists_and_describes_program_service(channel: grpc.aio.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
    ]
    responses = [r async for r in reflection.ServerReflectionInfo(iter(requests), timeout=5)]
    assert len(responses) == 2
    services = {s.name for s in responses[0].list_services_response.service}
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in responses[1].file_descriptor_response.file_descriptor_proto
    ]
    described = {f.name: f for f in files}
    assert "hershy/v1/program.proto" in described, list(described)
    methods = {m.name for m in described["hershy/v1/program.proto"].service[0].method}
    assert {"CreateProgram", "WatchPrograms", "WaitProgram"} <= methods


# --- the lifecycle ------------------------------------------------------------


async def test_program_lifecycle_end_to_end(stub: ProgramServiceAsyncStub) -> None:
    watch = Watch(stub, pb.WatchProgramsRequest())
    _, synced = await watch.synced()
    assert synced.revision >= 0
    assert not synced.HasField("program")

    user = new_user("life")
    before = time.time()
    program = await create(stub, user)
    assert program.name == f"programs/{program.id}"
    assert program.id.startswith("prog-")
    assert program.user_id == user
    assert program.build_id.startswith("b-")
    assert program.state == pb.STATE_CREATED
    assert program.proxy_target == "", "the runtime places a program when it starts"
    assert program.revision > synced.revision
    assert program.HasField("create_time")
    assert before - 5 <= program.create_time.ToMicroseconds() / 1e6 <= time.time() + 5
    assert program.runtime == "fake"
    assert program.run == 0
    assert program.image_id == program.container_id == ""

    started = await stub.StartProgram(pb.StartProgramRequest(name=program.name), timeout=5)
    assert started.state == pb.STATE_BUILDING
    assert started.run == 1
    ready = await wait_for(stub, program.name, pb.STATE_READY)
    assert ready.state == pb.STATE_READY
    assert ready.image_id
    assert ready.container_id
    assert ready.HasField("ready_time")
    assert ready.run == 1

    stopping = await stub.StopProgram(pb.StopProgramRequest(name=program.name), timeout=5)
    assert stopping.state == pb.STATE_STOPPING
    stopped = await wait_for(stub, program.name, pb.STATE_STOPPED)
    assert stopped.container_id == ""
    assert not stopped.HasField("ready_time")

    deleting = await stub.DeleteProgram(pb.DeleteProgramRequest(name=program.name), timeout=5)
    assert deleting.state == pb.STATE_DELETING

    messages = await watch.until(lambda m: m.type == Response.TYPE_DELETED)
    watch.cancel()
    mine = changes_of(program.name, messages)
    expected = [
        ("CREATED", "CREATED", "created"),
        ("UPDATED", "BUILDING", "start_requested"),
        ("UPDATED", "STARTING", "build_succeeded"),
        ("UPDATED", "STARTING", "container_created"),
        ("UPDATED", "READY", "container_ready"),
        ("UPDATED", "STOPPING", "stop_requested"),
        ("UPDATED", "STOPPED", "container_stopped"),
        ("UPDATED", "DELETING", "delete_requested"),
        ("DELETED", "DELETED", "torn_down"),
    ]
    assert [(kind, state, event) for kind, _, state, event in summary(mine)] == expected

    revisions = [m.revision for m in mine]
    assert revisions == sorted(set(revisions)), f"revisions not strictly increasing: {revisions}"
    assert revisions[0] > synced.revision
    for message in mine:
        assert message.program.revision == message.revision
        assert message.program.runtime == "fake"
        assert message.event.HasField("time")
    assert revisions[0] == program.revision
    assert revisions[1] == started.revision
    assert revisions[4] == ready.revision
    assert revisions[5] == stopping.revision
    assert revisions[6] == stopped.revision
    assert revisions[7] == deleting.revision

    created = mine[0].event.created
    assert created.program_id == program.id
    assert created.user_id == user
    assert created.build_id == program.build_id
    assert created.proxy_target == program.proxy_target == ""
    assert mine[2].event.build_succeeded.image_id == ready.image_id
    assert mine[2].event.run == 1
    assert mine[3].event.container_created.container_id == ready.container_id
    # Where the runtime placed the container, in the event and in the program from then on.
    assert mine[3].event.container_created.address == ready.proxy_target
    assert mine[3].program.proxy_target == ready.proxy_target
    update_times = [m.program.update_time.ToNanoseconds() for m in mine]
    assert update_times == sorted(update_times)

    error = await rpc_error(
        stub.GetProgram(pb.GetProgramRequest(name=program.name), timeout=5), Code.NOT_FOUND
    )
    assert program.id in (error.details() or "")
    assert error_info(error).reason == "PROGRAM_NOT_FOUND"
    # A deleted program never returns: not to List, and no command brings it back.
    listed = await stub.ListPrograms(pb.ListProgramsRequest(user_id=user), timeout=5)
    assert listed.total_size == 0
    assert list(listed.programs) == []
    await rpc_error(
        stub.StartProgram(pb.StartProgramRequest(name=program.name), timeout=5), Code.NOT_FOUND
    )


async def test_restart_from_ready_goes_through_stopping_and_reuses_the_build(
    stub: ProgramServiceAsyncStub,
) -> None:
    ready = await create_ready(stub, new_user("restart"))
    watch = Watch(stub, pb.WatchProgramsRequest(name=ready.name))
    snapshot, _ = await watch.synced()
    assert [m.program.state for m in snapshot] == [pb.STATE_READY]

    restarting = await stub.RestartProgram(pb.RestartProgramRequest(name=ready.name), timeout=5)
    assert restarting.state == pb.STATE_STOPPING
    assert restarting.restart_pending

    messages = await watch.until(is_change(ready.name, pb.STATE_READY))
    watch.cancel()
    states = [m.program.state for m in messages]
    assert states == [
        pb.STATE_STOPPING,
        pb.STATE_BUILDING,
        pb.STATE_STARTING,
        pb.STATE_STARTING,
        pb.STATE_READY,
    ], summary(messages)
    assert messages[0].event.WhichOneof("kind") == "restart_requested"
    assert messages[1].event.WhichOneof("kind") == "container_stopped"
    revisions = [m.revision for m in messages]
    assert revisions == sorted(set(revisions))
    assert revisions[0] > ready.revision

    again = await wait_for(stub, ready.name, pb.STATE_READY)
    assert again.run > ready.run
    assert again.image_id == ready.image_id, "the build was not reused"
    assert messages[2].event.build_succeeded.image_id == ready.image_id
    assert again.build_id == ready.build_id
    assert again.container_id
    assert again.container_id != ready.container_id
    assert not again.restart_pending
    assert again.restart_count == 0  # counts automatic restarts only


async def test_same_source_gives_same_build_id(stub: ProgramServiceAsyncStub) -> None:
    first = await create(stub, new_user("build"))
    second = await create(stub, new_user("build"))
    assert first.id != second.id
    assert first.build_id == second.build_id

    variants = {
        "content": await create(stub, files={**FILES, "run": b"#!/bin/sh\necho bye\n"}),
        "path": await create(
            stub, files={"run2": FILES["run"], "lib/util.py": FILES["lib/util.py"]}
        ),
        "extra file": await create(stub, files={**FILES, "extra": b""}),
        "dockerfile": await create(stub, dockerfile=DOCKERFILE + "EXPOSE 8080\n"),
    }
    build_ids = {name: program.build_id for name, program in variants.items()}
    for name, build_id in build_ids.items():
        assert build_id.startswith("b-")
        assert build_id != first.build_id, f"changing the {name} kept the build id"
    assert len(set(build_ids.values())) == len(build_ids), build_ids


# --- List ---------------------------------------------------------------------


async def test_list_pages_in_creation_order(stub: ProgramServiceAsyncStub) -> None:
    user, other = new_user("list"), new_user("other")
    created: list[pb.Program] = []
    created_other: list[pb.Program] = []
    for index in range(9):
        # Interleave another user's programs, so the filter has something to drop.
        if index in (2, 6):
            created_other.append(await create(stub, other))
        else:
            created.append(await create(stub, user))
    assert len(created) == 7

    names: list[str] = []
    token = ""
    page_lengths: list[int] = []
    while True:
        page = await stub.ListPrograms(
            pb.ListProgramsRequest(page_size=3, page_token=token, user_id=user), timeout=5
        )
        assert page.total_size == 7
        assert all(p.user_id == user for p in page.programs)
        page_lengths.append(len(page.programs))
        names.extend(p.name for p in page.programs)
        token = page.next_page_token
        if not token:
            break
        assert len(page_lengths) < 5, "pagination does not end"
    assert page_lengths == [3, 3, 1]
    assert names == [p.name for p in created]

    # The default page holds them all, in the same order (a stable order).
    everything = await stub.ListPrograms(pb.ListProgramsRequest(user_id=user), timeout=5)
    assert [p.name for p in everything.programs] == names
    assert everything.next_page_token == ""
    assert everything.programs[0] == created[0]

    others = await stub.ListPrograms(pb.ListProgramsRequest(user_id=other), timeout=5)
    assert [p.name for p in others.programs] == [p.name for p in created_other]
    assert others.total_size == 2

    # Unfiltered, across pages: every program once, ours in creation order.
    all_names: list[str] = []
    token = ""
    total = -1
    for _ in range(1000):
        page = await stub.ListPrograms(
            pb.ListProgramsRequest(page_size=4, page_token=token), timeout=5
        )
        total = page.total_size
        all_names.extend(p.name for p in page.programs)
        token = page.next_page_token
        if not token:
            break
    assert len(all_names) == len(set(all_names)) == total
    ours = {p.name for p in created + created_other}
    interleaved = [p.name for p in sorted(created + created_other, key=lambda p: p.revision)]
    assert [n for n in all_names if n in ours] == interleaved


@pytest.mark.parametrize(
    "token",
    [
        "not-a-token",
        base64.urlsafe_b64encode(b"after:x").decode(),
        base64.urlsafe_b64encode(b"before:1").decode(),
        "%%%",
    ],
)
async def test_list_rejects_a_bad_page_token(stub: ProgramServiceAsyncStub, token: str) -> None:
    error = await rpc_error(
        stub.ListPrograms(pb.ListProgramsRequest(page_token=token), timeout=5),
        Code.INVALID_ARGUMENT,
    )
    assert_invalid_field(error, "page_token")


async def test_list_rejects_a_negative_page_size(stub: ProgramServiceAsyncStub) -> None:
    error = await rpc_error(
        stub.ListPrograms(pb.ListProgramsRequest(page_size=-1), timeout=5),
        Code.INVALID_ARGUMENT,
    )
    assert_invalid_field(error, "page_size")


async def test_list_rejects_a_malformed_user_filter(stub: ProgramServiceAsyncStub) -> None:
    error = await rpc_error(
        stub.ListPrograms(pb.ListProgramsRequest(user_id="Bad User!"), timeout=5),
        Code.INVALID_ARGUMENT,
    )
    assert_invalid_field(error, "user_id")


# --- Watch --------------------------------------------------------------------


async def test_watch_resume_replays_exactly_the_later_changes(
    stub: ProgramServiceAsyncStub,
) -> None:
    live = Watch(stub, pb.WatchProgramsRequest())
    _, synced = await live.synced()
    program = await create(stub, new_user("resume"))
    await stub.StartProgram(pb.StartProgramRequest(name=program.name), timeout=5)
    await wait_for(stub, program.name, pb.STATE_READY)
    await stub.StopProgram(pb.StopProgramRequest(name=program.name), timeout=5)
    history = await live.until(is_change(program.name, pb.STATE_STOPPED))
    live.cancel()
    assert len(history) >= 7, summary(history)

    for resume in (synced.revision, history[2].revision, history[-1].revision):
        replay = Watch(stub, pb.WatchProgramsRequest(resume_revision=resume))
        expected = [m for m in history if m.revision > resume]
        got = await replay.take(len(expected))
        assert got == expected, f"resume {resume}: {summary(got)} != {summary(expected)}"
        assert all(m.type not in (Response.TYPE_SNAPSHOT, Response.TYPE_SYNCED) for m in got)
        await replay.assert_quiet()
        replay.cancel()

    # Resuming a filtered watch replays that program's changes only.
    filtered = Watch(
        stub, pb.WatchProgramsRequest(name=program.name, resume_revision=synced.revision)
    )
    mine = changes_of(program.name, history)
    assert await filtered.take(len(mine)) == mine
    # ...and then goes on live.
    await stub.DeleteProgram(pb.DeleteProgramRequest(name=program.name), timeout=5)
    tail = await filtered.until(lambda m: m.type == Response.TYPE_DELETED)
    filtered.cancel()
    assert [m.program.state for m in tail] == [pb.STATE_DELETING, pb.STATE_DELETED]
    assert tail[0].revision > mine[-1].revision


async def test_watch_resume_from_the_future_is_out_of_range(
    stub: ProgramServiceAsyncStub,
) -> None:
    watch = Watch(stub, pb.WatchProgramsRequest(resume_revision=10**12))
    error = await rpc_error(watch.next(), Code.OUT_OF_RANGE)
    assert "resume_revision" in (error.details() or "")
    assert str(10**12) in (error.details() or "")
    info = error_info(error)
    assert info.reason == "REVISION_COMPACTED"
    assert "oldest_revision" in info.metadata


async def test_watch_by_name_sees_only_that_program(stub: ProgramServiceAsyncStub) -> None:
    user = new_user("filter")
    mine = await create(stub, user)
    other = await create(stub, user)
    watch = Watch(stub, pb.WatchProgramsRequest(name=mine.name))
    snapshot, synced = await watch.synced()
    assert [m.program.name for m in snapshot] == [mine.name]
    assert snapshot[0].program == mine
    assert synced.revision >= other.revision

    # The other program changes first; the stream must skip all of that.
    await stub.StartProgram(pb.StartProgramRequest(name=other.name), timeout=5)
    await wait_for(stub, other.name, pb.STATE_READY)
    await stub.StartProgram(pb.StartProgramRequest(name=mine.name), timeout=5)
    messages = await watch.until(is_change(mine.name, pb.STATE_READY))
    watch.cancel()
    assert {m.program.name for m in messages} == {mine.name}, summary(messages)
    assert messages[0].event.WhichOneof("kind") == "start_requested"


async def test_watch_of_an_unknown_program_is_not_found(stub: ProgramServiceAsyncStub) -> None:
    error = await rpc_error(
        Watch(stub, pb.WatchProgramsRequest(name=UNKNOWN_NAME)).next(), Code.NOT_FOUND
    )
    assert "prog-000000000000" in (error.details() or "")
    assert error_info(error).reason == "PROGRAM_NOT_FOUND"


async def test_watch_with_a_malformed_name_is_invalid(stub: ProgramServiceAsyncStub) -> None:
    error = await rpc_error(
        Watch(stub, pb.WatchProgramsRequest(name="prog-1")).next(), Code.INVALID_ARGUMENT
    )
    assert_invalid_field(error, "name")


# --- invalid requests ---------------------------------------------------------


@pytest.mark.parametrize(
    ("user_id", "dockerfile", "files", "field"),
    [
        pytest.param("ok", "", {}, "dockerfile", id="missing-dockerfile"),
        pytest.param("ok", " \n\t", {}, "dockerfile", id="blank-dockerfile"),
        pytest.param("Bad User!", DOCKERFILE, {}, "user_id", id="bad-user"),
        pytest.param("", DOCKERFILE, {}, "user_id", id="missing-user"),
        pytest.param("ok", DOCKERFILE, {"/etc/passwd": b"x"}, "src_files['/etc/passwd']", id="abs"),
        pytest.param("ok", DOCKERFILE, {"../x": b"x"}, "src_files['../x']", id="dotdot"),
        pytest.param("ok", DOCKERFILE, {"a/../../x": b"x"}, "src_files['a/../../x']", id="nested"),
        pytest.param("ok", DOCKERFILE, {"a\x00b": b"x"}, "src_files['a\\x00b']", id="nul"),
        pytest.param("ok", DOCKERFILE, {"a\\b": b"x"}, "src_files['a\\\\b']", id="backslash"),
        pytest.param(
            "ok", DOCKERFILE, {"Dockerfile": b"FROM x"}, "src_files['Dockerfile']", id="dockerfile"
        ),
        pytest.param(
            "ok", DOCKERFILE, {"a": b"1", "a/b": b"2"}, "src_files['a']", id="file-and-dir"
        ),
    ],
)
async def test_create_rejects_invalid_input(
    stub: ProgramServiceAsyncStub,
    user_id: str,
    dockerfile: str,
    files: dict[str, bytes],
    field: str,
) -> None:
    user = new_user("bad") if user_id == "ok" else user_id
    error = await rpc_error(create(stub, user, dockerfile, files), Code.INVALID_ARGUMENT)
    assert_invalid_field(error, field)
    assert error_info(error).reason == "INVALID_ARGUMENT"
    if user_id == "ok":
        listed = await stub.ListPrograms(pb.ListProgramsRequest(user_id=user), timeout=5)
        assert listed.total_size == 0, "a rejected Create left a program behind"


async def test_create_rejects_a_file_over_8_mib(stub: ProgramServiceAsyncStub) -> None:
    user = new_user("big")
    big = b"\0" * (MAX_FILE_BYTES + 1)
    error = await rpc_error(create(stub, user, files={"big.bin": big}), Code.INVALID_ARGUMENT)
    assert_invalid_field(error, "src_files['big.bin']")
    assert error_info(error).reason == "TOO_LARGE"
    assert str(MAX_FILE_BYTES) in (error.details() or "")
    listed = await stub.ListPrograms(pb.ListProgramsRequest(user_id=user), timeout=5)
    assert listed.total_size == 0
    # Exactly the limit is fine: the server takes messages far above gRPC's 4 MiB default.
    fine = await create(stub, user, files={"big.bin": big[:MAX_FILE_BYTES]})
    assert fine.state == pb.STATE_CREATED
    await stub.DeleteProgram(pb.DeleteProgramRequest(name=fine.name), timeout=5)


@pytest.mark.parametrize("name", ["prog-1", "programs/", "programs/UPPER", "", "programs/a/b"])
async def test_get_rejects_a_malformed_name(stub: ProgramServiceAsyncStub, name: str) -> None:
    error = await rpc_error(
        stub.GetProgram(pb.GetProgramRequest(name=name), timeout=5), Code.INVALID_ARGUMENT
    )
    assert_invalid_field(error, "name")


async def test_get_of_an_unknown_program_is_not_found(stub: ProgramServiceAsyncStub) -> None:
    error = await rpc_error(
        stub.GetProgram(pb.GetProgramRequest(name=UNKNOWN_NAME), timeout=5), Code.NOT_FOUND
    )
    assert "prog-000000000000" in (error.details() or "")
    assert error_info(error).reason == "PROGRAM_NOT_FOUND"


async def test_get_returns_the_current_program(stub: ProgramServiceAsyncStub) -> None:
    program = await create(stub, new_user("get"))
    got = await stub.GetProgram(pb.GetProgramRequest(name=program.name), timeout=5)
    assert got == program


async def test_start_while_ready_is_a_failed_precondition(stub: ProgramServiceAsyncStub) -> None:
    ready = await create_ready(stub, new_user("precond"))
    error = await rpc_error(
        stub.StartProgram(pb.StartProgramRequest(name=ready.name), timeout=5),
        Code.FAILED_PRECONDITION,
    )
    assert "READY" in (error.details() or "")
    info = error_info(error)
    assert info.reason == "WRONG_STATE"
    assert info.metadata["state"] == "READY"
    # Rejected requests change nothing.
    after = await stub.GetProgram(pb.GetProgramRequest(name=ready.name), timeout=5)
    assert after.revision == ready.revision


async def test_stop_while_created_is_a_failed_precondition(
    stub: ProgramServiceAsyncStub,
) -> None:
    program = await create(stub, new_user("precond"))
    error = await rpc_error(
        stub.StopProgram(pb.StopProgramRequest(name=program.name), timeout=5),
        Code.FAILED_PRECONDITION,
    )
    assert "CREATED" in (error.details() or "")
    assert error_info(error).metadata["state"] == "CREATED"


# --- WaitProgram --------------------------------------------------------------


async def test_wait_requires_a_state(stub: ProgramServiceAsyncStub) -> None:
    program = await create(stub, new_user("wait"))
    request = pb.WaitProgramRequest(name=program.name, state=pb.STATE_UNSPECIFIED)
    error = await rpc_error(stub.WaitProgram(request, timeout=5), Code.INVALID_ARGUMENT)
    assert_invalid_field(error, "state")


@pytest.mark.parametrize("seconds", [-1.0, 3601.0])
async def test_wait_rejects_a_bad_timeout(stub: ProgramServiceAsyncStub, seconds: float) -> None:
    program = await create(stub, new_user("wait"))
    request = pb.WaitProgramRequest(
        name=program.name, state=pb.STATE_READY, timeout=seconds_to_duration(seconds)
    )
    error = await rpc_error(stub.WaitProgram(request, timeout=5), Code.INVALID_ARGUMENT)
    assert_invalid_field(error, "timeout")


async def test_wait_returns_at_once_when_already_there(stub: ProgramServiceAsyncStub) -> None:
    program = await create(stub, new_user("wait"))
    got = await wait_for(stub, program.name, pb.STATE_CREATED, seconds=0.3)
    assert got == program


async def test_wait_times_out_naming_the_state(stub: ProgramServiceAsyncStub) -> None:
    program = await create(stub, new_user("wait"))
    started = time.monotonic()
    # The server's timeout (0.3 s) ends the call, not the client's deadline (5.3 s).
    error = await rpc_error(
        wait_for(stub, program.name, pb.STATE_READY, seconds=0.3), Code.DEADLINE_EXCEEDED
    )
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 3, elapsed
    message = error.details() or ""
    assert "READY" in message
    assert program.id in message
    assert "CREATED" in message  # where it is instead
    assert error_info(error).reason == "TIMEOUT"


async def test_wait_for_a_program_deleted_meanwhile_is_not_found(
    stub: ProgramServiceAsyncStub,
) -> None:
    program = await create(stub, new_user("wait"))
    waiting = asyncio.ensure_future(wait_for(stub, program.name, pb.STATE_READY))
    await asyncio.sleep(0.3)
    assert not waiting.done(), "Wait returned before the program was deleted"
    await stub.DeleteProgram(pb.DeleteProgramRequest(name=program.name), timeout=5)
    error = await rpc_error(waiting, Code.NOT_FOUND)
    assert "deleted" in (error.details() or "")


async def test_wait_on_an_unknown_program_is_not_found(stub: ProgramServiceAsyncStub) -> None:
    await rpc_error(wait_for(stub, UNKNOWN_NAME, pb.STATE_READY), Code.NOT_FOUND)


# --- shutdown and the command line --------------------------------------------


async def test_sigterm_ends_open_watch_streams_and_exits_zero(own_server: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(own_server.address, options=CHANNEL_OPTIONS) as chan:
        stub: ProgramServiceAsyncStub = pb_grpc.ProgramServiceStub(chan)
        await create_ready(stub)
        watches = [
            Watch(stub, pb.WatchProgramsRequest()),
            Watch(stub, pb.WatchProgramsRequest(resume_revision=0)),
        ]
        await watches[0].synced()
        assert (await watches[1].next()) is not None  # the replay of the first change

        started = time.monotonic()
        own_server.sigterm()
        for watch in watches:
            ended = await final_code(watch.drain(within=SHUTDOWN_TIMEOUT))
            assert ended in (Code.OK, Code.UNAVAILABLE, Code.CANCELLED), ended
        # Streams are ended first, not left to the server's whole grace period.
        assert time.monotonic() - started < STREAMS_END_WITHIN
    left = max(0.1, SHUTDOWN_TIMEOUT - (time.monotonic() - started))
    exit_code = own_server.terminate(timeout=left)
    assert exit_code == 0, own_server.stderr()
    assert "Hershy stopped" in own_server.stderr()


async def test_sigterm_with_a_wait_in_flight_exits_zero(own_server: ServerProcess) -> None:
    """A WaitProgram that is still waiting must not keep the Host from shutting down."""
    async with grpc.aio.insecure_channel(own_server.address, options=CHANNEL_OPTIONS) as chan:
        stub: ProgramServiceAsyncStub = pb_grpc.ProgramServiceStub(chan)
        program = await create(stub)
        waiting = asyncio.ensure_future(wait_for(stub, program.name, pb.STATE_READY, seconds=30))
        await asyncio.sleep(0.3)
        assert not waiting.done()

        started = time.monotonic()
        own_server.sigterm()
        try:
            exit_code = await asyncio.to_thread(own_server.terminate, SHUTDOWN_TIMEOUT)
        except BaseException:
            waiting.cancel()
            raise
        assert exit_code == 0, own_server.stderr()
        assert time.monotonic() - started < SHUTDOWN_TIMEOUT
        # The Host is gone, so the call has ended one way or another.
        ended = await asyncio.wait_for(final_code(waiting), 5)
        assert ended in (Code.UNAVAILABLE, Code.CANCELLED), ended


def run_cli(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    script = shutil.which("hershy")
    assert script is not None
    return subprocess.run(
        [script, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:99999"])
def test_serve_rejects_a_bad_grpc_addr(tmp_path: Path, address: str) -> None:
    result = run_cli(
        "serve", "--runtime", "fake", "--data-dir", str(tmp_path / "d"), "--grpc-addr", address
    )
    assert result.returncode != 0
    assert "--grpc-addr" in result.stderr, result.stderr
    assert address in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_serve_on_a_port_in_use_fails_cleanly(tmp_path: Path, server: ServerProcess) -> None:
    """A port another process listens on: a one-line error naming the address, no traceback."""
    result = run_cli(
        "serve",
        "--runtime",
        "fake",
        "--data-dir",
        str(tmp_path / "d"),
        "--grpc-addr",
        server.address,
    )
    assert result.returncode != 0
    assert server.address in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
