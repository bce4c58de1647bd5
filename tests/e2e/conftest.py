"""End-to-end fixtures: the real `hershy serve --runtime fake` console script as a subprocess."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hershy.v1 import program_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from hershy.v1.program_pb2_grpc import ProgramServiceAsyncStub

SERVICE = "hershy.v1.ProgramService"
#: How long a server may take to report SERVING (the console script imports grpc).
STARTUP_TIMEOUT = 20.0
#: Graceful shutdown is a requirement: SIGTERM must end the process, with 0, this fast.
SHUTDOWN_TIMEOUT = 6.0
#: The client's limits match the server's (sources can be tens of MiB).
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


def hershy_command() -> list[str]:
    """The installed console script (the entry point users run)."""
    script = shutil.which("hershy")
    if script is None:
        pytest.fail("the `hershy` console script is not on PATH: pip install -e .")
    return [script]


def free_port() -> int:
    """A port nobody listens on right now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    """A running `hershy serve` and where its stderr goes."""

    process: subprocess.Popen[bytes]
    address: str
    data_dir: Path
    stderr_path: Path
    #: Where it serves REST ("" when not known).
    http_address: str = ""
    #: True once SIGTERM was sent: a second one could kill the process mid-shutdown.
    signalled: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        """What the server wrote to stderr so far (its log), for failure messages."""
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError as error:
            return f"<stderr unavailable: {error}>"
        return text[-8000:]

    def kill(self) -> None:
        """Last resort: make sure nothing is left behind."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def sigterm(self) -> None:
        """Ask the server to shut down (once)."""
        if not self.signalled and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.signalled = True

    def terminate(self, timeout: float = SHUTDOWN_TIMEOUT) -> int:
        """SIGTERM (unless sent already), then the exit code.

        Fails the test (and kills the process) if it takes longer than `timeout`.
        """
        self.sigterm()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(
                f"hershy serve (pid {self.pid}) did not exit within {timeout} s of SIGTERM; "
                f"stderr:\n{self.stderr()}"
            )

    def stop_and_check(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """SIGTERM and assert a clean exit (code 0) within `timeout` seconds."""
        code = self.terminate(timeout)
        assert code == 0, f"hershy serve exited with {code} after SIGTERM; stderr:\n{self.stderr()}"


def wait_until_serving(server: ServerProcess, timeout: float = STARTUP_TIMEOUT) -> None:
    """Poll the gRPC health check until the ProgramService reports SERVING."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            code = server.process.poll()
            if code is not None:
                pytest.fail(
                    f"hershy serve exited with {code} before serving; stderr:\n{server.stderr()}"
                )
            try:
                response = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=0.5)
            except grpc.RpcError as error:
                last = f"{error.code().name}: {error.details()}"
            else:
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            time.sleep(0.05)
    server.kill()
    pytest.fail(
        f"hershy serve on {server.address} did not report SERVING within {timeout} s "
        f"(last health answer: {last}); stderr:\n{server.stderr()}"
    )


def start_server(
    base: Path, *options: str, grpc_address: str = "", http_address: str = ""
) -> ServerProcess:
    """Start `hershy serve --runtime fake` and wait until it serves.

    On free ports unless given (the same `base` and addresses again: the same
    Host, restarted). Without `options` tokens are off (`--no-auth`); pass
    options (e.g. `--admin-token-file`) to run it with tokens on.
    """
    base.mkdir(parents=True, exist_ok=True)
    data_dir = base / "data"
    stderr_path = base / "stderr.log"
    address = grpc_address or f"127.0.0.1:{free_port()}"
    http_address = http_address or f"127.0.0.1:{free_port()}"
    with open(stderr_path, "ab") as stderr:
        process = subprocess.Popen(
            [
                *hershy_command(),
                "serve",
                "--runtime",
                "fake",
                "--data-dir",
                str(data_dir),
                "--grpc-addr",
                address,
                "--http-addr",
                http_address,
                # Tokens have tests of their own (test_auth.py); these test everything else.
                *(options or ("--no-auth",)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = ServerProcess(process, address, data_dir, stderr_path, http_address)
    try:
        wait_until_serving(server)
    except BaseException:
        server.kill()
        raise
    return server


@contextlib.contextmanager
def running_server(base: Path) -> Iterator[ServerProcess]:
    """A server for the block; on exit it must shut down cleanly on SIGTERM."""
    server = start_server(base)
    try:
        yield server
    finally:
        try:
            if server.process.poll() is None:
                server.stop_and_check()
        finally:
            server.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server shared by a module's tests (fast); its shutdown is checked at the end."""
    with running_server(tmp_path_factory.mktemp("hershy-shared")) as process:
        yield process


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own, e.g. to shut it down; checked like the shared one if left up."""
    with running_server(tmp_path / "hershy-own") as process:
        yield process


@pytest.fixture
async def channel(server: ServerProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as chan:
        yield chan


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for the REST shim and the WatcherAPI proxy (rest_support's)."""
    from tests.e2e.rest_support import client_session  # it imports this module

    async with client_session() as session:
        yield session


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> ProgramServiceAsyncStub:
    return pb_grpc.ProgramServiceStub(channel)
