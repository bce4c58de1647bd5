"""The switch gap of a deploy in place: how long a redeploy keeps a program away from READY.

    python3 -m benchmarks.deploy_bench            # 5 timed redeploys (the median of 5)
    python3 -m benchmarks.deploy_bench --runs 9
    python3 -m benchmarks.deploy_bench --quick    # smoke run: 2 redeploys

Needs the real Docker daemon with runsc (scripts/setup-host.sh), Go and root;
nothing is pulled. Cold deploys, starts and N concurrent deploys through the
REST API next to `docker build`/`docker run`: `benchmarks/start_bench.py`.

An in-process Host on runsc runs one program of the WatcherAPI stub
(tests/fixtures/watcher-stub); each timed run deploys a new revision of the
same size (the same binary, one ENV line that differs, so it really builds)
and waits until the rollout SUCCEEDED.

The build runs while the current revision serves (READY): it is not in the
gap. From the events the Host committed (their own times):

- gap: the candidate built (the program leaves READY: the old container stops)
  until the new container is READY;
- stop: the old container stopped and removed (ContainerStopped - CandidateBuilt);
- start: the new container's own start, create to ready (ContainerReady -
  ContainerStopped: the Host's StartContainer, /state attached, created,
  started, its WatcherAPI answering);
- beyond start: gap - start (what the switch costs besides starting anew).

Target (the issue): beyond start well under one second. Exit 0 even on a miss
(it measures); --strict exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import STUB_DIR, build_stub
from hershy.adapters.docker.runtime import DockerSettings
from hershy.bootstrap import HostConfig, Runtime, running_host
from hershy.domain import events as ev
from hershy.domain.model import RolloutPhase, State
from hershy.service.registry import Registry
from hershy.service.watch import Change

#: Beyond the new container's own start, a switch should cost well under this.
TARGET_BEYOND_START = 1.0
READY_TIMEOUT = 120.0


@dataclass(frozen=True)
class Switch:
    gap: float
    stop: float
    start: float

    @property
    def beyond_start(self) -> float:
        return self.gap - self.start


def dockerfile(revision: int) -> str:
    """The stub's image; one ENV line tells revisions apart (same size, a real build)."""
    base = (STUB_DIR / "Dockerfile").read_text().rstrip("\n").splitlines()
    return "\n".join([*base[:-1], f"ENV BENCH_REVISION={revision}", base[-1]]) + "\n"


async def redeploy(registry: Registry, program_id: str, revision: int, binary: bytes) -> Switch:
    subscription = registry.hub.subscribe(program_id, capacity=4096)
    try:
        await registry.deploy(
            program_id, dockerfile(revision), {"watcher-stub": binary}, None, "bench"
        )
        times: dict[str, float] = {}
        async with asyncio.timeout(READY_TIMEOUT):
            while True:
                change = await subscription.next()
                if not isinstance(change, Change):
                    raise RuntimeError(f"the Watch subscription fell behind: {change}")
                program, event = change.program, change.event
                match event:
                    case ev.CandidateBuilt():
                        times["built"] = event.at
                    case ev.ContainerStopped() if "built" in times:
                        times.setdefault("stopped", event.at)
                    case ev.ContainerReady() if "stopped" in times:
                        times["ready"] = event.at
                rollout = program.rollout
                if rollout is not None and not rollout.in_progress:
                    if rollout.phase is not RolloutPhase.SUCCEEDED:
                        raise RuntimeError(
                            f"revision {revision}: {rollout.phase.name}: {rollout.reason}"
                        )
                    if program.state is State.READY:
                        break
    finally:
        subscription.unsubscribe()
    return Switch(
        gap=times["ready"] - times["built"],
        stop=times["stopped"] - times["built"],
        start=times["ready"] - times["stopped"],
    )


async def bench(runs: int) -> list[Switch]:
    with tempfile.TemporaryDirectory(prefix="hershy-deploy-bench-") as work:
        binary = await asyncio.to_thread(build_stub, Path(work))
        config = HostConfig(
            data_dir=Path(work) / "data",
            runtime=Runtime.RUNSC,
            grpc_addr="127.0.0.1:0",
            http_addr="127.0.0.1:0",
            no_auth=True,
            docker=DockerSettings(ready_poll_interval=0.02, stop_grace=10),
        )
        async with running_host(config) as (registry, _server):
            program = await registry.create("bench", dockerfile(0), {"watcher-stub": binary})
            try:
                await registry.start(program.id)
                await registry.wait(program.id, State.READY, READY_TIMEOUT)
                switches = []
                for run in range(1, runs + 1):
                    switch = await redeploy(registry, program.id, run, binary)
                    switches.append(switch)
                    print(
                        f"  redeploy {run}/{runs}: away from READY {switch.gap * 1000:.0f} ms "
                        f"(old stopped {switch.stop * 1000:.0f} ms, new started "
                        f"{switch.start * 1000:.0f} ms)",
                        flush=True,
                    )
                    await asyncio.sleep(1.0)  # gVisor tears the old sandbox down meanwhile
            finally:
                await registry.delete(program.id)
                await registry.wait(program.id, State.DELETED, READY_TIMEOUT)
        return switches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="timed redeploys (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 redeploys")
    parser.add_argument("--strict", action="store_true", help="exit 1 if the target is missed")
    args = parser.parse_args(argv)
    runs = 2 if args.quick else args.runs
    if runs < 1:
        parser.error("--runs must be at least 1")
    began = time.monotonic()
    print(f"Hershy deploy benchmark: the switch gap of {runs} redeploys on runsc")
    switches = asyncio.run(bench(runs))

    def median(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.0f} ms"

    beyond = statistics.median(s.beyond_start for s in switches)
    print(f"\nmedian of {runs}:")
    print(f"  away from READY (the switch gap)  {median([s.gap for s in switches])}")
    print(f"  the old container stopped         {median([s.stop for s in switches])}")
    print(f"  the new container's own start     {median([s.start for s in switches])}")
    verdict = "OK" if beyond < TARGET_BEYOND_START else "MISS"
    print(
        f"  beyond the new container's start  {beyond * 1000:.0f} ms "
        f"(target < {TARGET_BEYOND_START * 1000:.0f} ms: {verdict})"
    )
    load = "/".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"\nload average at the end {load}; took {time.monotonic() - began:.1f} s")
    return 1 if verdict == "MISS" and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
