"""How long a Host takes from starting to having every program reconciled.

"Reconciled": the store is read, every program is back under a supervisor,
every container the store says runs has been checked (adopted or found dead),
orphans are reaped, and the gRPC server serves. Two cases, as issue #5 asks:

- 200 programs on the fake runtime (half of them were READY): target <= 2 s;
- 20 live containers under runsc, adopted without a restart: target <= 5 s.

Run: python benchmarks/recovery_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hershy.bootstrap import HostConfig, Runtime, running_host
from hershy.domain.model import State

ROOT = Path(__file__).resolve().parent.parent
STUB = ROOT / "tests" / "fixtures" / "watcher-stub"
STUB_DOCKERFILE = 'FROM scratch\nCOPY watcher-stub /watcher-stub\nENTRYPOINT ["/watcher-stub"]\n'


def config(data_dir: Path, runtime: Runtime) -> HostConfig:
    return HostConfig(
        data_dir=data_dir,
        runtime=runtime,
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        no_auth=True,
    )


async def fill(
    data_dir: Path, runtime: Runtime, count: int, running: int, files: dict[str, bytes]
) -> list[str]:
    """A data dir with `count` programs, `running` of them READY; the Host then exits."""
    async with running_host(config(data_dir, runtime)) as (registry, _):
        ids = []
        for index in range(count):
            program = await registry.create(
                "bench", STUB_DOCKERFILE, {**files, "n": str(index).encode()}
            )
            ids.append(program.id)
        await asyncio.gather(*(registry.start(program_id) for program_id in ids[:running]))
        await asyncio.gather(
            *(registry.wait(program_id, State.READY, 120) for program_id in ids[:running])
        )
    return ids


async def time_recovery(data_dir: Path, runtime: Runtime) -> tuple[float, dict[str, str]]:
    """Seconds from start to reconciled, and each program's container afterwards."""
    started = time.monotonic()
    async with running_host(config(data_dir, runtime)) as (registry, _):
        await registry.reconciled()
        elapsed = time.monotonic() - started
        containers = {
            p.id: p.container_id or "" for p in registry.list_programs(page_size=1000).programs
        }
    return elapsed, containers


async def clean_up(data_dir: Path, runtime: Runtime) -> None:
    async with running_host(config(data_dir, runtime)) as (registry, _):
        programs = registry.list_programs(page_size=1000).programs
        await asyncio.gather(*(registry.delete(p.id) for p in programs))
        for _ in range(600):
            if registry.list_programs().total_size == 0:
                return
            await asyncio.sleep(0.1)


def stub_binary(into: Path) -> bytes:
    env = {**os.environ, "CGO_ENABLED": "0", "PATH": os.environ["PATH"] + ":/usr/local/go/bin"}
    binary = into / "watcher-stub"
    subprocess.run(
        ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(binary), "."],
        cwd=STUB,
        env=env,
        check=True,
    )
    return binary.read_bytes()


def report(name: str, seconds: list[float], target: float) -> bool:
    median = statistics.median(seconds)
    verdict = "PASS" if median <= target else "MISS"
    runs = ", ".join(f"{s:.2f}" for s in seconds)
    print(
        f"{name:<52} median {median:6.2f} s   target <= {target:.0f} s   {verdict}   [runs: {runs}]"
    )
    return verdict == "PASS"


async def main(quick: bool) -> int:
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}"
    )
    repeats = 1 if quick else 3
    ok = True

    fake_times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as directory:
            data_dir = Path(directory)
            await fill(data_dir, Runtime.FAKE, count=200, running=100, files={})
            elapsed, _ = await time_recovery(data_dir, Runtime.FAKE)
            fake_times.append(elapsed)
    ok &= report("200 programs, fake runtime (100 were READY)", fake_times, 2.0)

    live = 5 if quick else 20
    with tempfile.TemporaryDirectory() as directory:
        data_dir = Path(directory) / "data"
        binary = stub_binary(Path(directory))
        before = await fill(
            data_dir, Runtime.RUNSC, count=live, running=live, files={"watcher-stub": binary}
        )
        try:
            live_times = []
            first: dict[str, str] | None = None
            for _ in range(repeats):
                elapsed, containers = await time_recovery(data_dir, Runtime.RUNSC)
                live_times.append(elapsed)
                first = first or containers
                if (
                    containers != first
                    or len(containers) != len(before)
                    or "" in containers.values()
                ):
                    print("FAIL: a container was replaced or lost during recovery", file=sys.stderr)
                    ok = False
            print(f"  {len(before)} containers adopted: the same container ids after every restart")
            ok &= report(f"{live} live containers, runsc (adopted, no restart)", live_times, 5.0)
        finally:
            await clean_up(data_dir, Runtime.RUNSC)
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one run each, 5 live containers")
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments.quick)))
