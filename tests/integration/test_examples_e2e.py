"""The examples deployed with the CLI onto a real Host: Docker, gVisor (runsc), tokens on.

For each of examples/simple-counter, watcher-server and trading-long: build
its static binary (its build.sh), `hershy deploy` the folder as a user (with
the token `hershy token create` made), wait for READY, read `/watcher/status`
through the Host's REST proxy, `hershy send` a message and see its effect in
`/watcher/varState` or `/watcher/logs` (the counter moves, the trade happens,
the echo is logged), then `hershy stop`, `hershy restart` (READY again, the
state in /state kept) and `hershy rm --yes --wait`: gone, nothing left in
Docker.

Nothing here skips: without Docker and runsc these tests fail, saying how to
set the machine up.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.e2e.conftest import ServerProcess, free_port, hershy_command, wait_until_serving
from tests.integration.conftest import REPO, containers_of, force_clean, leftovers

pytestmark = pytest.mark.docker

EXAMPLES = REPO / "examples"
GO = "/usr/local/go/bin/go"
CLI_TIMEOUT = 240.0
#: How long a deploy may take to reach READY (the build itself takes about a second).
DEPLOY_TIMEOUT = "180"
#: The CLI's exit codes (hershy --help).
OK, FAILED, NOT_FOUND = 0, 1, 3


@dataclass
class RealHost:
    """A `hershy serve` subprocess on runsc, and the programs tests made on it."""

    server: ServerProcess
    http_address: str
    admin_token: str
    #: The user whose token deploys (made with `hershy token create`).
    user_token: str = ""
    created: list[str] = field(default_factory=list)

    @property
    def http(self) -> str:
        return f"http://{self.http_address}"

    def cli(self, *args: str, token: str | None = None, expect: int | None = OK) -> Run:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERSHY_")}
        env.update(
            HERSHY_TARGET=self.server.address,
            HERSHY_HTTP=self.http,
            HERSHY_TOKEN=token if token is not None else self.user_token,
            NO_COLOR="1",
            COLUMNS="200",
        )
        result = subprocess.run(
            [*hershy_command(), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        run = Run(result.returncode, result.stdout, result.stderr)
        if expect is not None and run.code != expect:
            pytest.fail(
                f"hershy {' '.join(args)}: expected exit {expect}, got {run}\n"
                f"--- Host log (tail)\n{self.server.stderr()[-3000:]}"
            )
        return run

    def watcher(self, program_id: str, route: str) -> dict[str, Any]:
        """GET the program's WatcherAPI `route` through the Host's proxy, with the token."""
        request = urllib.request.Request(
            f"{self.http}/programs/{program_id}/watcher/{route}",
            headers={"Authorization": f"Bearer {self.user_token}"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=10) as answer:
                assert answer.status == 200
                body = answer.read()
        except urllib.error.HTTPError as error:
            pytest.fail(f"GET /watcher/{route} answered {error.code}: {error.read()!r}")
        data: dict[str, Any] = json.loads(body) if body.strip() else {}
        return data

    def variables(self, program_id: str) -> dict[str, Any]:
        variables: dict[str, Any] = self.watcher(program_id, "varState")["variables"]
        return variables


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def build_example(name: str) -> Path:
    """Its build.sh: the static binary `app` the Dockerfile copies (git ignores it)."""
    folder = EXAMPLES / name
    go = shutil.which("go") or GO
    if not os.access(go, os.X_OK):
        pytest.fail(f"no Go toolchain (`go` not on PATH, no {GO}): run scripts/setup.sh")
    env = {**os.environ, "GO": go, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    result = subprocess.run(
        [str(folder / "build.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"{name}/build.sh failed:\n{result.stdout}\n{result.stderr}")
    assert (folder / "app").is_file()
    return folder


def wait_until_http_ready(host: RealHost, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        try:
            with opener.open(f"{host.http}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError as error:
            last = str(error)
        time.sleep(0.1)
    pytest.fail(f"REST shim not ready ({last}); stderr:\n{host.server.stderr()}")


@contextlib.contextmanager
def serving_host(base: Path, *serve_args: str, ready_timeout: int) -> Iterator[RealHost]:
    """`hershy serve` (tokens on) with `serve_args` on free ports; on exit it removes every
    program it made, and the Host must stop cleanly on SIGTERM."""
    base.mkdir(parents=True, exist_ok=True)
    token_file = base / "admin-token"
    stderr_path = base / "stderr.log"
    grpc_address = f"127.0.0.1:{free_port()}"
    http_address = f"127.0.0.1:{free_port()}"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [
                *hershy_command(),
                "serve",
                "--data-dir",
                str(base / "data"),
                "--grpc-addr",
                grpc_address,
                "--http-addr",
                http_address,
                "--admin-token-file",
                str(token_file),
                "--stop-grace",
                "5",
                "--ready-timeout",
                str(ready_timeout),
                *serve_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = ServerProcess(process, grpc_address, base / "data", stderr_path)
    host: RealHost | None = None
    try:
        wait_until_serving(server, timeout=ready_timeout)
        host = RealHost(server, http_address, token_file.read_text().strip())
        wait_until_http_ready(host)
        yield host
    finally:
        try:
            if host is not None:
                for program_id in host.created:
                    host.cli(
                        "rm", program_id, "--yes", "--wait", token=host.admin_token, expect=None
                    )
            if server.process.poll() is None:
                server.stop_and_check(timeout=30)
        finally:
            server.kill()


@contextlib.contextmanager
def real_host(base: Path, client: docker.DockerClient) -> Iterator[RealHost]:
    """`hershy serve` (runsc, tokens on) on free ports; on exit every program it made must
    be gone from Docker, and the Host must stop cleanly on SIGTERM."""
    host: RealHost | None = None
    try:
        with serving_host(base, ready_timeout=60) as host:
            yield host
    finally:
        if host is not None:
            left = {pid: leftovers(client, pid) for pid in host.created}
            for program_id, found in left.items():
                if found:
                    force_clean(client, program_id)
            left = {pid: found for pid, found in left.items() if found}
            assert not left, f"left behind in Docker: {left}"


@pytest.fixture(scope="module")
def host(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[RealHost]:
    with real_host(tmp_path_factory.mktemp("hershy-examples"), docker_client) as running:
        secret = running.cli("token", "create", "examples", token=running.admin_token).stdout
        running.user_token = secret.strip()
        assert running.cli("whoami").stdout.startswith("examples (token ")
        yield running


# --- each example's message, and how to see its effect ---------------------------------------


def simple_counter(host: RealHost, program_id: str) -> Callable[[dict[str, Any]], None]:
    before = host.variables(program_id)["count"]
    reply = host.cli("send", program_id, "add 1000").stdout.strip()
    assert reply.startswith("count="), reply
    after = host.variables(program_id)["count"]
    assert after >= before + 1000, (before, after)
    assert int(reply.removeprefix("count=")) >= before + 1000

    def kept(variables: dict[str, Any]) -> None:
        assert variables["count"] >= after, "the count was reset by the restart"

    return kept


def trading_long(host: RealHost, program_id: str) -> Callable[[dict[str, Any]], None]:
    # Paused, the strategy trades no more: only our buy moves the account.
    assert host.cli("send", program_id, "pause").stdout.strip() == "paused"
    before = host.variables(program_id)
    answer = host.cli("send", program_id, "buy 2", "--json").json()
    assert answer["handled"] is True, answer
    assert answer["reply"].startswith("buy 2 @"), answer
    after = host.variables(program_id)
    assert after["trades"] == before["trades"] + 1, (before, after)
    assert after["position"] == before["position"] + 2, (before, after)
    assert after["lastTrade"]["reason"] == "manual"

    def kept(variables: dict[str, Any]) -> None:
        assert variables["trades"] == after["trades"]
        assert variables["position"] == after["position"]
        assert variables["paused"] is True

    return kept


def watcher_server(host: RealHost, program_id: str) -> Callable[[dict[str, Any]], None]:
    text = "hello from the hershy CLI"
    assert host.cli("send", program_id, text).stdout.strip() == f"echo: {text}"
    logs = host.watcher(program_id, "logs?type=effect&limit=50")
    messages = [entry["Message"] for entry in logs.get("effectLogs", [])]
    assert f"echo: {text}" in messages, messages
    count = host.variables(program_id)["messages"]
    assert count >= 1

    def kept(variables: dict[str, Any]) -> None:
        assert variables["messages"] >= count
        assert variables["lastMessage"] == text

    return kept


EFFECTS: dict[str, Callable[[RealHost, str], Callable[[dict[str, Any]], None]]] = {
    "simple-counter": simple_counter,
    "watcher-server": watcher_server,
    "trading-long": trading_long,
}


@pytest.mark.parametrize("example", list(EFFECTS))
def test_deploy_an_example_with_the_cli(
    host: RealHost, docker_client: docker.DockerClient, example: str
) -> None:
    folder = build_example(example)

    deployed = host.cli("deploy", str(folder), "--timeout", DEPLOY_TIMEOUT)
    program_id = deployed.stdout.strip()
    assert program_id.startswith("prog-"), deployed
    host.created.append(program_id)
    assert "Successfully built" in deployed.stderr  # the build log, live
    assert f"{host.http}/programs/{program_id}/watcher/" in deployed.stderr

    program = host.cli("get", program_id, "--json").json()
    assert program["state"] == "STATE_READY"
    assert program["user_id"] == "examples"
    assert program["runtime"].startswith("runsc")
    assert [c.status for c in containers_of(docker_client, program_id)] == ["running"]

    status = host.watcher(program_id, "status")
    assert status["isRunning"] is True, status
    assert status["watcherID"] == example

    still_kept = EFFECTS[example](host, program_id)

    stopped = host.cli("stop", program_id, "--wait", "--json").json()
    assert stopped["state"] == "STATE_STOPPED"
    assert containers_of(docker_client, program_id) == []
    host.cli("send", program_id, "while stopped", expect=4)

    restarted = host.cli("restart", program_id, "--wait", "--json").json()
    assert restarted["state"] == "STATE_READY"
    assert int(restarted["run"]) == int(program["run"]) + 1
    still_kept(host.variables(program_id))  # /state survived the stop and the restart

    logs = host.cli("logs", program_id, "--stream", "stdout", "--tail", "50").stdout
    assert "stdout " in logs

    deleted = host.cli("rm", program_id, "--yes", "--wait", "--json").json()
    assert deleted["state"] == "STATE_DELETED"
    host.cli("get", program_id, expect=NOT_FOUND)
    assert leftovers(docker_client, program_id) == []
    host.created.remove(program_id)


def test_a_failing_deploy_exits_1_with_the_reason(host: RealHost, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY missing-binary /app\n")
    (tmp_path / "README").write_text("the Dockerfile copies a file that is not here\n")
    run = host.cli("deploy", str(tmp_path), "--timeout", DEPLOY_TIMEOUT, expect=FAILED)
    program_id = next(
        line.split()[1] for line in run.stderr.splitlines() if line.startswith("Created prog-")
    )
    host.created.append(program_id)
    error = run.stderr.strip().splitlines()[-1]
    assert error.startswith(f"Error: {program_id} ended in ERROR: "), run
    assert "missing-binary" in run.stderr, run
    assert host.cli("get", program_id, "--json").json()["state"] == "STATE_ERROR"
    host.cli("rm", program_id, "--yes", "--wait")
    host.created.remove(program_id)
