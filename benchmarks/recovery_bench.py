"""How long a Host takes from starting to having every program reconciled.

"Reconciled": the store is read, the runtime is reconciled (what runs is
looked at, orphans are reaped), every program is back under a supervisor,
every container the store says runs has been checked (adopted or found dead),
and the gRPC server serves. Two cases, as issue #5 asks:

- 200 programs on the fake runtime (half of them were READY): target <= 2 s;
- 20 live containers under runsc, adopted without a restart: target <= 5 s,
  the log back-fill included: each program prints numbered lines, also while
  the Host is down, and the timing ends once every line Docker had when the
  Host started is in its program's log (issue #11).

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

from hershy.adapters.docker.runtime import DockerSettings
from hershy.bootstrap import HostConfig, Runtime, running_host
from hershy.domain.model import LogStream, State
from hershy.service.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
STUB = ROOT / "tests" / "fixtures" / "watcher-stub"
STUB_DOCKERFILE = 'FROM scratch\nCOPY watcher-stub /watcher-stub\nENTRYPOINT ["/watcher-stub"]\n'
#: The live case: the stub in the background, a numbered line every 50 ms in front.
TICKER_SCRIPT = b"""trap 'exit 0' TERM
/watcher-stub &
i=0
while :; do i=$((i+1)); echo "tick $i"; sleep 0.05; done
"""
TICKER_DOCKERFILE = (
    "FROM hershy-busybox:latest\nCOPY watcher-stub /watcher-stub\nCOPY ticker.sh /ticker.sh\n"
    'ENTRYPOINT ["/bin/sh", "/ticker.sh"]\n'
)
START_BATCH = 4
#: How long the Host stays down before each timed start (the programs print on).
DOWN_SECONDS = 3.0


def config(data_dir: Path, runtime: Runtime) -> HostConfig:
    return HostConfig(
        data_dir=data_dir,
        runtime=runtime,
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        no_auth=True,
        docker=DockerSettings(ready_timeout=300),
    )


async def fill(
    data_dir: Path,
    runtime: Runtime,
    count: int,
    running: int,
    files: dict[str, bytes],
    dockerfile: str = STUB_DOCKERFILE,
) -> list[str]:
    """A data dir with `count` programs, `running` of them READY; the Host then exits."""
    async with running_host(config(data_dir, runtime)) as (registry, _):
        ids = []
        for index in range(count):
            program = await registry.create(
                "bench", dockerfile, {**files, "n": str(index).encode()}
            )
            ids.append(program.id)
        # A few at a time: 20 sandboxes starting at once on 2 busy cores miss their deadline.
        for first in range(0, running, START_BATCH):
            batch = ids[first : min(first + START_BATCH, running)]
            await asyncio.gather(*(registry.start(program_id) for program_id in batch))
            await asyncio.gather(
                *(registry.wait(program_id, State.READY, 300) for program_id in batch)
            )
    return ids


async def time_recovery(
    data_dir: Path, runtime: Runtime, docker_lines: dict[str, int] | None = None
) -> tuple[float, float, dict[str, str]]:
    """Seconds from start to reconciled, and to every line Docker had (`docker_lines`, per
    program) being in the log; and each program's container afterwards."""
    started = time.monotonic()
    async with running_host(config(data_dir, runtime)) as (registry, _):
        await registry.reconciled()
        reconciled = time.monotonic() - started
        deadline = time.monotonic() + 120
        behind = dict(docker_lines or {})
        while True:
            for program_id, wanted in list(behind.items()):
                if await count_ticks(registry, program_id) >= wanted:
                    del behind[program_id]
            if not behind:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"logs that never caught up with Docker's: {sorted(behind)}")
            await asyncio.sleep(0.1)  # each look reads whole logs: not too often
        backfilled = time.monotonic() - started
        for program_id in docker_lines or {}:
            numbers = await tick_numbers(registry, program_id)
            if numbers != list(range(1, len(numbers) + 1)):
                raise AssertionError(f"{program_id}: log lines missing or repeated")
        containers = {
            p.id: p.container_id or "" for p in registry.list_programs(page_size=1000).programs
        }
    return reconciled, backfilled, containers


async def count_ticks(registry: Registry, program_id: str) -> int:
    return len(await tick_numbers(registry, program_id))


async def tick_numbers(registry: Registry, program_id: str) -> list[int]:
    lines = registry.logs(program_id, None, frozenset({LogStream.STDOUT}), False)
    return [int(line.text.split()[-1]) async for line in lines if line.text.startswith("tick ")]


def docker_tick_counts(program_ids: list[str]) -> dict[str, int]:
    """Per program, the `tick` lines its container has printed so far (by `docker logs`)."""
    counts = {}
    for program_id in program_ids:
        (container_id,) = subprocess.run(
            ["docker", "ps", "-q", "--filter", f"label=dev.hershy.program={program_id}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        output = subprocess.run(
            ["docker", "logs", container_id], capture_output=True, text=True, check=True
        ).stdout
        counts[program_id] = sum(line.startswith("tick ") for line in output.splitlines())
    return counts


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
            elapsed, _, _ = await time_recovery(data_dir, Runtime.FAKE)
            fake_times.append(elapsed)
    ok &= report("200 programs, fake runtime (100 were READY)", fake_times, 2.0)

    live = 5 if quick else 20
    with tempfile.TemporaryDirectory() as directory:
        data_dir = Path(directory) / "data"
        binary = stub_binary(Path(directory))
        files = {"watcher-stub": binary, "ticker.sh": TICKER_SCRIPT}
        try:
            before = await fill(
                data_dir,
                Runtime.RUNSC,
                count=live,
                running=live,
                files=files,
                dockerfile=TICKER_DOCKERFILE,
            )
            live_times, backfill_times, copied = [], [], []
            first: dict[str, str] | None = None
            for _ in range(repeats):
                await asyncio.sleep(DOWN_SECONDS)  # the Host is down; the programs print on
                lines = docker_tick_counts(before)
                elapsed, backfilled, containers = await time_recovery(
                    data_dir, Runtime.RUNSC, lines
                )
                live_times.append(elapsed)
                backfill_times.append(backfilled)
                copied.append(sum(lines.values()))
                first = first or containers
                if (
                    containers != first
                    or len(containers) != len(before)
                    or "" in containers.values()
                ):
                    print("FAIL: a container was replaced or lost during recovery", file=sys.stderr)
                    ok = False
            print(f"  {len(before)} containers adopted: the same container ids after every restart")
            print(
                f"  log lines in Docker at each start (all copied, each once, in order: checked): "
                f"{', '.join(map(str, copied))}; down {DOWN_SECONDS:g} s before each start"
            )
            ok &= report(f"{live} live containers, runsc (adopted, no restart)", live_times, 5.0)
            ok &= report(f"{live} live containers, runsc, log back-fill done", backfill_times, 5.0)
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
