"""What the whole-path benchmarks share: ports, the stub, a `hershy serve` process, figures.

Run the benchmarks from the repository's root as modules (`python3 -m
benchmarks.start_bench`), so that this module is found as `benchmarks._common`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
STUB_DIR = REPO / "tests" / "fixtures" / "watcher-stub"
#: How long a `hershy serve` may take to answer `/readyz`.
READY_SECONDS = 120.0


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


class HostProcess:
    """`hershy serve` on loopback with its own data dir, as a user runs it; stopped at the end."""

    def __init__(self, data_dir: Path, log: Path, extra: list[str] | None = None) -> None:
        self.http = f"127.0.0.1:{free_port()}"
        self.grpc = f"127.0.0.1:{free_port()}"
        self.data_dir = data_dir
        command = [
            sys.executable,
            "-c",
            "import sys; from hershy.entrypoints.cli import main; sys.exit(main())",
            "serve",
            "--runtime",
            "runsc",
            "--no-auth",
            "--data-dir",
            str(data_dir),
            "--grpc-addr",
            self.grpc,
            "--http-addr",
            self.http,
            *(extra or []),
        ]
        with log.open("ab") as stderr:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)

    async def ready(self, http: aiohttp.ClientSession) -> None:
        """Once `/readyz` answers 200 (within READY_SECONDS); raises if the Host exits."""
        async with asyncio.timeout(READY_SECONDS):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"hershy serve exited with {self.process.returncode}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://{self.http}/readyz") as answer:
                        if answer.status == 200:
                            return
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


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
