"""Helpers shared by the whole-path benchmarks: ports, the WatcherAPI stub, a `hershy serve`.

`HostProcess` runs the Host as a user would: a process of its own, listening on
loopback, with its own data dir; `RestClient` makes the REST calls a user makes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
STUB_DIR = REPO / "tests" / "fixtures" / "watcher-stub"
#: The stub alone, as a program: it serves the WatcherAPI on the port the Host gives it.
STUB_DOCKERFILE = 'FROM scratch\nCOPY watcher-stub /watcher-stub\nCMD ["/watcher-stub"]\n'
#: How long a program may take to become READY (a loaded machine, a cold build).
READY_TIMEOUT = 300.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def build_stub(workdir: Path) -> bytes:
    """The WatcherAPI stub (tests/fixtures/watcher-stub) as a static binary."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not os.access(go, os.X_OK):
        sys.exit("no Go toolchain: install Go or put it on PATH (/usr/local/go/bin/go)")
    output = workdir / "watcher-stub"
    subprocess.run(
        [go, "build", "-ldflags=-s -w", "-o", str(output), "."],
        cwd=STUB_DIR,
        env={**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"},
        check=True,
    )
    return output.read_bytes()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes spent so far (Linux, /proc)."""
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class HostProcess:
    """`hershy serve` on loopback with its own data dir and tokens on; stopped at the end.

    The code of this checkout (not whatever `hershy` is installed) runs: the
    process is this interpreter with the repository first on its path.
    """

    def __init__(self, data_dir: Path, log: Path, runtime: str = "runsc") -> None:
        self.http = f"127.0.0.1:{free_port()}"
        self._token_file = data_dir.parent / f"{data_dir.name}-admin-token"
        command = [
            sys.executable,
            "-c",
            "import sys; from hershy.entrypoints.cli import main; sys.exit(main())",
            "serve",
            "--runtime",
            runtime,
            "--data-dir",
            str(data_dir),
            "--grpc-addr",
            f"127.0.0.1:{free_port()}",
            "--http-addr",
            self.http,
            "--admin-token-file",
            str(self._token_file),
        ]
        path = os.pathsep.join([str(REPO), str(REPO / "clients" / "python")])
        env = {**os.environ, "PYTHONPATH": path + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with log.open("ab") as stderr:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env
            )
        self.token = ""

    @property
    def headers(self) -> dict[str, str]:
        """The admin's: the Host runs with tokens on, as in production."""
        return {"Authorization": f"Bearer {self.token}"}

    async def ready(self, http: aiohttp.ClientSession, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"hershy serve exited with {self.process.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://{self.http}/readyz") as answer:
                    if answer.status == 200 and self._token_file.exists():
                        self.token = self._token_file.read_text().strip()
                        return
            await asyncio.sleep(0.05)
        raise TimeoutError("the Host was not ready in time")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._token_file.unlink(missing_ok=True)


class RestClient:
    """The REST calls a user makes, with the Host's admin token."""

    def __init__(self, http: aiohttp.ClientSession, host: HostProcess) -> None:
        self._http, self._host = http, host
        self._base = f"http://{host.http}"
        self.made: list[str] = []

    async def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        async with self._http.request(
            method, self._base + path, headers=self._host.headers, **kwargs
        ) as answer:
            body: dict[str, Any] = await answer.json()
            if answer.status >= 300:
                raise RuntimeError(f"{method} {path}: {answer.status} {body}")
            return body

    async def deploy_stub(self, user: str, binary: bytes) -> dict[str, Any]:
        """The stub as a program of `user`, created, started and READY: the program."""
        body = {
            "user_id": user,
            "dockerfile": STUB_DOCKERFILE,
            "src_files_base64": {"watcher-stub": base64.b64encode(binary).decode()},
        }
        program = await self.call("POST", "/programs", json=body)
        program_id = str(program["program_id"])
        self.made.append(program_id)
        await self.call("POST", f"/programs/{program_id}/start")
        wait = f"/programs/{program_id}/wait?state=ready&timeout={READY_TIMEOUT:g}"
        return await self.call("GET", wait)

    async def delete_all(self) -> None:
        for program_id in self.made:
            with contextlib.suppress(RuntimeError, aiohttp.ClientError):
                await self.call("DELETE", f"/programs/{program_id}")
