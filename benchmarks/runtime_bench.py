"""Start-to-Ready through Hershy next to the same `docker run` done directly, runc and runsc.

    python benchmarks/runtime_bench.py             # 7 timed runs per side and runtime
    python benchmarks/runtime_bench.py --runs 11
    python benchmarks/runtime_bench.py --quick     # smoke run: 3 timed runs each

Needs the real Docker daemon with runsc registered and as its default runtime
(scripts/setup-host.sh), Go at /usr/local/go/bin/go (or on PATH), and root.
Nothing is pulled: the WatcherAPI stub (tests/fixtures/watcher-stub) is built
here into a static binary and a `FROM scratch` image.

What is timed, per runtime (runc, runsc):

- direct: from just before the docker SDK's `containers.run` (create + start, the
  flags `docker_create_args` gives Hershy's compose spec: read-only root, cap-drop
  ALL, no-new-privileges, the /state bind mount, 8080 published on 127.0.0.1, the
  same pids/memory/CPU limits; only the name and labels differ) until
  GET http://127.0.0.1:<port>/watcher/status answers 200.
- hershy: an in-process Host (`running_host`), one program made from the stub;
  from just before `registry.start` until `registry.wait(READY)` returns (the
  registry directly, not gRPC: this measures the runtime path, not the API's
  transport). The image was built by the first start, so timed starts reuse it
  (the build step is an image lookup); the first start is reported apart.

Both sides poll readiness the same way: an aiohttp GET, then a sleep of the same
interval (--poll, default 20 ms; the Host gets it as
`DockerSettings.ready_poll_interval`). --hershy-poll sets the Host's alone, e.g.
0.2 to see what the Host's default interval costs. Timed runs alternate which side goes
first, so drift in the machine's load hits both; one untimed direct run warms
the runtime first. Stopping and removing containers is not timed, and each run
is followed by a short settle pause (gVisor sandboxes finish tearing down in
the background).

The phase table splits the medians by milestone: the daemon's own `create` and
`start` events (Docker's event stream, wall clock), and for Hershy the events
its state machine committed (StartRequested, BuildSucceeded = image looked up,
ContainerCreated = create call returned, ContainerReady).

The daemon may be shared (tests, other Hosts). A timed Hershy run disturbed
from outside (its image removed meanwhile, so rebuilt; its container gone) is
not the start being measured: it is discarded with its direct partner and run
again, and the discards are printed with their reason.

Target (the issue): Hershy adds at most 15 % or 150 ms to the direct median,
whichever is larger. Exit status 0 even on a MISS (it measures); --strict
exits 1 on a MISS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import docker

from hershy.adapters.docker.compose import (
    ContainerRequest,
    compose_spec,
    container_name,
)
from hershy.adapters.docker.engine import DEFAULT_SOCKET, Engine, EngineError
from hershy.adapters.docker.runtime import (
    READY_PATH,
    DockerSettings,
    build_context,
    docker_create_args,
)
from hershy.bootstrap import HostConfig, Runtime, running_host
from hershy.domain.errors import FailedPrecondition
from hershy.domain.model import LogStream, Program, State
from hershy.domain.validation import (
    ResourcePolicy,
    SourceLimits,
    resolve_resources,
    validate_source,
)
from hershy.service.registry import Registry
from hershy.service.watch import Change, Closed, Subscription

REPO = Path(__file__).resolve().parent.parent
STUB_DIR = REPO / "tests" / "fixtures" / "watcher-stub"
BENCH_IMAGE = "hershy-bench/watcher-stub:latest"
#: Direct containers carry this instead of Hershy's labels, so no Host ever sweeps them.
BENCH_LABEL = "dev.hershy.bench"
TARGET_FRACTION = 0.15
TARGET_FLOOR_SECONDS = 0.150
READY_TIMEOUT = 60.0
#: After each run: lets a removed sandbox finish tearing down before the next start.
SETTLE_SECONDS = 0.3
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=2)  # what the Host's readiness probe uses


# --- what is measured -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Polling:
    """Seconds between readiness probes: the direct side's and the Host's."""

    direct: float
    hershy: float

    def describe(self) -> str:
        if self.direct == self.hershy:
            return f"poll every {self.direct * 1000:g} ms on both sides"
        return (
            f"poll every {self.direct * 1000:g} ms direct, {self.hershy * 1000:g} ms in the Host: "
            "NOT the same, the difference is part of the overhead"
        )


@dataclass(slots=True)
class Sample:
    """One timed start; milestones are seconds after the start request (wall clock)."""

    seconds: float
    milestones: dict[str, float] = field(default_factory=dict)
    #: Why this run does not count (the image was rebuilt, the run crashed); None: it counts.
    discarded: str | None = None


@dataclass(slots=True)
class Series:
    runtime: str
    side: str
    samples: list[Sample] = field(default_factory=list)
    #: Why runs were thrown away (and run again).
    discards: list[str] = field(default_factory=list)

    @property
    def times(self) -> list[float]:
        return [sample.seconds for sample in self.samples]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def milestone_median(self, name: str) -> float | None:
        values = [s.milestones[name] for s in self.samples if name in s.milestones]
        # Only when every run has it: a median over some runs would mislead.
        return statistics.median(values) if len(values) == len(self.samples) else None


@dataclass(slots=True)
class RuntimeResult:
    runtime: str
    direct: Series
    hershy: Series
    first_direct: float
    first_hershy: float

    @property
    def overhead(self) -> float:
        return self.hershy.median - self.direct.median

    @property
    def paired_overhead(self) -> float:
        """The median of (hershy - direct) over the pairs run back to back: less noisy."""
        pairs = zip(self.hershy.times, self.direct.times, strict=True)
        return statistics.median(hershy - direct for hershy, direct in pairs)

    @property
    def allowed(self) -> float:
        return max(TARGET_FRACTION * self.direct.median, TARGET_FLOOR_SECONDS)

    @property
    def passed(self) -> bool:
        return self.overhead <= self.allowed


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


class DockerEvents:
    """The daemon's container `create` and `start` events, by container name, as they come."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[str, float]] = {}
        self._engine = Engine(DEFAULT_SOCKET)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> DockerEvents:
        # `since` now: events the stream would miss while it connects are replayed.
        self._task = asyncio.create_task(self._collect(time.time()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._engine.close()

    async def _collect(self, since: float) -> None:
        filters = {"type": ["container"], "event": ["create", "start"]}
        try:
            async for message in self._engine.events(filters, since):
                name = message.get("Actor", {}).get("Attributes", {}).get("name", "")
                action = str(message.get("Action", ""))
                self.seen.setdefault(name, {})[action] = message.get("timeNano", 0) / 1e9
        except (EngineError, aiohttp.ClientError) as error:
            print(f"  (Docker events stream ended: {error}; phases will be incomplete)")

    async def of(self, name: str, wait: float = 1.0) -> dict[str, float]:
        """The events of container `name`; waits briefly, as the stream may lag the API."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if {"create", "start"} <= self.seen.get(name, {}).keys():
                break
            await asyncio.sleep(0.01)
        return dict(self.seen.get(name, {}))


# --- building the stub -------------------------------------------------------------------


def go_binary() -> str:
    for candidate in (shutil.which("go"), "/usr/local/go/bin/go"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    sys.exit("no Go toolchain: install Go or put it on PATH (/usr/local/go/bin/go)")


def build_stub(workdir: Path) -> bytes:
    """The stub as a static binary, built into `workdir` (the fixture folder is left alone)."""
    output = workdir / "watcher-stub"
    subprocess.run(
        [go_binary(), "build", "-ldflags=-s -w", "-o", str(output), "."],
        cwd=STUB_DIR,
        # GOTOOLCHAIN=local: never fetch another toolchain (no network needed).
        env={**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"},
        check=True,
    )
    return output.read_bytes()


def build_image(client: Any, context: bytes) -> None:
    """The direct side's image, from the very build context Hershy sends the daemon."""
    for attempt in range(3):
        try:
            client.images.build(
                fileobj=io.BytesIO(context),
                custom_context=True,
                tag=BENCH_IMAGE,
                rm=True,
                forcerm=True,
                pull=False,
                network_mode="none",
                labels={BENCH_LABEL: "true"},
            )
            return
        except docker.errors.BuildError as error:
            # On a shared daemon, an image the build cache points at can vanish mid-build.
            if attempt == 2:
                raise BenchError(f"building {BENCH_IMAGE} failed: {error}") from None


# --- the two sides --------------------------------------------------------------------------


def free_port() -> int:
    """A port nobody listens on right now, outside Hershy's range (bound to 0, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def until_ready(http: aiohttp.ClientSession, port: int, poll: float) -> None:
    """The Host's readiness loop (DockerEffectHandler._until_ready), line for line."""
    url = f"http://127.0.0.1:{port}{READY_PATH}"
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            async with http.get(url) as response:
                if 200 <= response.status < 300:
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(poll)
    raise BenchError(f"the stub on 127.0.0.1:{port} did not answer within {READY_TIMEOUT:g} s")


class Direct:
    """`docker run -d` with Hershy's flags, then poll; the container is removed after."""

    def __init__(self, client: Any, runtime: str, http: aiohttp.ClientSession, poll: float):
        self._client, self._runtime, self._http, self._poll = client, runtime, http, poll
        self._count = 0
        self._resources = resolve_resources(0, 0, 0, ResourcePolicy())

    def _arguments(self, state_dir: Path, port: int) -> dict[str, Any]:
        self._count += 1
        spec = compose_spec(
            ContainerRequest(
                host_id="bench",
                program_id=f"bench-{os.getpid()}",
                run=self._count,
                build_id="direct",
                image=BENCH_IMAGE,
                host_port=port,
                state_dir=str(state_dir),
                resources=self._resources,
                runtime=self._runtime,
            )
        )
        arguments = docker_create_args(spec)
        arguments["name"] = f"hershy-bench-direct-{self._runtime}-{os.getpid()}-{self._count}"
        arguments["labels"] = {BENCH_LABEL: "true"}
        return arguments

    async def run(self, events: DockerEvents, scratch: Path) -> Sample:
        state_dir = Path(tempfile.mkdtemp(dir=scratch, prefix="state-"))
        port = free_port()
        arguments = self._arguments(state_dir, port)
        wall, began = time.time(), time.perf_counter()
        container = await asyncio.to_thread(self._client.containers.run, **arguments)
        try:
            await until_ready(self._http, port, self._poll)
            sample = Sample(time.perf_counter() - began)
            sample.milestones["ready seen"] = time.time() - wall
        finally:
            await asyncio.to_thread(container.remove, force=True)
        for action, at in (await events.of(arguments["name"])).items():
            sample.milestones[f"docker {action}"] = at - wall
        return sample


class ThroughHershy:
    """StartProgram and Wait(READY) on the Host's registry; then Stop and Wait(STOPPED)."""

    def __init__(self, registry: Registry, program_id: str) -> None:
        self._registry, self._program_id = registry, program_id

    async def run(self, events: DockerEvents) -> Sample:
        # Subscribed before the start, so every change of this run is seen (with its stamp).
        subscription = self._registry.hub.subscribe(self._program_id, capacity=1000)
        collector = asyncio.create_task(_until_ready_change(subscription))
        failed: str | None = None
        try:
            wall, began = time.time(), time.perf_counter()
            await self._registry.start(self._program_id)
            try:
                program = await self._registry.wait(self._program_id, State.READY, READY_TIMEOUT)
            except FailedPrecondition as error:  # it went to ERROR
                program, failed = self._registry.get(self._program_id), str(error)
            sample = Sample(time.perf_counter() - began)
            sample.milestones["ready seen"] = time.time() - wall
            committed = await asyncio.wait_for(collector, timeout=5)
        finally:
            collector.cancel()
            subscription.unsubscribe()
        for change in committed:
            if change.program.run == program.run:
                sample.milestones.setdefault(type(change.event).__name__, change.event.at - wall)
        sample.discarded = failed or await self._why_not_clean(program, committed)
        name = container_name(self._program_id, program.run)
        for action, at in (await events.of(name)).items():
            sample.milestones[f"docker {action}"] = at - wall
        await self._registry.stop(self._program_id)
        await self._registry.wait(self._program_id, State.STOPPED, READY_TIMEOUT)
        return sample

    async def _why_not_clean(self, program: Program, committed: list[Change]) -> str | None:
        """Why this run is not the plain reuse-the-image start it should be; None if it is.

        Something else on a shared daemon may remove the image (this Host then rebuilds it)
        or the container (it dies while starting); e.g. a Host that reaps what it takes for
        orphans.
        """
        states = [change.program.state for change in committed]
        if State.BACKOFF in states:
            return "its container exited while starting (removed by someone else?)"
        notes = [
            line.text
            async for line in self._registry.logs(
                self._program_id, None, frozenset({LogStream.BUILD}), False
            )
            if line.run == program.run
        ]
        if not any(note.startswith("reusing image") for note in notes):
            return "the image was rebuilt (removed meanwhile by someone else)"
        return None


async def _until_ready_change(subscription: Subscription) -> list[Change]:
    """The changes a subscription sees up to and including the one to READY."""
    seen: list[Change] = []
    while True:
        change = await subscription.next()
        if isinstance(change, Change):
            seen.append(change)
            if change.program.state in (State.READY, State.ERROR):
                return seen
        elif change is Closed.CLOSED:
            return seen


# --- one runtime ---------------------------------------------------------------------------------


async def new_program(registry: Registry, dockerfile: str, binary: bytes) -> Program:
    """A program from the stub. The runtime places it on a free port at every start (and
    moves on if Docker finds that port taken), so other Hosts on the daemon do not matter."""
    return await registry.create("bench", dockerfile, {"watcher-stub": binary})


async def bench_runtime(
    runtime: Runtime, client: Any, dockerfile: str, binary: bytes, runs: int, poll: Polling
) -> RuntimeResult:
    with tempfile.TemporaryDirectory(prefix=f"hershy-bench-{runtime.value}-") as temporary:
        scratch = Path(temporary)
        data_dir = scratch / "data"
        config = HostConfig(
            data_dir=data_dir,
            runtime=runtime,
            allow_insecure_runtime=runtime is Runtime.RUNC,
            # Port 0: whatever is free, so a Host already serving here is no obstacle.
            grpc_addr="127.0.0.1:0",
            http_addr="127.0.0.1:0",
            no_auth=True,  # these talk to the registry (or test tokens elsewhere)
            docker=DockerSettings(ready_poll_interval=poll.hershy),
        )
        direct_series, hershy_series = (
            Series(runtime.value, "direct"),
            Series(runtime.value, "hershy"),
        )
        async with (
            aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http,
            DockerEvents() as events,
            running_host(config) as (registry, _server),
        ):
            direct = Direct(client, runtime.value, http, poll.direct)
            first_direct = (await direct.run(events, scratch)).seconds
            await asyncio.sleep(SETTLE_SECONDS)
            program = await new_program(registry, dockerfile, binary)
            hershy = ThroughHershy(registry, program.id)
            try:
                first = await hershy.run(events)
                if first.discarded and "rebuilt" not in first.discarded:
                    # The timed runs retry such a start; the first one has no spare.
                    print(f"  {runtime.value}: the first start failed: {first.discarded}")
                first_hershy = first.seconds
                attempts = 0
                while len(hershy_series.samples) < runs:
                    attempts += 1
                    if attempts > 3 * runs:
                        raise BenchError(
                            f"{attempts - 1} attempts gave only {len(hershy_series.samples)} "
                            f"clean Hershy starts: {hershy_series.discards}"
                        )
                    await asyncio.sleep(SETTLE_SECONDS)
                    # Alternate who goes first, so a drift in load hits both sides alike.
                    index = len(hershy_series.samples)
                    if index % 2 == 0:
                        direct_sample = await direct.run(events, scratch)
                        await asyncio.sleep(SETTLE_SECONDS)
                        hershy_sample = await hershy.run(events)
                    else:
                        hershy_sample = await hershy.run(events)
                        await asyncio.sleep(SETTLE_SECONDS)
                        direct_sample = await direct.run(events, scratch)
                    if hershy_sample.discarded:
                        # Both go: the pair is what keeps the two sides under the same load.
                        hershy_series.discards.append(hershy_sample.discarded)
                        print(f"  {runtime.value}: run discarded: {hershy_sample.discarded}")
                        continue
                    direct_series.samples.append(direct_sample)
                    hershy_series.samples.append(hershy_sample)
                    print(
                        f"  {runtime.value} run {index + 1}/{runs}: "
                        f"direct {_ms(direct_sample.seconds)}, hershy {_ms(hershy_sample.seconds)}",
                        flush=True,
                    )
            finally:
                await registry.delete(program.id)
                await registry.wait(program.id, State.DELETED, READY_TIMEOUT)
    return RuntimeResult(runtime.value, direct_series, hershy_series, first_direct, first_hershy)


# --- reporting -----------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def print_results(results: list[RuntimeResult], poll: Polling, detail: bool) -> None:
    print(f"\n== start -> Ready ({poll.describe()})")
    header = f"{'runtime':<8} {'side':<7} {'runs':>4} {'median':>9} {'min':>9} {'max':>9}"
    print(header)
    print("-" * len(header))
    for result in results:
        for series in (result.direct, result.hershy):
            times = series.times
            print(
                f"{series.runtime:<8} {series.side:<7} {len(times):>4} "
                f"{_ms(series.median):>9} {_ms(min(times)):>9} {_ms(max(times)):>9}"
            )
    print()
    for result in results:
        percent = 100 * result.overhead / result.direct.median
        print(
            f"{result.runtime:<6} Hershy adds {result.overhead * 1000:+.0f} ms ({percent:+.1f} %) "
            f"to the direct median; target <= {_ms(result.allowed)} "
            f"(15 % or 150 ms, the larger): {'PASS' if result.passed else 'MISS'}"
        )
        print(
            f"{'':<6} (median of the per-pair differences, same-load neighbours: "
            f"{result.paired_overhead * 1000:+.0f} ms)"
        )
    print()
    for result in results:
        print(
            f"{result.runtime:<6} first start (untimed warm-up): "
            f"direct {_ms(result.first_direct)}, hershy with image build {_ms(result.first_hershy)}"
        )
    for result in results:
        if result.hershy.discards:
            reasons = sorted(set(result.hershy.discards))
            print(
                f"{result.runtime:<6} {len(result.hershy.discards)} disturbed runs discarded and "
                f"run again: {'; '.join(reasons)}"
            )
    print_phases(results, detail)


MILESTONES = [
    ("StartRequested", "start requested"),
    ("BuildSucceeded", "image looked up"),
    ("docker create", "docker: created"),
    ("ContainerCreated", "create returned"),
    ("docker start", "docker: started"),
    ("ContainerReady", "ready (handler)"),
    ("ready seen", "ready seen"),
]


def print_phases(results: list[RuntimeResult], detail: bool) -> None:
    print("\n== where the time goes: median ms after the start request, per milestone")
    print("   (medians of each column: they need not add up along a row)")
    labels = [label for _, label in MILESTONES]
    print(f"{'runtime':<8} {'side':<7} " + " ".join(f"{label:>16}" for label in labels))

    def row(head: str, value_of: Callable[[str], float | None]) -> str:
        cells = []
        for key, _ in MILESTONES:
            value = value_of(key)
            cells.append(f"{value * 1000:>16.0f}" if value is not None else f"{'-':>16}")
        return head + " ".join(cells)

    for result in results:
        for series in (result.direct, result.hershy):
            print(row(f"{series.runtime:<8} {series.side:<7} ", series.milestone_median))
            if detail:
                for number, sample in enumerate(series.samples, 1):
                    print(row(f"{'':<8} {'#' + str(number):<7} ", sample.milestones.get))


def machine_info(client: Any) -> list[str]:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = client.info()
    runsc = (info.get("Runtimes") or {}).get("runsc", {})
    runsc_version = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        runsc_version = subprocess.run(
            [runsc.get("path", "runsc"), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.split("\n", 1)[0]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return [
        f"machine: {platform.system()} {platform.release()} {platform.machine()}, {cpu}, "
        f"{os.cpu_count()} cores, {memory:.1f} GiB",
        f"python {sys.version.split()[0]}, docker SDK {docker.__version__}, aiohttp "
        f"{aiohttp.__version__}",
        f"Docker {info.get('ServerVersion')} ({info.get('Driver')}, cgroup "
        f"{info.get('CgroupVersion')}, default runtime {info.get('DefaultRuntime')}); "
        f"runsc {runsc.get('path')} {runsc.get('runtimeArgs') or []}: {runsc_version}",
        f"load average {'/'.join(f'{v:.2f}' for v in os.getloadavg())}; other containers "
        f"running on this daemon: {info.get('ContainersRunning')}",
    ]


@contextlib.contextmanager
def docker_client() -> Iterator[Any]:
    client = docker.DockerClient(base_url=f"unix://{DEFAULT_SOCKET}")
    try:
        yield client
    finally:
        client.close()


@contextlib.asynccontextmanager
async def bench_image(client: Any, context: bytes) -> AsyncIterator[None]:
    await asyncio.to_thread(build_image, client, context)
    try:
        yield
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            await asyncio.to_thread(client.images.remove, BENCH_IMAGE, force=True)


async def bench(runs: int, poll: Polling, runtimes: list[Runtime]) -> list[RuntimeResult]:
    with docker_client() as client, tempfile.TemporaryDirectory(prefix="hershy-bench-") as work:
        for line in machine_info(client):
            print("  " + line)
        started = time.perf_counter()
        binary = await asyncio.to_thread(build_stub, Path(work))
        dockerfile = (STUB_DIR / "Dockerfile").read_text()
        source = validate_source(dockerfile, {"watcher-stub": binary}, SourceLimits())
        print(f"  stub built: {len(binary) / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s")
        results = []
        async with bench_image(client, build_context(source)):
            for runtime in runtimes:
                print(f"\n== {runtime.value}: {runs} timed runs per side", flush=True)
                results.append(await bench_runtime(runtime, client, dockerfile, binary, runs, poll))
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per side and runtime")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 timed runs")
    parser.add_argument(
        "--poll", type=float, default=0.02, help="readiness poll interval, both sides (s)"
    )
    parser.add_argument(
        "--runtimes", default="runc,runsc", help="comma-separated: runc, runsc (default both)"
    )
    parser.add_argument(
        "--hershy-poll", type=float, default=None, help="the Host's alone (default: --poll)"
    )
    parser.add_argument("--detail", action="store_true", help="print every run's milestones")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    runs = 3 if args.quick else args.runs
    poll = Polling(
        direct=args.poll, hershy=args.poll if args.hershy_poll is None else args.hershy_poll
    )
    if runs < 1:
        parser.error("--runs must be at least 1")
    runtimes = [Runtime(name.strip()) for name in args.runtimes.split(",") if name.strip()]
    if Runtime.FAKE in runtimes:
        parser.error("--runtimes: runc or runsc (the fake runtime runs no containers)")

    began = time.monotonic()
    print(f"Hershy runtime benchmark: start -> Ready, {runs} runs per side and runtime")
    results: list[RuntimeResult] = []
    failures: list[str] = []
    try:
        results = asyncio.run(bench(runs, poll, runtimes))
    except* BenchError as group:
        # The Host's task groups wrap what is raised inside them.
        failures = [str(error) for error in group.exceptions]
    if failures:
        print("runtime_bench: " + "; ".join(failures), file=sys.stderr)
        return 2
    print_results(results, poll, args.detail)
    load = "/".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"\nload average at the end {load}; took {time.monotonic() - began:.1f} s")
    misses = [result.runtime for result in results if not result.passed]
    return 1 if misses and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
