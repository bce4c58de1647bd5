"""Benchmark of the Host's liveness prober: 200 READY programs probed, its CPU and latency.

    python benchmarks/probe_bench.py            # full run (about 70 s)
    python benchmarks/probe_bench.py --quick    # CI smoke run: shorter, every figure

Set-up, two processes:

- the programs: PROGRAMS aiohttp WatcherAPIs on loopback ports, each answering
  `GET /watcher/status` like a Hersh program (`{"state": "Ready", ...}`), in a
  process of their own (their CPU is not the Host's);
- the Host's side: this process runs the real `LivenessProber` (one scheduling task,
  one aiohttp session, at most `concurrency` probes in flight) with the Host's
  defaults (every 10 s, jittered by 20 %), each program's outbox counting the
  events it would have sent.

Measured over the window, after a warm-up of one interval: this process's CPU
(user + system, as a share of one core), the probes done, their latency p50/p99,
the largest number of probes in flight, and the events emitted (only changes:
one per program, its first answer). A second round probes every second (ten times
the Host's rate) to show how the cost grows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.synchronize
import os
import resource
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hershy.adapters.watcher_probe import LivenessProber, ProberSettings
from hershy.domain import events as ev
from hershy.domain.model import ReadinessCheck

PROGRAMS = 200


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def serve_programs(ports: list[int], ready: multiprocessing.synchronize.Event) -> None:
    """PROGRAMS Hersh-like WatcherAPIs, until killed."""

    async def status(_: web.Request) -> web.Response:
        body = {"state": "Ready", "isRunning": True, "watcherID": "bench", "uptime": "1m"}
        return web.json_response(body)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/watcher/status", status)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for port in ports:
            await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


@dataclass
class CountingOutbox:
    events: list[ev.WatcherProbed] = field(default_factory=list)

    def now(self) -> float:
        return time.time()

    def emit(self, event: ev.EffectResult) -> None:
        assert isinstance(event, ev.WatcherProbed)
        self.events.append(event)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(ports: list[int], interval: float, window: float) -> dict[str, float]:
    latencies: list[float] = []

    def observe(seconds: float, answered: bool) -> None:
        assert answered, "a program did not answer"
        latencies.append(seconds)

    prober = LivenessProber(ProberSettings(interval=interval), observe=observe)
    outbox = CountingOutbox()
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(prober.run(session))
        for index, port in enumerate(ports):
            prober.watch(
                f"c{index}", f"prog-{index}", 1, f"127.0.0.1:{port}", ReadinessCheck(), outbox
            )
        await asyncio.sleep(interval * 2)  # warm-up: every program probed once at least
        latencies.clear()
        events_before = len(outbox.events)
        cpu, started = cpu_seconds(), time.monotonic()
        await asyncio.sleep(window)
        cpu, elapsed = cpu_seconds() - cpu, time.monotonic() - started
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    ordered = sorted(latencies)
    return {
        "interval": interval,
        "probes": len(latencies),
        "probes_per_second": len(latencies) / elapsed,
        "cpu_percent": 100 * cpu / elapsed,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "peak_in_flight": prober.peak_in_flight,
        "events_in_warmup": events_before,
        "events_in_window": len(outbox.events) - events_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    options = parser.parse_args()
    window = 10.0 if options.quick else 40.0
    ports = free_ports(PROGRAMS)
    ready = multiprocessing.Event()
    programs = multiprocessing.Process(target=serve_programs, args=(ports, ready), daemon=True)
    programs.start()
    try:
        if not ready.wait(30):
            raise SystemExit("the programs' WatcherAPIs did not start")
        rounds = [asyncio.run(measure(ports, 10.0, window))]
        rounds.append(asyncio.run(measure(ports, 1.0, window / 4)))
    finally:
        programs.kill()
        programs.join(5)
    if options.json:
        print(json.dumps(rounds, indent=2))
        return
    print(f"{PROGRAMS} READY programs on loopback, {os.cpu_count()} CPUs")
    for figures in rounds:
        print(
            f"every {figures['interval']:g} s: {figures['probes_per_second']:.1f} probes/s, "
            f"Host CPU {figures['cpu_percent']:.1f} % of a core, "
            f"latency p50 {figures['p50_ms']:.2f} ms p99 {figures['p99_ms']:.2f} ms, "
            f"at most {figures['peak_in_flight']:.0f} in flight, "
            f"events {figures['events_in_warmup']:.0f} in the warm-up "
            f"then {figures['events_in_window']:.0f}"
        )


if __name__ == "__main__":
    main()
