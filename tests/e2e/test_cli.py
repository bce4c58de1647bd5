"""The `hershy` CLI end to end: the real console script, run as subprocesses, against a
real `hershy serve --runtime fake` with tokens on (the admin's token from
--admin-token-file; users' tokens made with `hershy token create`).

It checks what scripts rely on: what goes to stdout (results, `--json`) and
to stderr (progress, one-line errors), and the exit codes.
"""

from __future__ import annotations

import contextlib
import errno
import http.server
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from hershy.entrypoints.cli import RUNTIMES
from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from tests.e2e.conftest import (
    ServerProcess,
    free_port,
    hershy_command,
    start_server,
)

#: Exit codes (hershy --help).
OK, FAILED, USAGE, NOT_FOUND, WRONG_STATE, AUTH, UNREACHABLE = range(7)
CLI_TIMEOUT = 30.0

#: The folder `deploy` sends, and what its .dockerignore must leave of it.
DOCKERFILE = 'FROM scratch\nCOPY . /app\nENTRYPOINT ["/app/app.bin"]\n'
DOCKERIGNORE = """\
# build outputs and secrets stay home
secret.txt
cache/
*.log
!keep.log
docs/**/*.tmp
  # a comment-looking line with leading spaces is a pattern: matches nothing here
"""
BINARY = bytes(range(256)) * 4 + b"\x00\xff\xfe\r\n"
FILES: dict[str, bytes] = {
    "app.bin": BINARY,
    "secret.txt": b"do not send\n",
    "cache/big": b"x" * 1000,
    "cache/sub/deeper": b"y",
    "a.log": b"log\n",
    "keep.log": b"kept\n",
    "docs/readme.md": b"# docs\n",
    "docs/a/b/c.tmp": b"tmp",
    "sub/nested/data.json": b'{"k": 1}\n',
}
EXPECTED = {".dockerignore", "app.bin", "keep.log", "docs/readme.md", "sub/nested/data.json"}


@dataclass
class CliHost:
    server: ServerProcess
    http_address: str
    admin_token: str

    @property
    def target(self) -> str:
        return self.server.address

    @property
    def http(self) -> str:
        return f"http://{self.http_address}"


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def cli_env(host: CliHost | None, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERSHY_")}
    env.update(PYTHONUNBUFFERED="1", COLUMNS="200", NO_COLOR="1")
    if host is not None:
        env.update(HERSHY_TARGET=host.target, HERSHY_HTTP=host.http)
    if token is not None:
        env["HERSHY_TOKEN"] = token
    return env


def cli(host: CliHost | None, token: str | None, *args: str, expect: int | None = OK) -> Run:
    """Run `hershy ARGS` with the Host and token in the environment; check the exit code."""
    result = subprocess.run(
        [*hershy_command(), *args],
        env=cli_env(host, token),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    run = Run(result.returncode, result.stdout, result.stderr)
    if expect is not None:
        assert run.code == expect, f"hershy {' '.join(args)}: expected exit {expect}, got {run}"
    return run


def one_line_error(run: Run) -> str:
    """Errors are one line on stderr (`Error: ...`)."""
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines, f"no error shown: {run}"
    assert lines[-1].startswith("Error: "), run
    return lines[-1]


def wait_until_http_ready(host: CliHost, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{host.http}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError as error:
            last = str(error)
        time.sleep(0.05)
    pytest.fail(f"REST shim not ready ({last}); stderr:\n{host.server.stderr()}")


@contextlib.contextmanager
def running_host(
    base: Path, grpc_address: str | None = None, http_address: str | None = None
) -> Iterator[CliHost]:
    """`hershy serve --runtime fake` with tokens on; the admin's token from the file.

    Started again on the same `base` (and addresses), it is the same Host: same
    programs, same tokens.
    """
    token_file = base / "admin-token"
    server = start_server(
        base,
        "--admin-token-file",
        str(token_file),
        grpc_address=grpc_address or "",
        http_address=http_address or "",
    )
    try:
        host = CliHost(server, server.http_address, token_file.read_text().strip())
        wait_until_http_ready(host)
        yield host
    finally:
        try:
            if server.process.poll() is None:
                server.stop_and_check()
        finally:
            server.kill()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliHost]:
    with running_host(tmp_path_factory.mktemp("hershy-cli")) as running:
        yield running


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("deploy-me")
    (base / "Dockerfile").write_text(DOCKERFILE)
    (base / ".dockerignore").write_text(DOCKERIGNORE)
    for relative, content in FILES.items():
        path = base / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return base


def new_token(host: CliHost, user: str) -> str:
    """`hershy token create USER`: the secret alone on stdout."""
    run = cli(host, host.admin_token, "token", "create", user)
    secret = run.stdout.strip()
    assert secret, run
    assert "\n" not in secret, run
    assert "tok-" in run.stderr, run  # the id, for `token revoke`
    return secret


def source_files(host: CliHost, program_id: str) -> pb.ProgramSource:
    """GetProgramSource, with the admin's token."""
    with grpc.insecure_channel(host.target) as channel:
        source: pb.ProgramSource = pb_grpc.ProgramServiceStub(channel).GetProgramSource(
            pb.GetProgramSourceRequest(name=f"programs/{program_id}"),
            metadata=(("authorization", f"Bearer {host.admin_token}"),),
            timeout=10,
        )
        return source


def get_json(host: CliHost, token: str, program_id: str) -> dict[str, Any]:
    data: dict[str, Any] = cli(host, token, "get", program_id, "--json").json()
    return data


# --- no Host needed ---------------------------------------------------------------------------


def test_the_runtime_choices_are_the_hosts() -> None:
    from hershy.bootstrap import Runtime

    assert tuple(runtime.value for runtime in Runtime) == RUNTIMES


def test_help_lists_the_commands_and_exit_codes() -> None:
    run = cli(None, None, "--help")
    for command in (
        "serve",
        "doctor",
        "deploy",
        "ls",
        "get",
        "start",
        "stop",
        "restart",
        "rm",
        "logs",
        "watch",
        "send",
        "token",
        "whoami",
    ):
        assert f"  {command} " in run.stdout, command
    assert "Exit codes" in run.stdout
    for code in range(7):
        assert f"  {code}  " in run.stdout
    assert "Exit codes: 0 ok" in cli(None, None, "deploy", "--help").stdout
    assert "Exit codes: 0 ok" in cli(None, None, "token", "create", "--help").stdout


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    cli(None, None, "ls", "--bogus", expect=USAGE)
    cli(None, None, "get", expect=USAGE)  # PROGRAM missing
    cli(None, None, "logs", "prog-x", "--stream", "nope", expect=USAGE)
    cli(None, None, "deploy", str(tmp_path / "missing"), expect=USAGE)
    no_dockerfile = cli(None, None, "deploy", str(tmp_path), expect=USAGE)
    assert "no Dockerfile" in no_dockerfile.stderr
    # Not interactive and no --yes: refuse rather than delete unasked.
    run = cli(None, None, "rm", "prog-x", expect=USAGE)
    assert "--yes" in run.stderr
    cli(None, "bad token with spaces", "ls", expect=USAGE)


def test_an_unreachable_host_exits_6() -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    run = cli(None, "tok", "--target", nowhere, "ls", expect=UNREACHABLE)
    assert nowhere in one_line_error(run)
    cli(None, "tok", "ls", "--target", nowhere, expect=UNREACHABLE)  # the option on the command
    run = cli(
        None, "tok", "--http", f"http://{nowhere}", "send", "prog-x", "hi", expect=UNREACHABLE
    )
    assert "REST API" in one_line_error(run)


# --- tokens -----------------------------------------------------------------------------------


def test_tokens_and_whoami(host: CliHost) -> None:
    admin = cli(host, host.admin_token, "whoami", "--json").json()
    assert admin["admin"] is True
    assert admin["user_id"] == "admin"
    assert "secret" not in admin

    bob = new_token(host, "bob")
    assert cli(host, bob, "whoami").stdout.startswith("bob (token tok-")
    me = cli(host, bob, "whoami", "--json").json()
    assert me["user_id"] == "bob"
    assert "admin" not in me  # false: left out, as MessageToDict does

    listed = cli(host, host.admin_token, "token", "list", "--json").json()["tokens"]
    assert me["id"] in [token["id"] for token in listed]
    assert all("secret" not in token for token in listed)
    table = cli(host, host.admin_token, "token", "list").stdout
    assert me["id"] in table

    # Only the admin manages tokens; a wrong, missing or malformed token is refused.
    run = cli(host, bob, "token", "list", expect=AUTH)
    assert "admin" in one_line_error(run)
    cli(host, bob, "token", "create", "mallory", expect=AUTH)
    bogus = "hsy_not-a-real-token"
    run = cli(host, bogus, "ls", expect=AUTH)
    assert bogus not in run.stderr + run.stdout, "the token must never be printed"
    cli(host, None, "whoami", expect=AUTH)
    # A token for a malformed user id: the Host says what is wrong (usage).
    cli(host, host.admin_token, "token", "create", "Not A User!", expect=USAGE)
    cli(host, host.admin_token, "token", "revoke", "tok-doesnotexist", expect=NOT_FOUND)


def test_a_revoked_token_exits_5(host: CliHost) -> None:
    secret = new_token(host, "dave")
    token_id = cli(host, secret, "whoami", "--json").json()["id"]
    cli(host, secret, "ls")
    revoked = cli(host, host.admin_token, "token", "revoke", token_id, "--json").json()
    assert revoked["id"] == token_id
    assert "revoke_time" in revoked
    for args in (("whoami",), ("ls",), ("get", "prog-000000000000")):
        run = cli(host, secret, *args, expect=AUTH)
        assert "revoked" in one_line_error(run)


# --- deploy and the lifecycle -----------------------------------------------------------------


def test_deploy_honours_dockerignore_and_sends_binaries(host: CliHost, folder: Path) -> None:
    bob = new_token(host, "bob")
    run = cli(host, bob, "deploy", str(folder))
    program_id = run.stdout.strip()
    assert program_id.startswith("prog-"), run
    assert "\n" not in program_id, run
    # Progress and the live build log on stderr; the proxy URL with it.
    assert "fake build: started" in run.stderr, run
    assert "READY" in run.stderr
    assert f"{host.http}/programs/{program_id}/watcher/" in run.stderr
    assert "4 left out by .dockerignore" in run.stderr, run  # secret.txt, cache/, a.log, c.tmp

    source = source_files(host, program_id)
    assert set(source.src_files) == EXPECTED
    assert source.src_files["app.bin"] == BINARY
    assert source.src_files["sub/nested/data.json"] == FILES["sub/nested/data.json"]
    assert source.src_files[".dockerignore"] == DOCKERIGNORE.encode()
    assert source.dockerfile == DOCKERFILE

    program = get_json(host, bob, program_id)
    assert program["state"] == "STATE_READY"
    assert program["user_id"] == "bob"
    cli(host, bob, "rm", program_id, "--yes", "--wait")


def test_deploy_json_and_no_wait(host: CliHost, folder: Path) -> None:
    erin = new_token(host, "erin")
    program = cli(host, erin, "deploy", str(folder), "--json").json()
    assert program["state"] == "STATE_READY"
    assert program["user_id"] == "erin"
    started = cli(host, erin, "deploy", str(folder), "--no-wait").stdout.strip()
    assert started.startswith("prog-")
    cli(host, erin, "rm", program["id"], "--yes")
    cli(host, erin, "rm", started, "--yes")


def test_the_admin_deploys_for_a_named_user(host: CliHost, folder: Path) -> None:
    run = cli(host, host.admin_token, "deploy", str(folder), expect=USAGE)
    assert "--user" in one_line_error(run)
    program_id = cli(host, host.admin_token, "deploy", str(folder), "--user", "frank").stdout
    assert get_json(host, host.admin_token, program_id.strip())["user_id"] == "frank"
    # A user cannot deploy for someone else.
    grace = new_token(host, "grace")
    run = cli(host, grace, "deploy", str(folder), "--user", "frank", expect=AUTH)
    assert "frank" in one_line_error(run)
    cli(host, host.admin_token, "rm", program_id.strip(), "--yes", "--wait")


def test_lifecycle_ls_get_logs_and_exit_codes(host: CliHost, folder: Path) -> None:
    owner = new_token(host, "henry")
    other = new_token(host, "ivy")
    program_id = cli(host, owner, "deploy", str(folder)).stdout.strip()

    listed = cli(host, owner, "ls", "--json").json()
    assert [p["id"] for p in listed["programs"]] == [program_id]
    assert listed["total_size"] == 1
    table = cli(host, owner, "ls").stdout
    assert program_id in table
    assert "READY" in table
    assert "henry" in table
    assert program_id in [
        p["id"] for p in cli(host, host.admin_token, "ls", "--json").json()["programs"]
    ]
    shown = cli(host, owner, "get", program_id).stdout
    assert "READY" in shown
    assert f"/programs/{program_id}/watcher/" in shown

    # Wrong state: 4, naming the state.
    run = cli(host, owner, "start", program_id, expect=WRONG_STATE)
    assert "READY" in one_line_error(run)
    stopped = cli(host, owner, "stop", program_id, "--wait", "--json").json()
    assert stopped["state"] == "STATE_STOPPED"
    cli(host, owner, "stop", program_id, expect=WRONG_STATE)
    restarted = cli(host, owner, "restart", program_id, "--wait", "--json").json()
    assert restarted["state"] == "STATE_READY"
    assert int(restarted["run"]) == 2
    assert cli(host, owner, "stop", program_id).stdout.split()[0] == program_id
    started = cli(host, owner, "start", program_id, "--wait").stdout.split()
    assert started == [program_id, "READY"]

    # Logs: every stream, prefixed; filtered; tailed; JSON lines.
    logs = cli(host, owner, "logs", program_id).stdout
    assert "build  fake build: started" in logs
    assert "stdout fake program: ready" in logs
    assert "stderr fake program: no errors" in logs
    assert "host   " in logs
    entries = cli(host, owner, "logs", program_id, "--stream", "stdout", "--json").json_lines()
    assert len(entries) == 3  # one a run
    assert {entry["stream"] for entry in entries} == {"LOG_STREAM_STDOUT"}
    tail = cli(host, owner, "logs", program_id, "--tail", "2", "--stream", "build").stdout
    assert tail.splitlines() == ["build  fake build: started", "build  fake build: done"]

    # Another user's token sees nothing: not found (3), never "forbidden".
    for args in (
        ("get", program_id),
        ("stop", program_id),
        ("logs", program_id),
        ("rm", program_id, "--yes"),
    ):
        run = cli(host, other, *args, expect=NOT_FOUND)
        assert "not found" in one_line_error(run)
    assert cli(host, other, "ls", "--json").json().get("programs", []) == []
    cli(host, other, "send", program_id, "hi", expect=NOT_FOUND)

    # Not found at all; a malformed id is a usage error.
    cli(host, owner, "get", "prog-000000000000", expect=NOT_FOUND)
    cli(host, owner, "get", "programs/../etc", expect=USAGE)

    deleted = cli(host, owner, "rm", program_id, "--yes", "--wait", "--json").json()
    assert deleted["state"] == "STATE_DELETED"
    cli(host, owner, "get", program_id, expect=NOT_FOUND)
    cli(host, owner, "rm", program_id, "--yes", expect=NOT_FOUND)


def lines_until(
    process: subprocess.Popen[str], done: Callable[[str], bool], timeout: float = 15.0
) -> list[str]:
    """The process's stdout lines up to the first `done` accepts (killed past `timeout`)."""
    assert process.stdout is not None
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    lines: list[str] = []
    try:
        while line := process.stdout.readline():
            lines.append(line)
            if done(line):
                return lines
    finally:
        watchdog.cancel()
    raise AssertionError(f"no such line within {timeout} s (exit {process.wait()}): {lines}")


def test_watch_and_follow_end_when_the_program_is_deleted(host: CliHost, folder: Path) -> None:
    owner = new_token(host, "jack")
    program_id = cli(host, owner, "deploy", str(folder)).stdout.strip()
    env = cli_env(host, owner)
    watch = subprocess.Popen(
        [*hershy_command(), "watch", program_id, "--json"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    follow = subprocess.Popen(
        [*hershy_command(), "logs", program_id, "-f", "--stream", "host"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    everything = subprocess.Popen(
        [*hershy_command(), "watch"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())  # the snapshot: it is watching now
        assert first["type"] == "TYPE_SNAPSHOT"
        assert first["program"]["state"] == "STATE_READY"
        # The other two must be following too before anything changes: a reader that
        # starts late (a loaded machine) would begin after the deletion and miss it.
        followed = lines_until(follow, lambda line: line.startswith("host "))  # the deploy's
        shown = lines_until(everything, lambda line: "-- synced at revision" in line)
        cli(host, owner, "stop", program_id, "--wait")
        cli(host, owner, "rm", program_id, "--yes", "--wait")
        out, errors = watch.communicate(timeout=15)
        assert watch.returncode == OK, errors
        messages = [first, *(json.loads(line) for line in out.splitlines())]
        states = [m["program"]["state"] for m in messages if "program" in m]
        for state in ("STATE_STOPPING", "STATE_STOPPED", "STATE_DELETING", "STATE_DELETED"):
            assert state in states
        assert messages[1]["type"] == "TYPE_SYNCED"
        assert messages[-1]["type"] == "TYPE_DELETED"

        out, errors = follow.communicate(timeout=15)
        assert follow.returncode == OK, errors
        out = "".join(followed) + out
        assert "host   StopRequested: now STOPPING" in out
        assert "host   DeleteRequested: now DELETING" in out

        # The unfiltered watch keeps going until interrupted: once it has shown the
        # deletion, Ctrl-C ends it quietly.
        shown += lines_until(everything, lambda line: line.split()[1:3] == ["DELETED", program_id])
        everything.send_signal(signal.SIGINT)
        out, errors = everything.communicate(timeout=15)
        assert everything.returncode == OK, errors
        changes = [line.split() for line in [*shown, *out.splitlines()]]
        assert any(line[1:3] == ["DELETED", program_id] for line in changes if len(line) > 2), out
    finally:
        for process in (watch, follow, everything):
            if process.poll() is None:
                process.kill()
                process.wait()


# --- send: through the Host's proxy to a WatcherAPI -------------------------------------------


class FakeWatcherApi(http.server.BaseHTTPRequestHandler):
    """Plays a program's WatcherAPI on its published port (the fake runtime runs nothing)."""

    received: list[tuple[dict[str, Any], str | None]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append((body, self.headers.get("Authorization")))
        answer = {"status": "message sent", "handled": True, "reply": f"echo: {body['content']}"}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def watcher_on(port: int) -> Iterator[list[tuple[dict[str, Any], str | None]]]:
    received: list[tuple[dict[str, Any], str | None]] = []
    handler = type("Handler", (FakeWatcherApi,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


def test_send_goes_through_the_proxy(host: CliHost, folder: Path) -> None:
    owner = new_token(host, "kate")
    # Another Host on this machine may hold a program's port: take the next program.
    for _ in range(20):
        program_id = cli(host, owner, "deploy", str(folder)).stdout.strip()
        port = int(get_json(host, owner, program_id)["proxy_target"].rpartition(":")[2])
        watcher = watcher_on(port)
        try:
            received = watcher.__enter__()
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            cli(host, owner, "rm", program_id, "--yes")
            continue
        break
    else:
        pytest.fail("no free WatcherAPI port in 20 programs")
    try:
        run = cli(host, owner, "send", program_id, "hello there")
        assert run.stdout.strip() == "echo: hello there"
        answer = cli(host, owner, "send", program_id, "again", "--json").json()
        assert answer == {"status": "message sent", "handled": True, "reply": "echo: again"}
        # The program got the message, and never the caller's token.
        assert received == [({"content": "hello there"}, None), ({"content": "again"}, None)]
        # Stopped: the WatcherAPI is not reachable now (wrong state).
        cli(host, owner, "stop", program_id, "--wait")
        run = cli(host, owner, "send", program_id, "late", expect=WRONG_STATE)
        assert "stopped" in one_line_error(run).lower()
        cli(host, None, "send", program_id, "who?", expect=AUTH)
    finally:
        watcher.__exit__(None, None, None)
        cli(host, owner, "rm", program_id, "--yes", "--wait")


def test_watch_survives_a_host_restart(tmp_path: Path, folder: Path) -> None:
    base = tmp_path / "host"
    with running_host(base) as first:
        admin = first.admin_token
        addresses = (first.target, first.http_address)
        watch = subprocess.Popen(
            [*hershy_command(), "watch", "--json"],
            env=cli_env(first, admin),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert watch.stdout is not None
        try:
            assert json.loads(watch.stdout.readline())["type"] == "TYPE_SYNCED"  # nothing yet
            before = cli(first, admin, "deploy", str(folder), "--user", "lena").stdout.strip()
            while True:  # the new program's changes, up to READY
                message = json.loads(watch.stdout.readline())
                last_revision = int(message["revision"])
                if message["program"]["state"] == "STATE_READY":
                    assert message["program"]["id"] == before
                    break
        except BaseException:
            watch.kill()
            raise
    # The Host is down (SIGTERM, exit 0 checked); the watch waits for it.
    try:
        time.sleep(0.5)
        assert watch.poll() is None, watch.stderr.read() if watch.stderr else ""
        with running_host(base, *addresses) as second:
            after = cli(second, admin, "deploy", str(folder), "--user", "lena").stdout.strip()
            seen: list[dict[str, Any]] = []
            while not any(
                m.get("program", {}).get("id") == after and m["program"]["state"] == "STATE_READY"
                for m in seen
            ):
                seen.append(json.loads(watch.stdout.readline()))
            # Resumed after the last change seen: no snapshot again, no change twice.
            # (The first program changes too: the fake runtime's containers do not
            # outlive the Host, so it is reconciled as crashed.)
            assert all(m["type"] in ("TYPE_CREATED", "TYPE_UPDATED") for m in seen), seen
            revisions = [int(m["revision"]) for m in seen]
            assert revisions == sorted(set(revisions)), revisions
            assert revisions[0] > last_revision
            assert any(m["type"] == "TYPE_CREATED" and m["program"]["id"] == after for m in seen)
            watch.send_signal(signal.SIGINT)
            _, errors = watch.communicate(timeout=15)
            assert watch.returncode == OK, errors
            assert "reconnecting" in errors  # said on stderr, stdout stays JSON
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()


def test_deploy_takes_health_settings_and_get_and_ls_show_health(
    host: CliHost, folder: Path
) -> None:
    gina = new_token(host, "gina")
    options = ["--restart", "on-failure", "--max-restarts", "3", "--restart-window", "60"]
    options += ["--stop-signal", "sigint", "--stop-grace", "4", "--liveness-grace", "12"]
    options += ["--ready-path", "/healthz", "--ready-field", ""]
    program = cli(host, gina, "deploy", str(folder), *options, "--json").json()
    assert program["restart_policy"] == {
        "mode": "RESTART_MODE_ON_FAILURE",
        "max_restarts": 3,
        "window": "60s",
    }
    assert program["stop"] == {"signal": "SIGINT", "grace": "4s"}
    assert program["readiness"]["path"] == "/healthz"
    assert program["readiness"]["field"] == ""  # proto3 optional: shown though empty
    assert program["readiness"]["liveness_grace"] == "12s"
    assert program["health"] == "HEALTH_HEALTHY"
    shown = cli(host, gina, "get", program["id"]).stdout
    assert "health" in shown
    assert "healthy" in shown
    assert "restart policy  on-failure, at most 3 within 60 s" in shown
    assert "SIGINT, then 4 s" in shown
    listed = cli(host, gina, "ls").stdout
    assert "HEALTH" in listed.splitlines()[0]
    assert "healthy" in listed
    bad = cli(host, gina, "deploy", str(folder), "--stop-signal", "SIGSEGV", expect=USAGE)
    assert "stop.signal" in bad.stderr
    cli(host, gina, "rm", program["id"], "--yes", "--wait")
