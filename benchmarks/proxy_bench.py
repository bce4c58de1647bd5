"""Benchmark of the WatcherAPI reverse proxy: through the proxy, next to direct.

    python benchmarks/proxy_bench.py            # full run (about 40 s)
    python benchmarks/proxy_bench.py --quick    # CI smoke run: shorter, every figure

Set-up, three processes, as in production:

- the Host: `hershy serve --runtime fake`, the REST shim and its proxy in it;
- the program: an aiohttp server on the program's WatcherAPI port (127.0.0.1,
  the port the Host allotted), serving `GET /watcher/status` (a small JSON),
  `GET /watcher/blob` (1 MiB) and `POST /watcher/upload` (reads 1 MiB, answers
  a small JSON), in a process of its own;
- the client: this process, one aiohttp session per measurement.

For each workload the same client calls the program's port directly, then
through `http://HOST/programs/{id}/watcher/...`:

- throughput: CONCURRENCY requests in flight, requests/s and the p50/p99
  latency under that load;
- latency: one request at a time, p50/p99, and the p50 the proxy adds.

Direct and proxied calls alternate in short rounds (6 of 0.5 s each, every
figure), so load from elsewhere on the machine weighs on both alike.

Targets: proxied throughput >= 40 % of direct, added p50 <= 1 ms (one at a
time). On a machine with few cores the three processes share them; the
number of CPUs is printed. The exit status is 0 even if a target is missed
(it measures, it does not judge); pass --strict to exit 1 on a miss.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.synchronize
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

BLOB = bytes(range(256)) * 4096  # 1 MiB
THROUGHPUT_TARGET = 0.40
ADDED_P50_TARGET_MS = 1.0


# --- the program (its own process) ------------------------------------------------


def serve_program(port: int, ready: multiprocessing.synchronize.Event) -> None:
    async def status(request: web.Request) -> web.Response:
        return web.json_response({"state": "Running", "isRunning": True, "watcherID": "bench"})

    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=BLOB, content_type="application/octet-stream")

    async def upload(request: web.Request) -> web.Response:
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        return web.json_response({"size": size})

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/watcher/status", status)
        app.router.add_get("/watcher/blob", blob)
        app.router.add_post("/watcher/upload", upload)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


# --- the Host -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Host:
    process: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    #: The admin's token: the benchmark runs with tokens on, as production does.
    token: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start_host() -> Host:
    script = shutil.which("hershy")
    if script is None:
        sys.exit("the `hershy` console script is not on PATH: pip install -e .")
    data_dir = Path(tempfile.mkdtemp(prefix="hershy-proxy-bench-"))
    http_address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [
            script,
            "serve",
            "--runtime",
            "fake",
            "--data-dir",
            str(data_dir),
            "--grpc-addr",
            f"127.0.0.1:{free_port()}",
            "--http-addr",
            http_address,
            "--admin-token-file",
            str(data_dir / "admin-token"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return Host(process, f"http://{http_address}", data_dir)


async def until_ok(session: aiohttp.ClientSession, url: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"{url} did not answer 200 within {seconds} s")
        await asyncio.sleep(0.05)


async def ready_program(session: aiohttp.ClientSession, host: Host) -> tuple[str, int]:
    """A Ready program whose WatcherAPI port is free here: (program id, port)."""
    for _ in range(50):
        body = {"user_id": "bench", "dockerfile": "FROM scratch\n"}
        async with session.post(f"{host.url}/programs", json=body) as response:
            program = await response.json()
        program_id = program["program_id"]
        async with session.post(f"{host.url}/programs/{program_id}/start") as response:
            assert response.status == 200, await response.text()
        async with session.get(f"{host.url}/programs/{program_id}/wait?timeout=10") as response:
            assert response.status == 200, await response.text()
            ready = await response.json()
        # The runtime placed it when it started (checked free then); the bench's own
        # WatcherAPI still has to bind it.
        port = int(ready["proxy_target"].rsplit(":", 1)[1])
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # someone else's port on this machine: take the next program
        return program_id, port
    sys.exit("no free WatcherAPI port")


# --- measuring --------------------------------------------------------------------------


Call = Callable[[aiohttp.ClientSession, str], Awaitable[None]]


async def small_get(session: aiohttp.ClientSession, base: str) -> None:
    async with session.get(f"{base}/watcher/status") as response:
        await response.read()
        assert response.status == 200


async def big_get(session: aiohttp.ClientSession, base: str) -> None:
    async with session.get(f"{base}/watcher/blob") as response:
        assert len(await response.read()) == len(BLOB)


async def big_post(session: aiohttp.ClientSession, base: str) -> None:
    async with session.post(f"{base}/watcher/upload", data=BLOB) as response:
        await response.read()
        assert response.status == 200


@dataclass
class Samples:
    """Requests of one kind (direct or through the proxy), gathered over several rounds."""

    count: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    #: CPU seconds the Host process spent meanwhile (proxied rounds only).
    host_cpu: float = 0.0

    @property
    def requests_per_second(self) -> float:
        return self.count / self.elapsed

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    def line(self, label: str) -> str:
        text = (
            f"  {label:<7} {self.requests_per_second:9.0f} req/s   "
            f"p50 {self.percentile_ms(0.5):7.3f} ms   p99 {self.percentile_ms(0.99):7.3f} ms"
        )
        if self.host_cpu:
            text += f"   Host CPU {self.host_cpu / self.count * 1e6:5.0f} us/request"
        return text


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_round(
    call: Call, session: aiohttp.ClientSession, base: str, concurrency: int, seconds: float
) -> Samples:
    samples = Samples()
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await call(session, base)
            samples.latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    samples.elapsed = time.perf_counter() - began
    samples.count = len(samples.latencies)
    return samples


async def compare(
    call: Call,
    bases: tuple[str, str],
    concurrency: int,
    rounds: int,
    seconds: float,
    headers: dict[str, str],
    host_pid: int,
) -> tuple[Samples, Samples]:
    """Direct and proxied, in alternating rounds, so other load on the machine hits both alike."""
    totals = (Samples(), Samples())
    sessions = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            auto_decompress=False,
            headers=headers,
        )
        for _ in bases
    ]
    try:
        for session, base in zip(sessions, bases, strict=True):  # warm up: connections, caches
            await one_round(call, session, base, concurrency, min(0.3, seconds))
        for _ in range(rounds):
            for session, base, total in zip(sessions, bases, totals, strict=True):
                cpu_before = cpu_seconds(host_pid)
                samples = await one_round(call, session, base, concurrency, seconds)
                if total is totals[1]:
                    total.host_cpu += cpu_seconds(host_pid) - cpu_before
                total.count += samples.count
                total.elapsed += samples.elapsed
                total.latencies += samples.latencies
    finally:
        for session in sessions:
            await session.close()
    return totals


async def run(quick: bool, concurrency: int) -> bool:
    rounds, seconds = (3, 0.3) if quick else (6, 0.5)
    host = start_host()
    program_process: multiprocessing.process.BaseProcess | None = None
    try:
        async with aiohttp.ClientSession() as session:
            await until_ok(session, f"{host.url}/readyz")
        host.token = (host.data_dir / "admin-token").read_text().strip()
        async with aiohttp.ClientSession(headers=host.headers) as session:
            program_id, port = await ready_program(session, host)
        context = multiprocessing.get_context("spawn")
        ready = context.Event()
        program_process = context.Process(target=serve_program, args=(port, ready), daemon=True)
        program_process.start()
        if not ready.wait(20):
            sys.exit("the program's server did not start")
        bases = (f"http://127.0.0.1:{port}", f"{host.url}/programs/{program_id}")
        async with aiohttp.ClientSession(headers=host.headers) as session:
            await until_ok(session, f"{bases[1]}/watcher/status")

        print(
            f"proxy benchmark: {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.2f}), "
            f"Python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}; Host, program "
            f"and client in 3 processes; direct and proxied alternate, {rounds} rounds of "
            f"{seconds:g} s each; the proxy with tokens on"
        )
        all_met = True
        for name, call in (
            ("small GET /watcher/status", small_get),
            ("1 MiB response (GET /watcher/blob)", big_get),
            ("1 MiB request (POST /watcher/upload)", big_post),
        ):
            print(f"\n{name}")
            # The same client either way, token included (the program ignores it).
            print(f" throughput, {concurrency} in flight:")
            direct, proxied = await compare(
                call, bases, concurrency, rounds, seconds, host.headers, host.process.pid
            )
            print(direct.line("direct"))
            print(proxied.line("proxy"))
            ratio = proxied.requests_per_second / direct.requests_per_second
            print(" latency, one at a time:")
            direct_one, proxied_one = await compare(
                call, bases, 1, rounds, seconds, host.headers, host.process.pid
            )
            print(direct_one.line("direct"))
            print(proxied_one.line("proxy"))
            added = proxied_one.percentile_ms(0.5) - direct_one.percentile_ms(0.5)
            met_ratio = ratio >= THROUGHPUT_TARGET
            met_added = added <= ADDED_P50_TARGET_MS
            all_met = all_met and met_ratio and met_added
            print(
                f" proxy throughput {ratio:6.1%} of direct "
                f"(target >= {THROUGHPUT_TARGET:.0%}): {'PASS' if met_ratio else 'MISS'}"
            )
            print(
                f" added p50 {added:6.3f} ms "
                f"(target <= {ADDED_P50_TARGET_MS:g} ms): {'PASS' if met_added else 'MISS'}"
            )
        return all_met
    finally:
        if program_process is not None:
            program_process.terminate()
            program_process.join(5)
        host.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter rounds (CI smoke run)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    met = asyncio.run(run(args.quick, args.concurrency))
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
