"""What the whole-path benchmarks share: ports, the stub, a `hershy serve` process, figures.

Run the benchmarks from the repository's root as modules (`python3 -m
benchmarks.start_bench`), so that this module is found as `benchmarks._common`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
STUB_DIR = REPO / "tests" / "fixtures" / "watcher-stub"
#: How long a `hershy serve` may take to answer `/readyz`.
READY_SECONDS = 120.0
#: The stub alone, as a program: it serves the WatcherAPI on the port the Host gives it.
STUB_DOCKERFILE = 'FROM scratch\nCOPY watcher-stub /watcher-stub\nCMD ["/watcher-stub"]\n'
#: How long a program may take to become READY (a loaded machine, a cold build).
READY_TIMEOUT = 300.0


def free_port() -> int:
    """A loopback port free right now (the kernel's pick)."""
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


def load_average() -> str:
    """The machine's load (1, 5, 15 minutes), to print next to every figure."""
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes spent so far (Linux, /proc)."""
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class HostProcess:
    """`hershy serve` on loopback with its own data dir, as a user runs it; stopped at the end.

    The code of this checkout (not whatever `hershy` is installed) runs: the
    process is this interpreter with the repository first on its path. With
    `tokens`, the Host checks tokens as in production and `headers` are the
    admin's; without, it runs with `--no-auth`.
    """

    def __init__(
        self,
        data_dir: Path,
        log: Path,
        extra: list[str] | None = None,
        *,
        runtime: str = "runsc",
        tokens: bool = False,
    ) -> None:
        self.http = f"127.0.0.1:{free_port()}"
        self.grpc = f"127.0.0.1:{free_port()}"
        self.data_dir = data_dir
        self._token_file = data_dir.parent / f"{data_dir.name}-admin-token" if tokens else None
        auth = ["--admin-token-file", str(self._token_file)] if self._token_file else ["--no-auth"]
        command = [
            sys.executable,
            "-c",
            "import sys; from hershy.entrypoints.cli import main; sys.exit(main())",
            "serve",
            "--runtime",
            runtime,
            *auth,
            "--data-dir",
            str(data_dir),
            "--grpc-addr",
            self.grpc,
            "--http-addr",
            self.http,
            *(extra or []),
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
        """The admin's (none when the Host runs without tokens)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def ready(self, http: aiohttp.ClientSession, seconds: float = READY_SECONDS) -> None:
        """Once `/readyz` answers 200 (and the admin token is written); raises if the Host
        exits or is not ready within `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"hershy serve exited with {self.process.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://{self.http}/readyz") as answer:
                    if answer.status == 200:
                        if self._token_file is None:
                            return
                        if self._token_file.exists():
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
        if self._token_file is not None:
            self._token_file.unlink(missing_ok=True)


def ratio_line(name: str, ours: list[float], floor: list[float], target: float, peer: str) -> bool:
    """Print the medians of both sides and their ratio against the target; True when met."""
    mine, theirs = statistics.median(ours), statistics.median(floor)
    ratio = mine / theirs
    met = ratio <= target
    print(
        f"  {name:<36} Hershy {mine * 1000:7.0f} ms   {peer} {theirs * 1000:7.0f} ms   "
        f"{ratio:5.2f}x (target <= {target:.2f}x: {'ok' if met else 'MISS'})",
        flush=True,
    )
    return met


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
