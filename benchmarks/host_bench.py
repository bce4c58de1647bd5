"""The control plane through its real API, as a process: `hershy serve --runtime fake`.

Figures, each next to its target (and its floor, where there is one):
- idle RSS of the Host process once it is ready, next to a bare `python3` that
  imports nothing (the interpreter's own floor);
- creates/s through gRPC: many users' clients at once (a user has at most 2 in
  progress, so the load is spread over users as a real one is);
- a Watch snapshot of N programs: the call sent to SYNCED received;
- Host restart with N programs: SIGTERM, a new process, to `/readyz` answering
  200, next to the same process start on an empty data dir (the floor).

    python3 benchmarks/host_bench.py            # N = 10,000
    python3 benchmarks/host_bench.py --smoke    # N = 300: that it runs (CI)
    python3 benchmarks/host_bench.py --profile  # also cProfile the Host under the creates
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc

from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc

#: What a batched snapshot asks for: the Host's cap (`MAX_WATCH_SNAPSHOT_BATCH`).
SNAPSHOT_BATCH = 1000
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Host:
    process: subprocess.Popen[bytes]
    grpc_address: str
    http_address: str
    started: float

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        """User + system CPU of the Host process (every thread) so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_host(data_dir: Path, log: Path, extra: list[str] | None = None) -> Host:
    grpc_address = f"127.0.0.1:{free_port()}"
    http_address = f"127.0.0.1:{free_port()}"
    command = [
        sys.executable,
        "-c",
        "import sys; from hershy.entrypoints.cli import main; sys.exit(main())",  # the script
        "serve",
        "--runtime",
        "fake",
        "--no-auth",
        "--data-dir",
        str(data_dir),
        "--grpc-addr",
        grpc_address,
        "--http-addr",
        http_address,
        *(extra or []),
    ]
    started = time.perf_counter()
    with log.open("ab") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    return Host(process, grpc_address, http_address, started)


def wait_ready(host: Host, timeout: float = 120.0) -> float:
    """Seconds from the process's spawn to `/readyz` answering 200."""
    deadline = time.monotonic() + timeout
    url = f"http://{host.http_address}/readyz"
    while time.monotonic() < deadline:
        if host.process.poll() is not None:
            raise RuntimeError(f"hershy serve exited with {host.process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return time.perf_counter() - host.started
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.005)
    raise TimeoutError("the Host was not ready in time")


async def create_many(address: str, count: int, users: int, per_user: int) -> float:
    """Creates/s: `users` users, each with `per_user` creates in flight, `count` in all."""
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.ProgramServiceStub(channel)
        await stub.ListPrograms(pb.ListProgramsRequest(page_size=1), timeout=10)
        left = count

        async def client(user: str) -> None:
            nonlocal left
            request = pb.CreateProgramRequest(user_id=user, dockerfile="FROM scratch\n")
            while left > 0:
                left -= 1
                await stub.CreateProgram(request, timeout=60)

        began = time.perf_counter()
        async with asyncio.TaskGroup() as tasks:
            for number in range(users):
                for _ in range(per_user):
                    tasks.create_task(client(f"user{number}"))
        return count / (time.perf_counter() - began)


async def snapshot_seconds(address: str, expected: int, batch: int = 0) -> float:
    """From the Watch call sent to its SYNCED received (the whole snapshot read, every
    program decoded); `batch` > 0 asks for it in batches (`snapshot_batch_size`)."""
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.ProgramServiceStub(channel)
        await stub.ListPrograms(pb.ListProgramsRequest(page_size=1), timeout=10)
        began = time.perf_counter()
        call = stub.WatchPrograms(pb.WatchProgramsRequest(snapshot_batch_size=batch))
        seen = 0
        async for message in call:
            if message.type == pb.WatchProgramsResponse.TYPE_SNAPSHOT:
                seen += len(message.snapshot_programs) if batch else 1
            elif message.type == pb.WatchProgramsResponse.TYPE_SYNCED:
                break
        took = time.perf_counter() - began
        call.cancel()
    if seen != expected:
        raise RuntimeError(f"the snapshot held {seen} programs, not {expected}")
    return took


async def client_snapshot_seconds(address: str, expected: int) -> float:
    """The same through the Python client's `watch_forever` (batches asked for, handed on
    one program at a time): what `hershy watch` and a client's caller see."""
    from hershy_client import AsyncClient  # the client as its users have it

    async with AsyncClient(address) as client:
        await client.stub.ListPrograms(pb.ListProgramsRequest(page_size=1), timeout=10)
        began = time.perf_counter()
        seen = 0
        async for item in client.watch_forever():
            if not isinstance(item, pb.WatchProgramsResponse):
                continue
            if item.type == pb.WatchProgramsResponse.TYPE_SNAPSHOT:
                seen += 1
            elif item.type == pb.WatchProgramsResponse.TYPE_SYNCED:
                break
        took = time.perf_counter() - began
    if seen != expected:
        raise RuntimeError(f"the client's snapshot held {seen} programs, not {expected}")
    return took


FLOOR_SERVER = """
import asyncio, sys, grpc
from hershy.v1 import program_pb2 as pb, program_pb2_grpc as pb_grpc
count = int(sys.argv[1])
program = pb.Program(name="programs/prog-000000000000", id="prog-000000000000", user_id="user0",
                     build_id="b-" + "0" * 24, state=pb.STATE_CREATED, runtime="fake")
messages = [pb.WatchProgramsResponse(type=pb.WatchProgramsResponse.TYPE_SNAPSHOT, program=program,
                                     revision=n + 1) for n in range(count)]
messages.append(pb.WatchProgramsResponse(type=pb.WatchProgramsResponse.TYPE_SYNCED, revision=count))
class Floor(pb_grpc.ProgramServiceServicer):
    async def ListPrograms(self, request, context):
        return pb.ListProgramsResponse()
    async def CreateProgram(self, request, context):
        return program
    async def WatchPrograms(self, request, context):
        for message in messages:
            yield message
async def main():
    server = grpc.aio.server()
    pb_grpc.add_ProgramServiceServicer_to_server(Floor(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""


def start_floor_server(count: int) -> tuple[subprocess.Popen[str], str]:
    """The snapshot's floor: grpc.aio streaming `count` ready-made messages, nothing else."""
    process = subprocess.Popen(
        [sys.executable, "-c", FLOOR_SERVER, str(count)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    return process, f"127.0.0.1:{process.stdout.readline().strip()}"


def libraries_rss_mib() -> float:
    """What the libraries a Host needs take by themselves, imported and unused."""
    code = (
        "import grpc, grpc.aio, aiohttp.web\n"
        "from hershy.v1 import program_pb2_grpc, token_pb2_grpc, quota_pb2_grpc\n"
        "print(open('/proc/self/status').read())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    for text in out.splitlines():
        if text.startswith("VmRSS:"):
            return int(text.split()[1]) / 1024
    return 0.0


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def bare_python_rss_mib() -> float:
    """The floor: an interpreter that imports nothing of ours."""
    code = "import sys; print(open('/proc/self/status').read())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def line(name: str, value: float, unit: str, target: str, ok: bool, note: str = "") -> None:
    verdict = "ok" if ok else "MISSED"
    print(f"{name:<44} {value:>10,.3f} {unit:<8} target {target:<10} {verdict}  {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small N: that it runs (CI)")
    parser.add_argument("--programs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="restart and snapshot rounds")
    arguments = parser.parse_args(argv)
    count = 300 if arguments.smoke else arguments.programs
    rounds = 1 if arguments.smoke else arguments.rounds
    work = Path(tempfile.mkdtemp(prefix="hershy-host-bench-"))
    log = work / "host.log"
    print(
        f"host_bench: N = {count:,} programs, fake runtime, {os.cpu_count()} CPUs, "
        f"load average {load_average()}"
    )
    try:
        empty_starts: list[float] = []
        host = start_host(work / "data", log)
        try:
            wait_ready(host)
            time.sleep(1.0)  # settled
            idle = host.rss_mib()
            floor = bare_python_rss_mib()
            libraries = libraries_rss_mib()
            line(
                "idle Host RSS",
                idle,
                "MiB",
                "<= 50",
                idle <= 50,
                f"bare python3: {floor:.1f} MiB; python3 + grpcio, aiohttp and the stubs, "
                f"imported and nothing else: {libraries:.1f} MiB",
            )
            cpu_before = host.cpu_seconds()
            rate = asyncio.run(create_many(host.grpc_address, count, users=50, per_user=2))
            cpu_each = (host.cpu_seconds() - cpu_before) / count * 1000
            floor_process, floor_address = start_floor_server(1)
            try:
                floor_rate = asyncio.run(create_many(floor_address, count, users=50, per_user=2))
            finally:
                floor_process.kill()
                floor_process.wait()
            line(
                "creates/s through gRPC (50 users x 2)",
                rate,
                "/s",
                ">= 1000",
                rate >= 1000,
                f"the Host's CPU per create: {cpu_each:.2f} ms (1,000/s needs <= 1 ms of a core); "
                f"grpc.aio answering a ready-made Program (floor): {floor_rate:,.0f}/s",
            )
            # Interleaved with the floor: the same stream of ready-made messages.
            floor_process, floor_address = start_floor_server(count)
            snapshots, batched, through_client, floors = [], [], [], []
            try:
                for _ in range(rounds):
                    snapshots.append(asyncio.run(snapshot_seconds(host.grpc_address, count)))
                    batched.append(
                        asyncio.run(snapshot_seconds(host.grpc_address, count, SNAPSHOT_BATCH))
                    )
                    through_client.append(
                        asyncio.run(client_snapshot_seconds(host.grpc_address, count))
                    )
                    floors.append(asyncio.run(snapshot_seconds(floor_address, count)))
            finally:
                floor_process.kill()
                floor_process.wait()
            took = statistics.median(snapshots)
            floor_took = statistics.median(floors)
            line(
                f"Watch snapshot of {count:,} (median of {len(snapshots)})",
                took,
                "s",
                "<= 0.3",
                took <= 0.3,
                f"grpc.aio streaming {count:,} ready-made messages (floor): {floor_took:.3f} s "
                f"({took / floor_took:.2f}x); all: {', '.join(f'{s:.3f}' for s in snapshots)}",
            )
            took = statistics.median(batched)
            line(
                f"  batched, {SNAPSHOT_BATCH:,} a message (median of {len(batched)})",
                took,
                "s",
                "<= 0.3",
                took <= 0.3,
                f"the same snapshot with snapshot_batch_size={SNAPSHOT_BATCH} "
                f"({took / floor_took:.2f}x the floor); all: "
                + ", ".join(f"{s:.3f}" for s in batched),
            )
            took = statistics.median(through_client)
            line(
                f"  batched, via hershy_client (median of {len(through_client)})",
                took,
                "s",
                "<= 0.3",
                took <= 0.3,
                "watch_forever to SYNCED, one SNAPSHOT message per program handed on; all: "
                + ", ".join(f"{s:.3f}" for s in through_client),
            )
            loaded = host.rss_mib()
            print(f"{'  RSS with the programs':<44} {loaded:>10,.1f} MiB")
        finally:
            host.stop()
        restarts = []
        for _ in range(rounds):  # interleaved with the floor: the same start, nothing stored
            host = start_host(work / "data", log)
            try:
                restarts.append(wait_ready(host))
            finally:
                host.stop()
            shutil.rmtree(work / "empty", ignore_errors=True)
            empty = start_host(work / "empty", log)
            try:
                empty_starts.append(wait_ready(empty))
            finally:
                empty.stop()
        took = statistics.median(restarts)
        floor_start = statistics.median(empty_starts)
        line(
            f"restart to /readyz with {count:,} (median of {len(restarts)})",
            took,
            "s",
            "<= 1.0",
            took <= 1.0,
            f"empty data dir (floor): {floor_start:.3f} s; all: "
            + ", ".join(f"{s:.3f}" for s in restarts),
        )
        print(f"load average at the end: {load_average()} (the machine is shared)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
