"""The store across Host restarts, end to end: the real `hershy serve --runtime fake`.

A Watch resumes from a revision before the first of several restarts and gets
every change since, in order, with no gap (gRPC, and the REST shim's SSE for
one program and for all). A store that was emptied next to programs' folders
stops `hershy serve`, which leaves it as it was and makes no admin token.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from tests.e2e.conftest import ServerProcess, free_port, hershy_command, start_server
from tests.e2e.rest_support import RestHost, wait_until_http_ready

#: Crashes (a fake program does not outlive its Host) restart at once, not after 10 s.
OPTIONS = ("--no-auth", "--backoff", "0.1", "0.2")
HOST_RESTARTS = 3
TIMEOUT = 20.0
Kind = pb.WatchProgramsResponse


class Host:
    """One data dir and one pair of addresses, served by one `hershy serve` after another."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.grpc_address = f"127.0.0.1:{free_port()}"
        self.http_address = f"127.0.0.1:{free_port()}"
        self.server: ServerProcess | None = None

    def start(self) -> None:
        self.server = start_server(
            self.base, *OPTIONS, grpc_address=self.grpc_address, http_address=self.http_address
        )
        wait_until_http_ready(RestHost(self.server, self.http_address))

    def stop(self) -> None:
        assert self.server is not None
        self.server.stop_and_check()
        self.server = None

    @contextlib.contextmanager
    def stub(self) -> Iterator[pb_grpc.ProgramServiceStub]:
        with grpc.insecure_channel(self.grpc_address) as channel:
            yield pb_grpc.ProgramServiceStub(channel)


def until(
    stub: pb_grpc.ProgramServiceStub, name: str, state: pb.State.ValueType, restarts: int
) -> pb.Program:
    """Poll until the program is in `state` with `restarts` automatic restarts behind it.

    (Polling, not WaitProgram: just after a Host restart the program may still read
    READY from the store, before the Host finds its container gone.)
    """
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        program = stub.GetProgram(pb.GetProgramRequest(name=name), timeout=5)
        if program.state == state and program.restart_count == restarts:
            return program
        time.sleep(0.05)
    raise AssertionError(f"{name} never reached {pb.State.Name(state)} after {restarts} restarts")


def grpc_replay(
    stub: pb_grpc.ProgramServiceStub, last: int, resume: int, name: str = ""
) -> list[pb.WatchProgramsResponse]:
    """What a Watch resumed after `resume` sends, up to revision `last`."""
    stream = stub.WatchPrograms(
        pb.WatchProgramsRequest(name=name, resume_revision=resume), timeout=TIMEOUT
    )
    messages = []
    try:
        for message in stream:
            messages.append(message)
            if message.revision >= last:
                return messages
    finally:
        stream.cancel()
    raise AssertionError(f"the stream ended before revision {last}: {messages[-1:]}")


def sse_replay(http_address: str, path: str, resume: int, last: int) -> list[dict[str, Any]]:
    """The REST shim's Server-Sent Events after `resume`, up to revision `last`."""
    url = f"http://{http_address}{path}?resume_revision={resume}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    with opener.open(url, timeout=TIMEOUT) as response:
        assert response.status == 200
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                continue
            if line:
                key, _, value = line.partition(": ")
                current[key] = json.loads(value) if key == "data" else value
                continue
            if current:
                events.append(current)
                if int(current.get("id", 0)) >= last:
                    return events
            current = {}
    raise AssertionError(f"the event stream ended before revision {last}: {events[-1:]}")


def summary(messages: list[pb.WatchProgramsResponse]) -> list[tuple[int, str, str, str]]:
    return [
        (m.revision, Kind.Type.Name(m.type), m.program.id, pb.State.Name(m.program.state))
        for m in messages
    ]


def log_end(stub: pb_grpc.ProgramServiceStub) -> int:
    """The Host's latest revision: where a plain Watch's snapshot is SYNCED."""
    stream = stub.WatchPrograms(pb.WatchProgramsRequest(), timeout=TIMEOUT)
    try:
        return next(m.revision for m in stream if m.type == Kind.TYPE_SYNCED)
    finally:
        stream.cancel()


def until_gone(stub: pb_grpc.ProgramServiceStub, name: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            stub.GetProgram(pb.GetProgramRequest(name=name), timeout=5)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} was never deleted")


def test_watch_resumes_from_before_the_first_of_several_host_restarts(tmp_path: Path) -> None:
    host = Host(tmp_path / "host")
    host.start()
    answers: list[pb.Program] = []  # what each call answered: each must be in the replay
    histories: list[list[pb.WatchProgramsResponse]] = []  # each Host's whole log, at its end
    try:
        with host.stub() as stub:
            create = pb.CreateProgramRequest(user_id="alice", dockerfile="FROM scratch\n")
            first = stub.CreateProgram(create, timeout=5)
            second = stub.CreateProgram(create, timeout=5)
            answers += [first, second, stub.StartProgram(pb.StartProgramRequest(name=first.name))]
            until(stub, first.name, pb.STATE_READY, 0)
            resume = first.revision  # before the first restart: the rest must all come back
            histories.append(grpc_replay(stub, log_end(stub), 0))
        for restart in range(1, HOST_RESTARTS + 1):
            host.stop()
            host.start()
            with host.stub() as stub:
                # The fake runtime's container died with its Host: a crash, then a restart.
                until(stub, first.name, pb.STATE_READY, restart)
                if restart == 1:
                    answers.append(stub.StartProgram(pb.StartProgramRequest(name=second.name)))
                until(stub, second.name, pb.STATE_READY, restart - 1)
                if restart == HOST_RESTARTS:
                    answers.append(stub.StopProgram(pb.StopProgramRequest(name=second.name)))
                    answers.append(stub.DeleteProgram(pb.DeleteProgramRequest(name=first.name)))
                    until(stub, second.name, pb.STATE_STOPPED, restart - 1)
                    until_gone(stub, first.name)
                histories.append(grpc_replay(stub, log_end(stub), 0))
        with host.stub() as stub:
            last = log_end(stub)
            everything = grpc_replay(stub, last, 0)
            replay = grpc_replay(stub, last, resume)
            first_last = last_of(everything, first.id)
            of_first = grpc_replay(stub, first_last, resume, first.name)
        sse_all = sse_replay(host.http_address, "/events", resume, last)
        sse_first = sse_replay(
            host.http_address, f"/programs/{first.id}/events", resume, first_last
        )
    finally:
        if host.server is not None:
            host.stop()

    # Every change since the beginning, in order, no gap, across every restart.
    assert [m.revision for m in everything] == list(range(1, last + 1)), summary(everything)
    assert replay == everything[resume:]
    for history in histories:
        assert everything[: len(history)] == history, "an earlier Host's log changed"
    by_revision = {m.revision: m for m in everything}
    for answer in answers:
        assert by_revision[answer.revision].program == answer
    kinds = [Kind.Type.Name(m.type) for m in everything]
    assert kinds[:2] == ["TYPE_CREATED", "TYPE_CREATED"]
    crashes = [m for m in everything if m.event.WhichOneof("kind") == "container_exited"]
    assert len(crashes) == HOST_RESTARTS + HOST_RESTARTS - 1  # the first's, and the second's
    assert everything[-1].program.state in (pb.STATE_STOPPED, pb.STATE_DELETED)
    assert len(histories) == HOST_RESTARTS + 1
    # One program's stream: exactly its changes, to its deletion.
    assert of_first == [m for m in replay if m.program.id == first.id]
    assert of_first[-1].type == Kind.TYPE_DELETED
    # The REST shim's streams say the same.
    assert [int(e["id"]) for e in sse_all] == list(range(resume + 1, last + 1))
    assert [(e["event"], e["data"]["program_id"], e["data"]["revision"]) for e in sse_all] == [
        (Kind.Type.Name(m.type).removeprefix("TYPE_").lower(), m.program.id, m.revision)
        for m in replay
    ]
    assert [int(e["id"]) for e in sse_first] == [m.revision for m in of_first]
    assert sse_first[-1]["event"] == "deleted"


def last_of(messages: list[pb.WatchProgramsResponse], program_id: str) -> int:
    return max(m.revision for m in messages if m.program.id == program_id)


def test_serve_refuses_an_emptied_store_and_leaves_it_as_it_was(tmp_path: Path) -> None:
    base = tmp_path / "host"
    server = start_server(base)
    try:
        with grpc.insecure_channel(server.address) as channel:
            pb_grpc.ProgramServiceStub(channel).CreateProgram(
                pb.CreateProgramRequest(user_id="alice", dockerfile="FROM scratch\n"), timeout=5
            )
    finally:
        server.stop_and_check()
    store = server.data_dir / "hershy.db"
    store.write_bytes(b"")  # truncated to nothing, e.g. by a full disk or a bad copy
    for side in ("hershy.db-wal", "hershy.db-shm"):
        (server.data_dir / side).unlink(missing_ok=True)
    before = store.stat()
    listing = sorted(path.name for path in server.data_dir.iterdir())
    token_file = base / "admin.token"
    result = subprocess.run(
        [
            *hershy_command(),
            "serve",
            "--runtime",
            "fake",
            "--data-dir",
            str(server.data_dir),
            "--grpc-addr",
            f"127.0.0.1:{free_port()}",
            "--http-addr",
            f"127.0.0.1:{free_port()}",
            "--admin-token-file",
            str(token_file),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0, result
    assert f"Error: the store {store} is empty (0 bytes)" in result.stderr
    assert "holds 1 entries in" in result.stderr
    assert "Restore" in result.stderr
    after = store.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )
    assert sorted(path.name for path in server.data_dir.iterdir()) == listing
    assert not token_file.exists()
    assert "admin's API token" not in result.stderr
