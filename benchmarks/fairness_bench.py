"""Benchmark of fairness between tenants: one floods creates, another reads its logs.

    python benchmarks/fairness_bench.py            # full run (a minute or two)
    python benchmarks/fairness_bench.py --quick    # CI smoke run: smaller, every figure

Through the real REST API of a `hershy serve --runtime fake` (tokens on):

- the reader, a user of their own, has one program and reads
  `GET /programs/{id}/logs?tail=5&format=ndjson` one request at a time;
- the flooder, another user, sends PARALLEL creates of FILES files each at
  once, again and again for ROUNDS rounds (the programs are kept: deleting
  10,000 files is slow on a busy disk and would only stretch the run).

First the reader's latency alone (the floor), then the same reads while the
flood runs; printed: p50/p99 of each, their ratios, and what became of the
flooder's creates (created, or refused with the per-user limit's 503
RESOURCE_EXHAUSTED). Target: the reader's p99 under the flood < 100 ms.

The exit status is 0 even if the target is missed (it measures, it does not
judge); pass --strict to exit 1 on a miss.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc

from hershy.v1 import token_pb2
from hershy.v1 import token_pb2_grpc as token_grpc

P99_TARGET_MS = 100.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Host:
    process: subprocess.Popen[bytes]
    url: str
    grpc_address: str
    data_dir: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start_host() -> Host:
    script = shutil.which("hershy")
    if script is None:
        sys.exit("the `hershy` console script is not on PATH: pip install -e .")
    data_dir = Path(tempfile.mkdtemp(prefix="hershy-fairness-bench-"))
    http_address = f"127.0.0.1:{free_port()}"
    grpc_address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [
            script,
            "serve",
            "--runtime",
            "fake",
            "--data-dir",
            str(data_dir),
            "--grpc-addr",
            grpc_address,
            "--http-addr",
            http_address,
            "--admin-token-file",
            str(data_dir / "admin-token"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return Host(process, f"http://{http_address}", grpc_address, data_dir)


async def until_ready(session: aiohttp.ClientSession, host: Host, seconds: float = 30) -> str:
    """Waits for /readyz; returns the admin's token."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{host.url}/readyz") as response:
                token_file = host.data_dir / "admin-token"
                if response.status == 200 and token_file.exists():
                    return token_file.read_text().strip()
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    sys.exit(f"{host.url} was not ready within {seconds} s")


async def user_token(host: Host, admin: str, user_id: str) -> dict[str, str]:
    async with grpc.aio.insecure_channel(host.grpc_address) as channel:
        tokens: token_grpc.TokenServiceAsyncStub = token_grpc.TokenServiceStub(channel)
        token = await tokens.CreateToken(
            token_pb2.CreateTokenRequest(user_id=user_id),
            metadata=(("authorization", f"Bearer {admin}"),),
            timeout=10,
        )
    return {"Authorization": f"Bearer {token.secret}"}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class Flood:
    created: int = 0
    refused: int = 0
    other: dict[int, int] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    total_seconds: float = 0.0


async def read_logs(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    until: asyncio.Event,
    most: int,
) -> list[float]:
    """One read at a time until `until` is set (or `most` reads); each read's seconds."""
    latencies: list[float] = []
    while not until.is_set() and len(latencies) < most:
        started = time.perf_counter()
        async with session.get(url, headers=headers) as response:
            await response.read()
            assert response.status == 200, response.status
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(0.005)  # a reader, not a second flood
    return latencies


async def flood(
    session: aiohttp.ClientSession,
    host: Host,
    headers: dict[str, str],
    user_id: str,
    files: int,
    parallel: int,
    rounds: int,
) -> Flood:
    body = {
        "user_id": user_id,
        "dockerfile": "FROM scratch\nCOPY . /app\n",
        "src_files": {f"dir{i // 100}/file{i}.txt": f"content {i}\n" for i in range(files)},
    }
    result = Flood()

    async def create() -> str | None:
        started = time.perf_counter()
        async with session.post(f"{host.url}/programs", json=body, headers=headers) as response:
            answer = await response.json()
        result.seconds.append(time.perf_counter() - started)
        if response.status == 201:
            result.created += 1
            return str(answer["program_id"])
        if response.status == 503 and answer.get("error") == "RESOURCE_EXHAUSTED":
            result.refused += 1
        else:
            result.other[response.status] = result.other.get(response.status, 0) + 1
        return None

    started = time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(create() for _ in range(parallel)))
    result.total_seconds = time.perf_counter() - started
    return result


def show(name: str, latencies: list[float]) -> tuple[float, float]:
    p50, p99 = percentile(latencies, 0.50) * 1000, percentile(latencies, 0.99) * 1000
    mean = statistics.fmean(latencies) * 1000
    figures = f"p50 {p50:8.2f} ms  p99 {p99:8.2f} ms  mean {mean:8.2f} ms"
    print(f"  {name:<22} n={len(latencies):<5} {figures}")
    return p50, p99


async def run(args: argparse.Namespace) -> bool:
    host = start_host()
    timeout = aiohttp.ClientTimeout(total=600)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as reader_http,
            aiohttp.ClientSession(timeout=timeout) as flood_http,
        ):
            admin = await until_ready(reader_http, host)
            reader = await user_token(host, admin, "reader")
            flooder = await user_token(host, admin, "flooder")
            body = {"user_id": "reader", "dockerfile": "FROM scratch\n"}
            async with reader_http.post(f"{host.url}/programs", json=body, headers=reader) as r:
                program = await r.json()
                assert r.status == 201, program
            logs = f"{host.url}/programs/{program['program_id']}/logs?tail=5&format=ndjson"
            never = asyncio.Event()
            await read_logs(reader_http, logs, reader, never, 20)  # warm up
            floor = await read_logs(reader_http, logs, reader, never, args.reads)
            done = asyncio.Event()
            flood_task = asyncio.create_task(
                flood(flood_http, host, flooder, "flooder", args.files, args.parallel, args.rounds)
            )
            flood_task.add_done_callback(lambda _: done.set())
            loaded = await read_logs(reader_http, logs, reader, done, 1_000_000)
            flooded = await flood_task
    finally:
        host.stop()
    print(
        f"fairness: {args.parallel} parallel creates of {args.files} files, {args.rounds} rounds, "
        f"by one user; another user's GET logs?tail=5 (cpus: {os.cpu_count()})"
    )
    _, floor_p99 = show("floor (no flood)", floor)
    floor_p50 = percentile(floor, 0.5) * 1000
    p50, p99 = show("during the flood", loaded)
    print(f"  ratio p50 {p50 / floor_p50:6.1f}x   p99 {p99 / floor_p99:6.1f}x   (flood / floor)")
    print(
        f"  flooder: {flooded.created} created, {flooded.refused} refused (per-user limit), "
        f"other answers {flooded.other or 'none'}; create p50 "
        f"{percentile(flooded.seconds, 0.5) * 1000:.0f} ms; "
        f"the flood lasted {flooded.total_seconds:.1f} s"
    )
    met = p99 < P99_TARGET_MS
    print(f"  target p99 < {P99_TARGET_MS:.0f} ms during the flood: {'met' if met else 'MISSED'}")
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller flood (CI smoke run)")
    parser.add_argument("--files", type=int, default=10_000, help="files per create")
    parser.add_argument("--parallel", type=int, default=8, help="creates at once")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of creates")
    parser.add_argument("--reads", type=int, default=300, help="reads for the floor")
    parser.add_argument("--strict", action="store_true", help="exit 1 if the target is missed")
    args = parser.parse_args(argv)
    if args.quick:
        args.files, args.rounds, args.reads = min(args.files, 2_000), 2, 100
    met = asyncio.run(run(args))
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
