"""End-to-end: the Python client (clients/python, `hershy_client`) against `hershy serve`.

Most tests share the module's server (`server` from conftest) and use fresh
user ids so they do not see each other's programs. The restart tests need a
Host that comes back on the same port with the same data dir (its SQLite
store keeps programs, revisions and tokens), so they run their own (`host`),
with tokens on: every call of theirs also proves the client's token works.
Nothing here may block forever: every wait on a stream has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard, TypeVar

import grpc
import pytest

from hershy_client import (
    AsyncClient,
    Client,
    DeadlineExceeded,
    FailedPrecondition,
    HershyError,
    InvalidArgument,
    NotFound,
    Resync,
    ResyncReason,
    RevisionTooOld,
    Unauthenticated,
    Unavailable,
    WatchItem,
    pb,
)
from hershy_client.watch import Backoff, WatchCursor
from tests.e2e.conftest import ServerProcess, free_port, hershy_command, wait_until_serving

T = TypeVar("T")
Response = pb.WatchProgramsResponse
CHANGES = (Response.TYPE_CREATED, Response.TYPE_UPDATED, Response.TYPE_DELETED)
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "clients" / "python" / "examples" / "watch_programs.py"
DOCKERFILE = 'FROM scratch\nCOPY . /app\nCMD ["/app/run"]\n'
#: Text contents are sent as UTF-8, bytes as they are.
FILES: dict[str, bytes | str] = {"run": "#!/bin/sh\necho hi\n", "lib/blob.bin": b"\x00\xff"}
FILES_AS_SENT = {"run": b"#!/bin/sh\necho hi\n", "lib/blob.bin": b"\x00\xff"}
UNKNOWN_ID = "prog-000000000000"
#: Far beyond any revision a test Host reaches.
FUTURE_REVISION = 10**12
#: How long any single expected thing may take to show up.
PATIENCE = 15.0


def new_user(prefix: str = "pyc") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def is_change(item: WatchItem) -> TypeGuard[Response]:
    return isinstance(item, Response) and item.type in CHANGES


def is_synced(item: WatchItem) -> TypeGuard[Response]:
    return isinstance(item, Response) and item.type == Response.TYPE_SYNCED


def change_at(item: WatchItem, *, revision: int = 0, program_id: str | None = None) -> bool:
    """A change at `revision` or later (of `program_id`, if given)."""
    return (
        is_change(item)
        and item.revision >= revision
        and (program_id is None or item.program.id == program_id)
    )


# --- fixtures -------------------------------------------------------------------


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.address, timeout=10) as hershy:
        yield hershy


@pytest.fixture
async def aclient(server: ServerProcess) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.address, timeout=10) as hershy:
        yield hershy


@dataclass
class RestartableHost:
    """`hershy serve --runtime fake` that can be stopped and started again in the same place.

    Tokens are on; the admin's token, made on the first start, is `token`.
    """

    base: Path
    address: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    http_address: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    current: ServerProcess | None = None

    def start(self) -> ServerProcess:
        assert self.current is None or self.current.process.poll() is not None
        stderr_path = self.base / "stderr.log"
        with open(stderr_path, "ab") as stderr:  # both runs' logs, for failure messages
            process = subprocess.Popen(
                [
                    *hershy_command(),
                    "serve",
                    "--runtime",
                    "fake",
                    "--data-dir",
                    str(self.base / "data"),
                    "--grpc-addr",
                    self.address,
                    "--http-addr",
                    self.http_address,
                    "--admin-token-file",
                    str(self.base / "admin.token"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.current = ServerProcess(process, self.address, self.base / "data", stderr_path)
        try:
            wait_until_serving(self.current)
        except BaseException:
            self.current.kill()
            raise
        return self.current

    @property
    def token(self) -> str:
        return (self.base / "admin.token").read_text().strip()

    def restart(self) -> ServerProcess:
        """SIGTERM (a clean exit is required), then the same command again."""
        assert self.current is not None
        self.current.stop_and_check()
        return self.start()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[RestartableHost]:
    restartable = RestartableHost(tmp_path / "hershy-restartable")
    restartable.base.mkdir(parents=True)
    restartable.start()
    try:
        yield restartable
    finally:
        server = restartable.current
        assert server is not None
        try:
            if server.process.poll() is None:
                server.stop_and_check()
        finally:
            server.kill()


# --- helpers for streams ----------------------------------------------------------


class Collected:
    """Items a background consumer put on a queue, read with deadlines."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()
        self.items: list[WatchItem] = []

    def consume(self, items: Iterator[WatchItem]) -> None:
        """Thread body: everything `items` yields, then its exception if it raised."""
        try:
            for item in items:
                self.queue.put(item)
        except BaseException as error:
            self.queue.put(error)

    def until(self, done: Callable[[WatchItem], bool], within: float = PATIENCE) -> WatchItem:
        deadline = time.monotonic() + within
        while True:
            try:
                item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"not seen within {within} s; seen so far: {self.items}")
            if isinstance(item, BaseException):
                raise item
            self.items.append(item)
            if done(item):
                found: WatchItem = item
                return found


async def next_within(stream: AsyncIterator[T], within: float = PATIENCE) -> T:
    return await asyncio.wait_for(anext(stream), within)


def next_in_thread(stream: Iterator[T], within: float = PATIENCE) -> T:
    """`next(stream)` that fails the test instead of blocking forever."""
    # Not `with`: its exit would wait for a thread that is stuck. A stuck
    # call ends when the test's client is closed (fixtures close them).
    pool = futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(next, stream).result(timeout=within)
    finally:
        pool.shutdown(wait=False)


def wait_until_gone(hershy: Client, program: pb.Program) -> None:
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        try:
            hershy.get(program)
        except NotFound:
            return
        time.sleep(0.05)
    pytest.fail(f"{program.name} still exists {PATIENCE} s after delete")


def replayed_revisions(host: RestartableHost, after: int, last: int) -> list[int]:
    """The revisions of the changes the Host itself replays after `after`, up to `last`."""
    revisions: list[int] = []
    with Client(host.address, token=host.token) as check:
        stream = check.watch(resume_revision=after)
        try:
            while not revisions or revisions[-1] < last:
                revisions.append(next_in_thread(stream).revision)
        finally:
            check.close()  # ends the stream (CANCELLED) so its generator can close
    return revisions


def assert_no_gap_no_duplicate(
    items: list[WatchItem], synced: int, host: RestartableHost
) -> list[int]:
    """Changes strictly increasing, consecutive from the snapshot, and what the Host logged."""
    assert not [item for item in items if isinstance(item, Resync)], items
    revisions = [item.revision for item in items if is_change(item)]
    assert revisions, items
    assert revisions == sorted(set(revisions)), f"duplicates or disorder: {revisions}"
    # Every change gets the next Host-wide revision, so watching all programs
    # means seeing every integer after the snapshot's.
    assert revisions == list(range(synced + 1, revisions[-1] + 1)), f"a gap: {revisions}"
    assert replayed_revisions(host, synced, revisions[-1]) == revisions
    return revisions


# --- every call, sync and async -------------------------------------------------------


def test_sync_client_covers_every_call(client: Client) -> None:
    user = new_user()
    program = client.create(user, DOCKERFILE, FILES, resources={"memory_bytes": 64 << 20})
    assert program.state == pb.STATE_CREATED
    assert program.name == f"programs/{program.id}"
    assert program.resources.memory_bytes == 64 << 20
    # Ids, names and Program messages all name the program.
    assert client.get(program.id).id == program.id
    assert client.get(program.name).id == program.id
    assert client.get(program).id == program.id
    assert [p.id for p in client.list(user)] == [program.id]
    assert program.id in {p.id for p in client.list()}

    assert client.start(program.id).state in (pb.STATE_BUILDING, pb.STATE_STARTING)
    ready = client.wait(program, "READY", timeout=10)
    assert ready.state == pb.STATE_READY

    source = client.source(program.name)
    assert source.name == program.name
    assert source.dockerfile == DOCKERFILE
    assert dict(source.src_files) == FILES_AS_SENT
    assert source.build_id == program.build_id

    lines = list(client.logs(program))
    assert any(line.line.endswith("now READY") for line in lines), lines
    host_lines = list(client.logs(program, streams=["host"]))
    assert host_lines
    assert all(line.stream == pb.LOG_STREAM_HOST for line in host_lines)
    assert list(client.logs(program, tail=2)) == lines[-2:]

    restarting = client.restart(program)
    assert restarting.state == pb.STATE_STOPPING
    assert restarting.restart_pending
    again = client.wait(program, pb.STATE_READY, timeout=10)
    assert again.run == ready.run + 1

    assert client.stop(program).state == pb.STATE_STOPPING
    assert client.wait(program, "stopped", timeout=10).state == pb.STATE_STOPPED
    assert client.delete(program).state == pb.STATE_DELETING
    wait_until_gone(client, program)
    assert list(client.list(user)) == []


async def test_async_client_covers_every_call(aclient: AsyncClient) -> None:
    user = new_user()
    program = await aclient.create(user, DOCKERFILE, FILES, resources=pb.Resources(pids=64))
    assert program.state == pb.STATE_CREATED
    assert program.resources.pids == 64
    assert (await aclient.get(program.id)).id == program.id
    assert (await aclient.get(program.name)).id == program.id
    assert [p.id async for p in aclient.list(user)] == [program.id]

    assert (await aclient.start(program)).state in (pb.STATE_BUILDING, pb.STATE_STARTING)
    ready = await aclient.wait(program.id, "STATE_READY", timeout=10)
    assert ready.state == pb.STATE_READY

    source = await aclient.source(program)
    assert source.dockerfile == DOCKERFILE
    assert dict(source.src_files) == FILES_AS_SENT

    lines = [line async for line in aclient.logs(program)]
    assert any(line.line.endswith("now READY") for line in lines), lines
    assert [line async for line in aclient.logs(program, tail=1)] == lines[-1:]
    stdout = [line async for line in aclient.logs(program, streams=[pb.LOG_STREAM_STDOUT])]
    assert all(line.stream == pb.LOG_STREAM_STDOUT for line in stdout)

    assert (await aclient.restart(program)).restart_pending
    assert (await aclient.wait(program, "READY", timeout=10)).run == ready.run + 1
    await aclient.stop(program)
    assert (await aclient.wait(program, "STOPPED", timeout=10)).state == pb.STATE_STOPPED
    assert (await aclient.delete(program)).state == pb.STATE_DELETING
    for _ in range(int(PATIENCE / 0.05)):
        try:
            await aclient.get(program)
        except NotFound:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail(f"{program.name} still exists {PATIENCE} s after delete")
    assert [p async for p in aclient.list(user)] == []


# --- pagination ---------------------------------------------------------------------


def test_sync_list_fetches_every_page(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    user = new_user()
    created = [client.create(user, DOCKERFILE).id for _ in range(5)]
    tokens: list[str] = []
    list_programs = client.stub.ListPrograms

    def counting(request: pb.ListProgramsRequest, **kwargs: Any) -> pb.ListProgramsResponse:
        tokens.append(request.page_token)
        return list_programs(request, **kwargs)

    monkeypatch.setattr(client.stub, "ListPrograms", counting)
    assert [p.id for p in client.list(user, page_size=2)] == created  # creation order
    assert len(tokens) == 3
    assert tokens[0] == ""
    assert all(tokens[1:])
    tokens.clear()
    assert [p.id for p in client.list(user)] == created
    assert len(tokens) == 1  # the default page holds them all


async def test_async_list_fetches_every_page(
    aclient: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = new_user()
    created = [(await aclient.create(user, DOCKERFILE)).id for _ in range(5)]
    tokens: list[str] = []
    list_programs = aclient.stub.ListPrograms

    async def counting(request: pb.ListProgramsRequest, **kwargs: Any) -> pb.ListProgramsResponse:
        tokens.append(request.page_token)
        return await list_programs(request, **kwargs)

    monkeypatch.setattr(aclient.stub, "ListPrograms", counting)
    assert [p.id async for p in aclient.list(user, page_size=2)] == created
    assert len(tokens) == 3


# --- typed errors -------------------------------------------------------------------


def test_sync_errors_are_typed_with_reason_field_and_state(client: Client) -> None:
    program = client.create(new_user(), DOCKERFILE)

    with pytest.raises(InvalidArgument) as bad_user:
        client.create("Not A User", DOCKERFILE)
    assert bad_user.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_user.value.reason == "INVALID_ARGUMENT"
    assert bad_user.value.field == "user_id"
    assert str(bad_user.value).startswith("INVALID_ARGUMENT: user_id:")

    with pytest.raises(InvalidArgument) as bad_file:
        client.create(new_user(), DOCKERFILE, {"../escape": b"x"})
    assert bad_file.value.field is not None
    assert bad_file.value.field.startswith("src_files")

    with pytest.raises(InvalidArgument) as bad_name:
        client.get("programs/")
    assert bad_name.value.field == "name"

    with pytest.raises(NotFound) as missing:
        client.get(UNKNOWN_ID)
    assert missing.value.reason == "PROGRAM_NOT_FOUND"
    assert missing.value.field is None
    assert missing.value.state is None

    with pytest.raises(FailedPrecondition) as wrong_state:
        client.stop(program)
    assert wrong_state.value.reason == "WRONG_STATE"
    assert wrong_state.value.state == "CREATED"
    assert "CREATED" in wrong_state.value.message

    with pytest.raises(DeadlineExceeded) as timed_out:
        client.wait(program, "READY", timeout=0.2)
    assert timed_out.value.reason == "TIMEOUT"  # the Host's answer, not the client's deadline
    assert "CREATED" in timed_out.value.message

    with pytest.raises(RevisionTooOld) as too_old:
        list(client.watch(resume_revision=FUTURE_REVISION))
    assert too_old.value.code == grpc.StatusCode.OUT_OF_RANGE
    assert too_old.value.reason == "REVISION_COMPACTED"
    assert isinstance(too_old.value.oldest_revision, int)

    with pytest.raises(ValueError, match="unknown state"):
        client.wait(program, "SLEEPING")

    with (
        Client(f"127.0.0.1:{free_port()}", timeout=5) as nowhere,
        pytest.raises(Unavailable) as down,
    ):
        nowhere.get(program)
    assert down.value.reason is None  # no Host answered, so no ErrorInfo
    assert isinstance(down.value, HershyError)


async def test_async_errors_are_typed_with_reason_field_and_state(aclient: AsyncClient) -> None:
    program = await aclient.create(new_user(), DOCKERFILE)
    with pytest.raises(InvalidArgument) as bad_user:
        await aclient.create("", DOCKERFILE)
    assert bad_user.value.field == "user_id"
    with pytest.raises(NotFound) as missing:
        await aclient.start(UNKNOWN_ID)
    assert missing.value.reason == "PROGRAM_NOT_FOUND"
    with pytest.raises(FailedPrecondition) as wrong_state:
        await aclient.stop(program)
    assert wrong_state.value.state == "CREATED"
    with pytest.raises(DeadlineExceeded) as timed_out:
        await aclient.wait(program, "READY", timeout=0.2)
    assert timed_out.value.reason == "TIMEOUT"
    with pytest.raises(RevisionTooOld) as too_old:
        _ = [item async for item in aclient.watch(resume_revision=FUTURE_REVISION)]
    assert too_old.value.reason == "REVISION_COMPACTED"
    async with AsyncClient(f"127.0.0.1:{free_port()}", timeout=5) as nowhere:
        with pytest.raises(Unavailable):
            await nowhere.get(program)


# --- the token ------------------------------------------------------------------------


class Recorder:
    """A stand-in Host that records the name and authorization header of each call."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []

    def _record(self, method: str, name: str, context: grpc.ServicerContext) -> None:
        authorization = dict(context.invocation_metadata()).get("authorization")
        self.seen.append((method, name, authorization if isinstance(authorization, str) else None))

    def get_program(
        self, request: pb.GetProgramRequest, context: grpc.ServicerContext
    ) -> pb.Program:
        self._record("GetProgram", request.name, context)
        return pb.Program(name=request.name)

    def watch_programs(
        self, request: pb.WatchProgramsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchProgramsResponse]:
        self._record("WatchPrograms", request.name, context)
        yield Response(type=Response.TYPE_SYNCED, revision=7)

    def handler(self) -> grpc.GenericRpcHandler:
        """Just the two methods; the others answer UNIMPLEMENTED."""
        return grpc.method_handlers_generic_handler(
            "hershy.v1.ProgramService",
            {
                "GetProgram": grpc.unary_unary_rpc_method_handler(
                    self.get_program,
                    request_deserializer=pb.GetProgramRequest.FromString,
                    response_serializer=pb.Program.SerializeToString,
                ),
                "WatchPrograms": grpc.unary_stream_rpc_method_handler(
                    self.watch_programs,
                    request_deserializer=pb.WatchProgramsRequest.FromString,
                    response_serializer=pb.WatchProgramsResponse.SerializeToString,
                ),
            },
        )


@pytest.fixture
def recording() -> Iterator[tuple[Recorder, str]]:
    service = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[service.handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


async def test_every_call_sends_the_bearer_token(recording: tuple[Recorder, str]) -> None:
    service, address = recording
    with Client(address, token="s3cret") as hershy:
        hershy.get("prog-a")
        assert next(iter(hershy.watch(program_id="programs/prog-b"))).revision == 7
    async with AsyncClient(address, token="t0ken") as ahershy:
        await ahershy.get("programs/prog-c")
        async with contextlib.aclosing(ahershy.watch(program_id="prog-d")) as stream:
            assert (await next_within(stream)).revision == 7
    with Client(address) as anonymous:
        anonymous.get("prog-e")
    assert service.seen == [
        ("GetProgram", "programs/prog-a", "Bearer s3cret"),
        ("WatchPrograms", "programs/prog-b", "Bearer s3cret"),
        ("GetProgram", "programs/prog-c", "Bearer t0ken"),
        ("WatchPrograms", "programs/prog-d", "Bearer t0ken"),
        ("GetProgram", "programs/prog-e", None),
    ]


# --- logs -------------------------------------------------------------------------------


def test_sync_logs_follow_streams_new_lines(client: Client, server: ServerProcess) -> None:
    program = client.create(new_user(), DOCKERFILE)
    client.start(program)
    client.wait(program, "READY", timeout=10)
    lines: list[str] = []
    stopper: threading.Thread | None = None
    # A client of its own, so a watchdog can end the stream by closing it.
    with Client(server.address) as follower:
        watchdog = threading.Timer(PATIENCE, follower.close)
        watchdog.start()
        follow = follower.logs(program, follow=True, streams=["host"])
        try:
            for entry in follow:
                lines.append(entry.line)
                if stopper is None and entry.line.endswith("now READY"):
                    # Everything so far was history; what follows is new.
                    stopper = threading.Thread(target=client.stop, args=(program,))
                    stopper.start()
                if entry.line.endswith("now STOPPED"):
                    break
        finally:
            follow.close()
            watchdog.cancel()
    assert stopper is not None
    stopper.join(PATIENCE)
    assert lines[-1].endswith("now STOPPED"), lines
    assert any(line.endswith("now STOPPING") for line in lines), lines


async def test_async_logs_follow_streams_new_lines(aclient: AsyncClient) -> None:
    program = await aclient.create(new_user(), DOCKERFILE)
    await aclient.start(program)
    await aclient.wait(program, "READY", timeout=10)
    async with contextlib.aclosing(aclient.logs(program, follow=True, streams=["HOST"])) as follow:
        line = ""
        while not line.endswith("now READY"):
            line = (await next_within(follow)).line
        await aclient.stop(program)
        while not line.endswith("now STOPPED"):
            line = (await next_within(follow)).line


# --- watch --------------------------------------------------------------------------------


def test_sync_watch_snapshot_changes_and_resume(client: Client) -> None:
    program = client.create(new_user(), DOCKERFILE)
    stream = client.watch(program_id=program.id)
    try:
        snapshot = next_in_thread(stream)
        assert snapshot.type == Response.TYPE_SNAPSHOT
        assert snapshot.program.id == program.id
        synced = next_in_thread(stream)
        assert synced.type == Response.TYPE_SYNCED
        client.start(program)
        change = next_in_thread(stream)
        assert change.type == Response.TYPE_UPDATED
        assert change.event.WhichOneof("kind") == "start_requested"
        assert change.revision > synced.revision
    finally:
        stream.close()
    resumed = client.watch(synced.revision, program.name)
    try:
        assert next_in_thread(resumed) == change  # exactly the later changes, from the first
    finally:
        resumed.close()


async def test_async_watch_snapshot_changes_and_resume(aclient: AsyncClient) -> None:
    program = await aclient.create(new_user(), DOCKERFILE)
    async with contextlib.aclosing(aclient.watch(program_id=program)) as stream:
        assert (await next_within(stream)).type == Response.TYPE_SNAPSHOT
        synced = await next_within(stream)
        assert synced.type == Response.TYPE_SYNCED
        await aclient.start(program)
        change = await next_within(stream)
        assert change.event.WhichOneof("kind") == "start_requested"
    async with contextlib.aclosing(aclient.watch(synced.revision, program.id)) as resumed:
        assert await next_within(resumed) == change


def test_sync_watch_forever_resyncs_from_a_revision_the_host_does_not_know(
    client: Client,
) -> None:
    program = client.create(new_user(), DOCKERFILE)
    stream = client.watch_forever(resume_revision=FUTURE_REVISION, program_id=program.id)
    try:
        marker = next_in_thread(stream)
        assert isinstance(marker, Resync), marker
        assert marker.reason is ResyncReason.REVISION_TOO_OLD
        assert "ahead of this Host" in marker.message
        snapshot = next_in_thread(stream)
        assert isinstance(snapshot, Response)
        assert snapshot.type == Response.TYPE_SNAPSHOT
        assert snapshot.program.id == program.id
        synced = next_in_thread(stream)
        assert is_synced(synced)
        client.start(program)
        change = next_in_thread(stream)
        assert is_change(change)
        assert isinstance(change, Response)
        assert isinstance(synced, Response)
        assert change.revision > synced.revision
    finally:
        stream.close()


async def test_async_watch_forever_resyncs_from_a_revision_the_host_does_not_know(
    aclient: AsyncClient,
) -> None:
    program = await aclient.create(new_user(), DOCKERFILE)
    stream = aclient.watch_forever(resume_revision=FUTURE_REVISION)
    async with contextlib.aclosing(stream):
        marker = await next_within(stream)
        assert isinstance(marker, Resync)
        assert marker.reason is ResyncReason.REVISION_TOO_OLD
        snapshot_ids: set[str] = set()
        while not is_synced(item := await next_within(stream)):
            assert isinstance(item, Response)
            assert item.type == Response.TYPE_SNAPSHOT
            snapshot_ids.add(item.program.id)
        assert program.id in snapshot_ids


def test_watch_forever_raises_what_a_retry_cannot_fix(client: Client) -> None:
    with pytest.raises(NotFound):
        next_in_thread(client.watch_forever(program_id=UNKNOWN_ID))
    with pytest.raises(InvalidArgument) as bad:
        next_in_thread(client.watch_forever(program_id="programs/NOT VALID"))
    assert bad.value.field == "name"


def test_sync_watch_forever_survives_a_host_restart(host: RestartableHost) -> None:
    collected = Collected()
    with (
        Client(host.address, token=host.token, timeout=10, wait_for_ready=True) as control,
        Client(host.address, token=host.token) as watcher,
    ):
        running = control.create(new_user(), DOCKERFILE)  # in the snapshot
        consumer = threading.Thread(target=collected.consume, args=(watcher.watch_forever(),))
        consumer.start()
        try:
            synced = collected.until(is_synced)
            assert running.id in {i.program.id for i in collected.items if isinstance(i, Response)}
            control.start(running)
            ready = control.wait(running, "READY", timeout=10)
            collected.until(lambda item: change_at(item, revision=ready.revision))

            # Running at the restart: the restarted Host changes it (recovery)
            # while nobody watches; the watcher must get those changes too.
            host.restart()
            created = control.create(new_user(), DOCKERFILE)
            collected.until(lambda item: change_at(item, program_id=created.id))
            stopping = control.stop(running)
            collected.until(lambda item: change_at(item, revision=stopping.revision))
        finally:
            watcher.close()  # watch_forever returns
            consumer.join(PATIENCE)
        assert not consumer.is_alive()
    assert is_synced(synced)
    revisions = assert_no_gap_no_duplicate(collected.items, synced.revision, host)
    assert revisions[0] <= ready.revision < created.revision <= revisions[-1]


async def test_async_watch_forever_survives_a_host_restart(host: RestartableHost) -> None:
    items: list[WatchItem] = []
    arrived = asyncio.Condition()

    async def consume(watcher: AsyncClient) -> None:
        async with contextlib.aclosing(watcher.watch_forever()) as stream:
            async for item in stream:
                async with arrived:
                    items.append(item)
                    arrived.notify_all()

    async def until(done: Callable[[WatchItem], bool]) -> WatchItem:
        async with arrived:
            await asyncio.wait_for(arrived.wait_for(lambda: any(map(done, items))), PATIENCE)
            return next(item for item in items if done(item))

    async with AsyncClient(
        host.address, token=host.token, timeout=10, wait_for_ready=True
    ) as control:
        watcher = AsyncClient(host.address, token=host.token)
        task = asyncio.create_task(consume(watcher))
        try:
            synced = await until(is_synced)
            program = await control.create(new_user(), DOCKERFILE)
            await until(lambda item: change_at(item, program_id=program.id))
            # The restart blocks (it polls the new process), so off the loop.
            await asyncio.to_thread(host.restart)
            started = await control.start(program)
            await until(lambda item: change_at(item, revision=started.revision))
        finally:
            await watcher.close()
            await asyncio.wait_for(task, PATIENCE)
    assert is_synced(synced)
    revisions = assert_no_gap_no_duplicate(items, synced.revision, host)
    assert started.revision in revisions


def test_a_host_with_tokens_takes_the_clients_token(host: RestartableHost) -> None:
    with Client(host.address) as anonymous, pytest.raises(Unauthenticated) as missing:
        anonymous.create(new_user(), DOCKERFILE)
    assert missing.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert missing.value.reason == "UNAUTHENTICATED"
    with Client(host.address, token="not-a-token") as wrong, pytest.raises(Unauthenticated):
        next_in_thread(wrong.watch_forever())  # not retried: a retry cannot fix it
    with Client(host.address, token=host.token) as admin:
        program = admin.create(new_user(), DOCKERFILE)
        assert admin.get(program.id).id == program.id


async def test_a_host_with_tokens_takes_the_async_clients_token(host: RestartableHost) -> None:
    async with AsyncClient(host.address) as anonymous:
        with pytest.raises(Unauthenticated):
            await anonymous.get(UNKNOWN_ID)
    async with AsyncClient(host.address, token=host.token) as admin:
        with pytest.raises(NotFound):  # past the token check
            await admin.get(UNKNOWN_ID)


# --- watch_forever's bookkeeping, without a Host ----------------------------------------------


def message(kind: Response.Type.ValueType, revision: int, program_id: str = "prog-a") -> Response:
    return Response(type=kind, revision=revision, program=pb.Program(id=program_id))


def test_cursor_resumes_after_the_last_change_and_skips_repeats() -> None:
    cursor = WatchCursor(None, None, Backoff())
    assert not cursor.request().HasField("resume_revision")  # first: a snapshot
    assert cursor.on_message(message(Response.TYPE_SNAPSHOT, 3)) is not None
    assert cursor.on_message(message(Response.TYPE_SYNCED, 5)) is not None
    assert cursor.request().resume_revision == 5
    assert cursor.on_message(message(Response.TYPE_UPDATED, 6)) is not None
    assert cursor.on_message(message(Response.TYPE_UPDATED, 6)) is None  # never twice
    assert cursor.on_disconnect(None) == (0.2, None)  # nothing to throw away
    assert cursor.request().resume_revision == 6


def test_cursor_turns_a_host_resync_into_a_marker_then_a_fresh_snapshot() -> None:
    cursor = WatchCursor("prog-a", 10, Backoff())
    assert cursor.request().name == "programs/prog-a"
    marker = cursor.on_message(message(Response.TYPE_RESYNC, 0))
    assert isinstance(marker, Resync)
    assert marker.reason is ResyncReason.FELL_BEHIND
    assert not cursor.request().HasField("resume_revision")
    assert cursor.on_message(message(Response.TYPE_SNAPSHOT, 7)) is not None
    assert cursor.on_message(message(Response.TYPE_SYNCED, 12)) is not None
    assert cursor.request().resume_revision == 12


def test_cursor_marks_a_snapshot_broken_off_midway() -> None:
    cursor = WatchCursor(None, None, Backoff())
    cursor.on_message(message(Response.TYPE_SNAPSHOT, 3))
    _delay, marker = cursor.on_disconnect(None)
    assert isinstance(marker, Resync)
    assert marker.reason is ResyncReason.INTERRUPTED
    assert cursor.on_disconnect(None)[1] is None  # said once; the next snapshot is whole


def test_cursor_answers_an_unknown_revision_with_a_resync() -> None:
    cursor = WatchCursor(None, 99, Backoff())
    error = RevisionTooOld(grpc.StatusCode.OUT_OF_RANGE, "revision 99 is ahead")
    marker = cursor.on_revision_too_old(error)
    assert marker.reason is ResyncReason.REVISION_TOO_OLD
    assert marker.message == error.message
    assert not cursor.request().HasField("resume_revision")


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    backoff = Backoff()
    assert [backoff.next() for _ in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 0.2
    with pytest.raises(ValueError, match="backoff"):
        Backoff(0, 1)


# --- the example watcher ---------------------------------------------------------------------

LINE = re.compile(r"^\S+Z  (prog-\w+)\s+([A-Z]+)\s+rev=(\d+)\s+([a-z]+)(/[a-z_]+)?$")


def test_example_watcher_prints_changes_and_survives_a_restart(
    host: RestartableHost, tmp_path: Path
) -> None:
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    with open(tmp_path / "watcher.err", "w+") as stderr:
        # Outside the repository, so only the installed packages can be imported.
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--target", host.address],
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "HERSHY_TOKEN": host.token},
        )
        assert process.stdout is not None
        stdout = process.stdout

        def read() -> None:
            for line in stdout:
                lines.put(line.rstrip("\n"))

        reader = threading.Thread(target=read)
        reader.start()

        def expect(pattern: str) -> str:
            deadline = time.monotonic() + PATIENCE
            while time.monotonic() < deadline:
                try:
                    line = lines.get(timeout=0.1)
                except queue.Empty:
                    continue
                seen.append(line)
                if re.search(pattern, line):
                    return line
            stderr.seek(0)
            pytest.fail(f"no line matching {pattern!r}; got {seen}; stderr:\n{stderr.read()}")

        try:
            expect(r"^# synced at revision \d+$")
            with Client(host.address, token=host.token, timeout=10, wait_for_ready=True) as control:
                program = control.create(new_user(), DOCKERFILE)
                line = expect(rf"{program.id}.*created/created$")
                match = LINE.match(line)
                assert match is not None, line
                assert match.group(2) == "CREATED"
                assert int(match.group(3)) == program.revision

                host.restart()
                control.start(program)
                expect(rf"{program.id}\s+BUILDING .*updated/start_requested$")
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(5)
            finally:
                process.kill()
                reader.join(5)
        stderr.seek(0)
        log = stderr.read()
    assert code == 0, log
    assert "reconnecting" in log  # it noticed the restart and came back
    changes = [LINE.match(line) for line in seen if not line.startswith("#")]
    assert all(changes), seen
    revisions = [int(match.group(3)) for match in changes if match]
    assert revisions == sorted(set(revisions)), seen
