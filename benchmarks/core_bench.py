"""Benchmarks of the Hershy core: measures and prints, one line per figure.

    python benchmarks/core_bench.py            # full run (about a minute)
    python benchmarks/core_bench.py --quick    # CI smoke run: smaller counts, every figure
    python benchmarks/core_bench.py --detail   # also print where the time and memory go

Figures, each printed with its target and PASS/MISS:

1. Reducer throughput: `reducer.reduce` over a repeating, realistic lifecycle
   (start, build, container up, ready, crash, restart timer, ready again, stop),
   pure calls in a tight loop.
2. GetProgram latency over a real gRPC loopback channel. The Host (fake
   runtime) runs in this process; the client runs in a separate process
   (multiprocessing, spawn), so client CPU is not charged to the server.
3. Watch fan-out: subscribers (WatchPrograms streams) live in separate client
   processes (async, many streams on one channel). Once all of them have the
   TYPE_SYNCED message, the benchmark commits one change (Start or Stop through
   the registry, in the Host process) and measures from just before the change
   until the last subscriber has received it (TYPE_UPDATED). The fake runtime's
   build and stop take ISOLATION_SECONDS meanwhile, so that change is the only
   one in flight; the next one starts once every subscriber has the last. Both
   ends read CLOCK_MONOTONIC (`time.monotonic_ns`), which is system-wide on
   Linux, so stamps of different processes are comparable. The receive stamp is
   taken in the client as the message comes out of the stream, so the client's
   own gRPC work is included: on a machine with few cores the clients compete
   with the Host for CPU (CPU time per change is printed for both sides).
   Also printed: a burst (Start with no fake delays: 4 changes back to back).
4. Memory per idle program: in a fresh process, RSS (/proc/self/statm) and
   tracemalloc's traced size before and after creating the programs through the
   registry of a fake-runtime Host (sources on disk), idle in CREATED, then
   READY. RSS and tracemalloc are read in two separate fresh processes.

The exit status is 0 even if a target is missed (it measures, it does not
judge); pass --strict to exit 1 on a miss.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import gc
import io
import multiprocessing
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from hershy.adapters.fake_runtime import FakeBehaviour
from hershy.bootstrap import HostConfig, Runtime, running_host
from hershy.domain import events as ev
from hershy.domain import reducer
from hershy.domain.errors import NotFound
from hershy.domain.model import Program, State
from hershy.service.registry import Registry
from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc

# The fake runtime builds nothing, but the build policy still holds: an allowlisted base.
DOCKERFILE = 'FROM hershy-busybox:latest\nCOPY app.py /app.py\nCMD ["python", "/app.py"]\n'
SRC_FILES = {"app.py": b"import time\nwhile True:\n    time.sleep(1)\n"}
SYNCED = pb.WatchProgramsResponse.TYPE_SYNCED
CHANGE_TYPES = frozenset(
    {
        pb.WatchProgramsResponse.TYPE_CREATED,
        pb.WatchProgramsResponse.TYPE_UPDATED,
        pb.WatchProgramsResponse.TYPE_DELETED,
    }
)
SPAWN = multiprocessing.get_context("spawn")


@dataclass(frozen=True, slots=True)
class Settings:
    reducer_seconds: float
    latency_warmup: int
    latency_calls: int
    subscribers: int
    subscriber_processes: int
    fanout_rounds: int
    memory_programs: int


FULL = Settings(
    reducer_seconds=1.5,
    latency_warmup=500,
    latency_calls=5_000,
    subscribers=1_000,
    subscriber_processes=2,
    fanout_rounds=10,
    memory_programs=1_000,
)
QUICK = Settings(
    reducer_seconds=0.3,
    latency_warmup=100,
    latency_calls=1_000,
    subscribers=1_000,
    subscriber_processes=2,
    fanout_rounds=2,
    memory_programs=200,
)


# --- reporting ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Figure:
    name: str
    value: float
    unit: str
    #: (">=" or "<=", bound); None: informational, no target.
    target: tuple[str, float] | None = None
    note: str = ""

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        op, bound = self.target
        return self.value >= bound if op == ">=" else self.value <= bound

    def line(self) -> str:
        value = f"{_num(self.value)} {self.unit}"
        if self.target is None:
            target, verdict = "(no target)", "INFO"
        else:
            target = f"target {self.target[0]} {_num(self.target[1])} {self.unit}"
            verdict = "PASS" if self.passed else "MISS"
        note = f"  [{self.note}]" if self.note else ""
        return f"{self.name:<48} {value:>16}   {target:<30} {verdict}{note}"


@dataclass(slots=True)
class Report:
    figures: list[Figure] = field(default_factory=list)

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        print(figure.line(), flush=True)

    @property
    def misses(self) -> list[Figure]:
        return [f for f in self.figures if f.passed is False]


def _num(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def _percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile of unsorted samples."""
    ordered = sorted(samples)
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def _machine_info() -> list[str]:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    clock = time.get_clock_info("monotonic").implementation
    return [
        f"machine: {platform.system()} {platform.release()} {platform.machine()}, {cpu}",
        f"cores: {os.cpu_count()} (usable by this process: {usable})",
        f"python: {sys.version.split()[0]} ({platform.python_implementation()}), "
        f"grpcio {grpc.__version__}, monotonic clock: {clock}",
    ]


def other_load(seconds: float = 0.5) -> str:
    """How busy the machine is with other work, sampled while this process sleeps."""
    try:
        before = _cpu_ticks()
        time.sleep(seconds)
        after = _cpu_ticks()
    except OSError:
        return f"load average (1 min) {os.getloadavg()[0]:.2f}"
    busy_ticks, total_ticks = (a - b for a, b in zip(after, before, strict=True))
    busy = busy_ticks / max(total_ticks, 1)
    cores = os.cpu_count() or 1
    text = f"other work uses {busy:.0%} of the {cores} cores' time"
    if busy > 0.1:
        text += " (BUSY: timing figures are pessimistic)"
    return text


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, already counted in user
    return total - idle, total


def host_config(data_dir: Path) -> HostConfig:
    """A fake-runtime Host on free loopback ports."""
    return HostConfig(
        data_dir=data_dir,
        runtime=Runtime.FAKE,
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        no_auth=True,  # these talk to the registry (or test tokens elsewhere)
    )


# --- 1. reducer ---------------------------------------------------------------


def lifecycle(cycles: int) -> tuple[Program, list[ev.Event]]:
    """A fresh program and `cycles` repetitions of a realistic lifecycle.

    Per cycle (14 events): start, build, container created, ready, a Start
    refused while READY, a crash, the crashed container removed, the restart
    timer, container created, ready, a late result of the crashed run, stop,
    the container's exit during the stop, container stopped. 11 are
    transitions, 2 are ignored, 1 is refused.
    """
    clock = 1_700_000_000.0

    def at() -> float:
        nonlocal clock
        clock += 1.0
        return clock

    created = ev.ProgramCreated(at(), "prog-0123456789ab", "bench", "b-" + "0" * 24, "127.0.0.1:1")
    events: list[ev.Event] = []
    run = 0
    for _ in range(cycles):
        run += 1
        events += [
            ev.StartRequested(at()),
            ev.BuildSucceeded(at(), run, "sha256:" + "a" * 64),
            ev.ContainerCreated(at(), run, f"c{run:063d}"),
            ev.ContainerReady(at(), run),
            ev.StartRequested(at()),
            ev.ContainerExited(at(), run, 1),
            ev.ContainerStopped(at(), run),
            ev.RestartTimerFired(at(), run),
        ]
        run += 1
        events += [
            ev.ContainerCreated(at(), run, f"c{run:063d}"),
            ev.ContainerReady(at(), run),
            ev.ContainerReady(at(), run - 1),
            ev.StopRequested(at()),
            ev.ContainerExited(at(), run, 143),
            ev.ContainerStopped(at(), run),
        ]
    return reducer.create(created), events


def replay(program: Program, events: list[ev.Event]) -> Program:
    """The tight loop: apply every event, keep the program of each transition."""
    reduce, transition = reducer.reduce, reducer.Transition
    for event in events:
        outcome = reduce(program, event)
        if isinstance(outcome, transition):
            program = outcome.program
    return program


def _check_lifecycle(program: Program, events: list[ev.Event]) -> str:
    """Asserts the sequence does what it claims; returns the outcome mix."""
    counts: dict[str, int] = defaultdict(int)
    for event in events:
        outcome = reducer.reduce(program, event)
        counts[type(outcome).__name__] += 1
        if isinstance(outcome, reducer.Transition):
            program = outcome.program
    if program.state is not State.STOPPED or counts["Transition"] != 11 * len(events) // 14:
        raise RuntimeError(
            f"the benchmark's lifecycle no longer matches the reducer (ends {program.state.name}, "
            f"outcomes {dict(counts)}): update lifecycle() in {__file__}"
        )
    total = len(events)
    return ", ".join(f"{counts[k] * 100 // total}% {k.lower()}" for k in sorted(counts))


def bench_reducer(report: Report, settings: Settings, detail: bool) -> None:
    initial, events = lifecycle(cycles=100)
    mix = _check_lifecycle(initial, events)
    replay(initial, events)  # warm-up
    done = 0
    best = 0.0  # the fastest single pass: what the code does when the CPU is all ours
    start = time.perf_counter()
    deadline = start + settings.reducer_seconds
    now = start
    while now < deadline:
        replay(initial, events)
        done += len(events)
        previous, now = now, time.perf_counter()
        best = max(best, len(events) / (now - previous))
    rate = done / (now - start)
    report.add(
        Figure(
            "reducer throughput",
            rate,
            "events/s",
            (">=", 100_000),
            f"{done:,} events in {now - start:.2f} s, {1e6 / rate:.2f} us/event; "
            f"fastest pass of {len(events):,}: {best:,.0f} events/s; {mix}",
        )
    )
    if detail:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(200):
            replay(initial, events)
        profiler.disable()
        _print_profile(profiler, "reducer loop", 14)


def _print_profile(profiler: cProfile.Profile, title: str, lines: int) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(lines)
    print(f"--- cProfile: {title} (sorted by own time) ---")
    for line in out.getvalue().splitlines():
        if line.strip() and not line.startswith(("   Ordered", "         ")):
            print("    " + line)


# --- 2. GetProgram latency ------------------------------------------------------


def latency_client(address: str, name: str, warmup: int, calls: int) -> list[int]:
    """Runs in a spawned process: sequential GetProgram calls; latencies in ns."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ProgramServiceStub(channel)
        request = pb.GetProgramRequest(name=name)
        for _ in range(warmup):
            stub.GetProgram(request, timeout=10)
        samples = []
        for _ in range(calls):
            begin = time.perf_counter_ns()
            stub.GetProgram(request, timeout=10)
            samples.append(time.perf_counter_ns() - begin)
    return samples


async def bench_latency(
    report: Report, settings: Settings, registry: Registry, address: str
) -> None:
    # A program with every field set, as a client would usually see it.
    program = await registry.create("bench", DOCKERFILE, SRC_FILES)
    await registry.start(program.id)
    await registry.wait(program.id, State.READY, 10)
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(max_workers=1, mp_context=SPAWN) as pool:
        samples_ns = await loop.run_in_executor(
            pool,
            latency_client,
            address,
            f"programs/{program.id}",
            settings.latency_warmup,
            settings.latency_calls,
        )
    samples = [s / 1e6 for s in samples_ns]
    how = f"{len(samples):,} sequential calls after {settings.latency_warmup} warm-up, "
    how += "client in a separate process"
    report.add(Figure("GetProgram latency p50", _percentile(samples, 0.50), "ms", None, how))
    report.add(Figure("GetProgram latency p99", _percentile(samples, 0.99), "ms", ("<=", 5.0)))
    report.add(
        Figure(
            "GetProgram latency max",
            max(samples),
            "ms",
            None,
            f"mean {statistics.fmean(samples):.3f} ms, "
            f"{1000 / statistics.fmean(samples):,.0f} calls/s sequential",
        )
    )


# --- 3. Watch fan-out -----------------------------------------------------------

#: Build and stop delays of the fake runtime while a single change is measured: the
#: change is then the only one in flight (the next one, the build's or the stop's
#: result, comes this much later).
ISOLATION_SECONDS = 0.5


def fanout_client(address: str, streams: int, conn: Connection) -> None:
    """Runs in a spawned process: holds `streams` Watch streams on one channel."""
    asyncio.run(_fanout_client(address, streams, conn))


async def _fanout_client(address: str, streams: int, conn: Connection) -> None:
    """Answers ("collect", revisions) with, per revision, (receivers, first, last stamp),
    and ("cpu", []) with this process's CPU seconds; anything else ends it."""
    #: revision -> receive stamps (monotonic ns), one per stream.
    received: dict[int, list[int]] = defaultdict(list)
    complete: dict[int, asyncio.Event] = defaultdict(asyncio.Event)
    synced = 0
    all_synced = asyncio.Event()
    errors: list[str] = []

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ProgramServiceStub(channel)

        async def follow() -> None:
            nonlocal synced
            try:
                async for message in stub.WatchPrograms(pb.WatchProgramsRequest()):
                    stamp = time.monotonic_ns()
                    if message.type in CHANGE_TYPES:
                        stamps = received[message.revision]
                        stamps.append(stamp)
                        if len(stamps) == streams:
                            complete[message.revision].set()
                    elif message.type == SYNCED:
                        synced += 1
                        if synced == streams:
                            all_synced.set()
                    elif message.type == pb.WatchProgramsResponse.TYPE_RESYNC:
                        errors.append("a subscriber fell behind and was told to resync")
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.CANCELLED:
                    errors.append(f"stream failed: {error.code().name} {error.details()}")
                    all_synced.set()

        tasks = [asyncio.create_task(follow()) for _ in range(streams)]
        await all_synced.wait()
        conn.send(("synced", synced, errors))
        while True:
            command: tuple[str, list[int]] = await asyncio.to_thread(conn.recv)
            if command[0] == "cpu":
                conn.send(time.process_time())
                continue
            if command[0] != "collect":
                break
            result: dict[int, tuple[int, int, int]] = {}
            for revision in command[1]:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):
                        await complete[revision].wait()
                stamps = received.pop(revision, [])
                complete.pop(revision, None)
                result[revision] = (len(stamps), min(stamps, default=0), max(stamps, default=0))
            conn.send((result, errors, time.process_time()))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _recv(conn: Connection, seconds: float) -> Any:
    if not conn.poll(seconds):
        raise TimeoutError(f"no answer from a fan-out client within {seconds} s")
    return conn.recv()


def _ask(conn: Connection, command: str, revisions: list[int]) -> Any:
    conn.send((command, revisions))
    return _recv(conn, 30)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One change (or burst of changes), as the subscribers received it."""

    first_ms: float  # from just before the change until the first subscriber had it
    last_ms: float  # ... until the last subscriber had it (the last change of a burst)
    changes: int
    host_cpu_ms: float  # CPU time of the Host process (all threads) meanwhile
    client_cpu_ms: float  # CPU time of all client processes meanwhile


class FanoutClients:
    """The subscriber processes, seen from the Host process."""

    def __init__(self, address: str, subscribers: int, processes: int) -> None:
        self.count = subscribers
        shares = [
            subscribers // processes + (i < subscribers % processes) for i in range(processes)
        ]
        self._conns: list[Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        for share in shares:
            parent, child = SPAWN.Pipe()
            process = SPAWN.Process(target=fanout_client, args=(address, share, child), daemon=True)
            process.start()
            child.close()
            self._conns.append(parent)
            self._processes.append(process)

    async def synced(self) -> None:
        for conn in self._conns:
            _, _synced, errors = await asyncio.to_thread(_recv, conn, 60)
            if errors:
                raise RuntimeError(f"fan-out client: {errors[0]}")

    async def _all(self, command: str, revisions: list[int]) -> list[Any]:
        return await asyncio.gather(
            *(asyncio.to_thread(_ask, conn, command, revisions) for conn in self._conns)
        )

    async def delivered(self, revision: int) -> None:
        """Returns once every subscriber has `revision`."""
        for result, errors, _cpu in await self._all("collect", [revision]):
            if errors or result[revision][0] == 0:
                raise RuntimeError(f"fan-out client: {errors[0] if errors else 'timed out'}")

    async def measure(
        self,
        change: Callable[[], Awaitable[list[int]]],
        profiler: cProfile.Profile | None = None,
    ) -> Delivery:
        """Makes the change (which returns the revisions to follow) and times its delivery."""
        await asyncio.sleep(0.05)  # let earlier traffic drain
        gc.collect()
        client_cpu = sum(await self._all("cpu", []))
        host_cpu = time.process_time()
        if profiler:
            profiler.enable()
        begin = time.monotonic_ns()
        revisions = await change()
        answers = await self._all("collect", revisions)
        if profiler:
            profiler.disable()
        host_cpu = time.process_time() - host_cpu
        client_cpu = sum(answer[2] for answer in answers) - client_cpu
        got: dict[int, tuple[int, int, int]] = {}
        for result, errors, _cpu in answers:
            if errors:
                raise RuntimeError(f"fan-out client: {errors[0]}")
            for revision, (n, first, last) in result.items():
                total, first_all, last_all = got.get(revision, (0, sys.maxsize, 0))
                got[revision] = (total + n, min(first, first_all), max(last, last_all))
        for revision in revisions:
            if got[revision][0] != self.count:
                raise RuntimeError(
                    f"revision {revision} reached {got[revision][0]} of {self.count}"
                )
        return Delivery(
            first_ms=(got[revisions[0]][1] - begin) / 1e6,
            last_ms=(got[revisions[-1]][2] - begin) / 1e6,
            changes=revisions[-1] - revisions[0] + 1,
            host_cpu_ms=host_cpu * 1e3,
            client_cpu_ms=client_cpu * 1e3,
        )

    async def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(("stop", []))
        for process in self._processes:
            await asyncio.to_thread(process.join, 10)
            if process.is_alive():
                process.kill()


async def bench_fanout(
    report: Report,
    settings: Settings,
    registry: Registry,
    address: str,
    behaviour: FakeBehaviour,
    detail: bool,
) -> None:
    program_id = (await registry.create("bench", DOCKERFILE, SRC_FILES)).id
    count, nproc = settings.subscribers, settings.subscriber_processes
    before = registry.hub.subscriber_count
    opened = time.monotonic()
    clients = FanoutClients(address, count, nproc)
    single: list[Delivery] = []
    bursts: list[Delivery] = []
    profiler = cProfile.Profile() if detail else None

    async def one(action: Callable[[str], Awaitable[Program]]) -> list[int]:
        return [(await action(program_id)).revision]

    async def cascade(action: Callable[[str], Awaitable[Program]], final: State) -> list[int]:
        first = await action(program_id)
        return [first.revision, (await registry.wait(program_id, final, 10)).revision]

    try:
        await clients.synced()
        setup_s = time.monotonic() - opened
        subscribed = registry.hub.subscriber_count - before
        assert subscribed == count, f"{subscribed} subscribers, expected {count}"
        for _ in range(settings.fanout_rounds):
            for action, final in ((registry.start, State.READY), (registry.stop, State.STOPPED)):
                # One change on its own: the build/stop it asks for takes a while.
                behaviour.build_delay = behaviour.stop_delay = ISOLATION_SECONDS
                single.append(await clients.measure(functools.partial(one, action), profiler))
                settled = await registry.wait(program_id, final, 10)
                await clients.delivered(settled.revision)  # nothing left in flight
            for action, final in ((registry.start, State.READY), (registry.stop, State.STOPPED)):
                # A burst: the request and the fake runtime's instant results.
                behaviour.build_delay = behaviour.stop_delay = 0.0
                bursts.append(await clients.measure(functools.partial(cascade, action, final)))
    finally:
        behaviour.build_delay = behaviour.stop_delay = 0.0
        await clients.close()

    lasts = [d.last_ms for d in single]
    clean = sum(d.last_ms < ISOLATION_SECONDS * 1000 for d in single)
    how = (
        f"{count:,} streams in {nproc} client processes (opened and synced in {setup_s:.1f} s); "
        f"{len(single)} single changes (Start, Stop via the registry), "
        f"{clean} of them alone in flight until delivered"
    )
    target = ("<=", 100.0)
    prefix = f"fan-out x{count}:"
    report.add(
        Figure(
            f"{prefix} change -> last subscriber, median",
            statistics.median(lasts),
            "ms",
            target,
            how,
        )
    )
    report.add(Figure(f"{prefix} change -> last subscriber, max", max(lasts), "ms", target))
    report.add(
        Figure(
            f"{prefix} change -> first subscriber, median",
            statistics.median(d.first_ms for d in single),
            "ms",
        )
    )
    host = statistics.median(d.host_cpu_ms for d in single)
    client = statistics.median(d.client_cpu_ms for d in single)
    report.add(
        Figure(
            f"{prefix} Host CPU per change",
            host,
            "ms",
            None,
            f"{host * 1000 / count:.0f} us per subscriber; clients: {client:.0f} ms "
            f"({client * 1000 / count:.0f} us per subscriber)",
        )
    )
    start_bursts = bursts[::2]
    burst_ms = statistics.median(d.last_ms for d in start_bursts)
    changes = start_bursts[0].changes
    report.add(
        Figure(
            f"{prefix} Start burst -> all see READY, median",
            burst_ms,
            "ms",
            None,
            f"{changes} changes back to back (BUILDING..READY, no fake delays): "
            f"{changes * count / burst_ms * 1000:,.0f} deliveries/s",
        )
    )
    if profiler:
        _print_profile(profiler, "Host process while single changes fan out", 18)


# --- 4. memory per idle program -------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(count: int, trace: bool, detail: bool) -> dict[str, float]:
    """Runs in a fresh spawned process; bytes per program, CREATED and READY."""
    return asyncio.run(_memory(count, trace, detail))


async def _memory(count: int, trace: bool, detail: bool) -> dict[str, float]:
    def measure() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] if trace else _rss_bytes()

    with tempfile.TemporaryDirectory(prefix="hershy-bench-") as tmp:
        # The Host as `hershy serve --runtime fake` wires it (sources on disk); the
        # programs are created through its registry directly, not over gRPC.
        config = host_config(Path(tmp))
        async with running_host(config) as (registry, _server):
            # Warm-up: every code path once, so imports and caches are not counted.
            for _ in range(3):
                warm = await registry.create("bench", DOCKERFILE, SRC_FILES)
                await registry.start(warm.id)
                await registry.wait(warm.id, State.READY, 10)
                await registry.delete(warm.id)
                with contextlib.suppress(NotFound):  # NotFound: already gone
                    await registry.wait(warm.id, State.DELETED, 10)
            if trace:
                tracemalloc.start(1)
            base = measure()
            snapshot0 = tracemalloc.take_snapshot() if trace and detail else None
            ids = [(await registry.create("bench", DOCKERFILE, SRC_FILES)).id for _ in range(count)]
            created = measure()
            snapshot1 = tracemalloc.take_snapshot() if trace and detail else None
            for program_id in ids:
                await registry.start(program_id)
            for program_id in ids:
                await registry.wait(program_id, State.READY, 30)
            ready = measure()
            if snapshot0 and snapshot1:
                _print_top(snapshot1.compare_to(snapshot0, "lineno"), count, "CREATED")
                _print_top(
                    tracemalloc.take_snapshot().compare_to(snapshot0, "lineno"), count, "READY"
                )
            if trace:
                tracemalloc.stop()
    return {"created": (created - base) / count, "ready": (ready - base) / count}


def _print_top(stats: list[tracemalloc.StatisticDiff], count: int, label: str) -> None:
    print(f"--- tracemalloc: top allocation sites per {label} program (bytes/program) ---")
    for stat in stats[:12]:
        frame = stat.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        print(
            f"    {stat.size_diff / count:8.0f} B  {stat.count_diff / count:6.1f} blocks  {where}"
        )


def bench_memory(report: Report, settings: Settings, detail: bool) -> None:
    count = settings.memory_programs
    # Two fresh processes at once (memory figures do not suffer from sharing the CPUs):
    # one reads RSS, the other tracemalloc, whose own bookkeeping would inflate RSS.
    with (
        ProcessPoolExecutor(max_workers=1, mp_context=SPAWN) as rss_pool,
        ProcessPoolExecutor(max_workers=1, mp_context=SPAWN) as traced_pool,
    ):
        rss_future = rss_pool.submit(memory_child, count, False, False)
        traced_future = traced_pool.submit(memory_child, count, True, detail)
        rss, traced = rss_future.result(), traced_future.result()
    how = f"{count:,} programs via the registry of a fake-runtime Host, in a fresh process"
    for label, figures in (("RSS", rss), ("tracemalloc", traced)):
        for state in ("created", "ready"):
            name = f"memory per idle program, {state.upper()} ({label})"
            kib = figures[state] / 1024
            report.add(Figure(name, kib, "KiB", ("<=", 50), how))
            how = ""


# --- main ---------------------------------------------------------------------


async def bench_host(report: Report, settings: Settings, detail: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="hershy-bench-") as tmp:
        config = host_config(Path(tmp))
        async with running_host(config) as (registry, server):
            await bench_latency(report, settings, registry, server.address)
            await bench_fanout(
                report, settings, registry, server.address, config.fake_behaviour, detail
            )


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    run: Callable[[], None]


def _sections(report: Report, settings: Settings, detail: bool) -> Iterator[Section]:
    yield Section("reducer", lambda: bench_reducer(report, settings, detail))
    yield Section(
        "Host over gRPC (fake runtime, in-process server)",
        lambda: asyncio.run(bench_host(report, settings, detail)),
    )
    yield Section("memory", lambda: bench_memory(report, settings, detail))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller counts (CI smoke run)")
    parser.add_argument("--detail", action="store_true", help="print profiles too")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL

    began = time.monotonic()
    print(f"Hershy core benchmarks ({'quick' if args.quick else 'full'} mode)")
    for line in _machine_info():
        print("  " + line)
    print("  at start: " + other_load(), flush=True)
    report = Report()
    for section in _sections(report, settings, args.detail):
        print(f"\n== {section.title}", flush=True)
        started = time.monotonic()
        section.run()
        print(f"   ({section.title}: {time.monotonic() - started:.1f} s)", flush=True)
    print("\n  at end: " + other_load())
    misses = report.misses
    print(
        f"{len(report.figures)} figures, {len(misses)} missed "
        f"({', '.join(f.name for f in misses) or 'none'}); took {time.monotonic() - began:.1f} s"
    )
    return 1 if misses and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
