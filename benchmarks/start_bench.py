"""Deploys and starts through the REST API of a `hershy serve` process next to plain Docker.

    python3 -m benchmarks.start_bench            # 7 rounds, then 40 concurrent deploys (x2)
    python3 -m benchmarks.start_bench --smoke    # 1 round, 3 concurrent (CI: that it runs)

What a user does, timed from the first request to the program answering, each
next to its floor in the same run (rounds alternate which side goes first;
medians and their ratios):

- cold deploy: `POST /programs` (the WatcherAPI stub and a file unique to the
  round, so nothing of it is cached), `POST /programs/{id}/start`, then
  `GET /programs/{id}/wait?state=ready`; next to `docker build` of the same
  context (the Engine API as the CLI calls it: no labels, no cache to match)
  and `docker run` with the flags Hershy gives (`docker_create_args`) until
  `GET /watcher/status` on the published port answers;
- start of a built program: `POST /programs/{id}/start` of a stopped program,
  then the wait for READY; next to `docker run` of the built image until its
  port answers;
- N concurrent deploys: N programs of one user created and started at once,
  all of the files the last cold deploy built (the user's image exists; their
  same inputs are built once), all READY; next to N parallel `docker run`s of
  that image, all answering. No more creates are sent at once than the user
  may have in progress (one refused with 503 meanwhile is retried). Where the
  time went is printed from the events the Host committed (their own times).

The Host runs every program under runsc (gVisor) with its default readiness
poll (every 20 ms at first, backing off); the floor polls every 20 ms. The
programs are READY at their first `Ready` answer (`readiness.settle_seconds`
0), the floor's criterion; with the default readiness a start takes 1 s more
(a first `Ready` must hold that long: Hersh reports it before its InitRun).
Needs Docker with runsc as its default runtime and Go (the stub is built here);
the images are `FROM scratch`. Everything it makes is removed.

Targets (issue #17): cold deploy <= 1.10x, start <= 1.05x, N concurrent <= 1.2x.
Exit 0 even on a miss (it measures); --strict exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import docker
import docker.errors

from benchmarks._common import HostProcess, build_stub, free_port, load_average, ratio_line
from hershy.adapters.docker.build import build_context
from hershy.adapters.docker.compose import ContainerRequest, compose_spec
from hershy.adapters.docker.runtime import READY_PATH, docker_create_args
from hershy.domain import limits
from hershy.domain.validation import ProgramSource, ResourcePolicy, resolve_resources

DOCKERFILE = (
    'FROM scratch\nCOPY watcher-stub /watcher-stub\nCOPY round /round\nCMD ["/watcher-stub"]\n'
)
FLOOR_LABEL = "dev.hershy.bench.start"
FLOOR_POLL = 0.02
TIMEOUT = 300.0
USER = "bench"


class Busy(Exception):
    """503: the user has as many creates in progress as allowed."""


class ThroughHershy:
    """The REST calls a user makes."""

    def __init__(self, http: aiohttp.ClientSession, address: str, binary: bytes) -> None:
        self._http, self._base = http, f"http://{address}"
        self._stub = base64.b64encode(binary).decode()
        self.made: list[str] = []
        # As many creates at once as the user may have in progress: more would be
        # refused (503) after their bodies were sent, and retrying them costs the Host.
        self._creates = asyncio.Semaphore(limits.MAX_CREATES_IN_PROGRESS_PER_USER)

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        async with self._http.request(method, self._base + path, **kwargs) as answer:
            body: dict[str, Any] = await answer.json()
            if answer.status == 503 and method == "POST" and path == "/programs":
                raise Busy(str(body))
            if answer.status >= 300:
                raise RuntimeError(f"{method} {path}: {answer.status} {body}")
            return body

    async def create(self, round_text: str) -> str:
        body = {
            "user_id": USER,
            "dockerfile": DOCKERFILE,
            "src_files": {"round": round_text},
            "src_files_base64": {"watcher-stub": self._stub},
            # READY at its first Ready answer, as the floor counts its first answer; the
            # default holds a first Ready 1 s (Hersh says Ready before its InitRun).
            "readiness": {"settle_seconds": 0},
        }
        async with self._creates:
            while True:
                try:
                    program = await self._call("POST", "/programs", json=body)
                    break
                except Busy:  # a create of ours the Host has not finished answering
                    await asyncio.sleep(0.01)
        self.made.append(program["program_id"])
        return str(program["program_id"])

    async def start_until_ready(self, program_id: str) -> None:
        await self._call("POST", f"/programs/{program_id}/start")
        await self._call("GET", f"/programs/{program_id}/wait?state=ready&timeout={TIMEOUT:g}")

    async def deploy(self, round_text: str) -> str:
        program_id = await self.create(round_text)
        await self.start_until_ready(program_id)
        return program_id

    async def stop(self, program_id: str) -> None:
        await self._call("POST", f"/programs/{program_id}/stop")
        await self._call("GET", f"/programs/{program_id}/wait?state=stopped&timeout={TIMEOUT:g}")

    async def delete(self, program_ids: list[str]) -> None:
        for program_id in program_ids:
            with contextlib.suppress(RuntimeError, aiohttp.ClientError):
                await self._call("DELETE", f"/programs/{program_id}")
        for program_id in program_ids:
            with contextlib.suppress(RuntimeError, aiohttp.ClientError):
                await self._call(
                    "GET", f"/programs/{program_id}/wait?state=deleted&timeout={TIMEOUT:g}"
                )


class Floor:
    """`docker build` and `docker run` with Hershy's flags, through the Engine API."""

    def __init__(self, http: aiohttp.ClientSession, scratch: Path, binary: bytes) -> None:
        self._http, self._scratch, self._binary = http, scratch, binary
        self._api = docker.APIClient(version="auto")
        self._client = docker.from_env()
        self._resources = resolve_resources(0, 0, 0, ResourcePolicy())
        self._count = 0
        self.images: set[str] = set()
        self.image = ""

    def context(self, round_text: str) -> bytes:
        files = {"watcher-stub": self._binary, "round": round_text.encode()}
        return build_context(ProgramSource(DOCKERFILE.encode(), files))

    def _build(self, context: bytes) -> str:
        tag = f"hershy-bench-floor/start:{secrets.token_hex(6)}"
        for chunk in self._api.build(
            fileobj=io.BytesIO(context),
            custom_context=True,
            tag=tag,
            rm=True,
            forcerm=True,
            network_mode="none",
            decode=True,
        ):
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
        self.images.add(tag)
        return tag

    def _run(self, image: str, number: int) -> tuple[Any, int]:
        port = free_port()
        state = Path(tempfile.mkdtemp(dir=self._scratch, prefix="state-"))
        spec = compose_spec(
            ContainerRequest(
                host_id="bench",
                program_id=f"floor-{os.getpid()}",
                run=number,
                build_id="floor",
                image=image,
                host_port=port,
                state_dir=str(state),
                resources=self._resources,
                runtime="runsc",
            )
        )
        arguments = docker_create_args(spec)
        arguments["name"] = f"hershy-bench-floor-{os.getpid()}-{number}"
        arguments["labels"] = {FLOOR_LABEL: "true"}
        return self._client.containers.run(**arguments), port

    async def _answering(self, port: int) -> None:
        url = f"http://127.0.0.1:{port}{READY_PATH}"
        async with asyncio.timeout(TIMEOUT):
            while True:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with self._http.get(url) as answer:
                        if 200 <= answer.status < 300:
                            return
                await asyncio.sleep(FLOOR_POLL)

    async def run_until_answering(self, image: str) -> Any:
        self._count += 1  # on the loop: each run its own name
        container, port = await asyncio.to_thread(self._run, image, self._count)
        await self._answering(port)
        return container

    async def build_and_run(self, round_text: str) -> Any:
        image = await asyncio.to_thread(self._build, self.context(round_text))
        self.image = image
        return await self.run_until_answering(image)

    async def remove(self, containers: list[Any]) -> None:
        for container in containers:
            with contextlib.suppress(docker.errors.DockerException):
                await asyncio.to_thread(container.remove, force=True)

    def clean(self) -> None:
        for container in self._client.containers.list(all=True, filters={"label": [FLOOR_LABEL]}):
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)
        for image in self.images:
            with contextlib.suppress(docker.errors.DockerException):
                self._client.images.remove(image, force=True)


def milestones(store: Path, program_id: str, since: float) -> dict[str, float]:
    """The first time (s after `since`) of each kind of event the Host committed for it."""
    db = sqlite3.connect(f"{store.absolute().as_uri()}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT event FROM events WHERE program_id = ? ORDER BY revision", (program_id,)
        ).fetchall()
    finally:
        db.close()
    found: dict[str, float] = {}
    for (text,) in rows:
        event = json.loads(text)
        at = float(event.get("at") or 0)
        if at >= since:
            found.setdefault(str(event.get("type", "?")), at - since)
    return found


def where_it_went(store: Path, program_ids: list[str], since: float) -> str:
    """Median and slowest time (ms after `since`) each kind of event was reached."""
    per_kind: dict[str, list[float]] = {}
    for program_id in program_ids:
        for kind, at in milestones(store, program_id, since).items():
            per_kind.setdefault(kind, []).append(at)
    ordered = sorted(per_kind.items(), key=lambda item: statistics.median(item[1]))
    return ", ".join(
        f"{kind} {statistics.median(ats) * 1000:.0f}/{max(ats) * 1000:.0f}" for kind, ats in ordered
    )


async def timed(work: Awaitable[Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    result = await work
    return time.perf_counter() - began, result


async def bench(rounds: int, concurrent: int, batches: int, scratch: Path) -> bool:
    binary = await asyncio.to_thread(build_stub, scratch)
    store = scratch / "data" / "hershy.db"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT + 30)
    ) as http:
        host = HostProcess(scratch / "data", scratch / "host.log")
        floor = Floor(http, scratch, binary)
        hershy = ThroughHershy(http, host.http, binary)
        cold: dict[str, list[float]] = {"hershy": [], "floor": []}
        start: dict[str, list[float]] = {"hershy": [], "floor": []}
        many: dict[str, list[float]] = {"hershy": [], "floor": []}
        last_start: list[Any] = []
        last_cold: list[Any] = []
        breakdown = ""
        built_text = ""
        try:
            await host.ready(http)
            # Untimed warm-up of both sides (the first sandbox of a runtime is slower).
            await floor.remove([await floor.build_and_run(secrets.token_hex(8))])
            warm = await hershy.deploy(secrets.token_hex(8))
            await hershy.stop(warm)
            for index in range(rounds):
                text = secrets.token_hex(8)

                async def hershy_side(text: str = text) -> None:
                    since = time.time()
                    seconds, program_id = await timed(hershy.deploy(text))
                    cold["hershy"].append(seconds)
                    last_cold[:] = [program_id, since, seconds]
                    await hershy.stop(program_id)  # then started again, deleted at the end
                    since = time.time()
                    seconds, _ = await timed(hershy.start_until_ready(program_id))
                    start["hershy"].append(seconds)
                    last_start[:] = [program_id, since, seconds]
                    await hershy.stop(program_id)

                async def floor_side(text: str = text) -> None:
                    seconds, container = await timed(floor.build_and_run(text))
                    cold["floor"].append(seconds)
                    await floor.remove([container])
                    seconds, container = await timed(floor.run_until_answering(floor.image))
                    start["floor"].append(seconds)
                    await floor.remove([container])

                sides: list[Callable[[], Awaitable[None]]] = [hershy_side, floor_side]
                for side in sides if index % 2 == 0 else reversed(sides):
                    await side()
                built_text = text
            start_phases = milestones(store, *last_start[:2])
            cold_phases = milestones(store, *last_cold[:2])

            for index in range(batches):

                async def hershy_many() -> None:
                    nonlocal breakdown
                    since = time.time()
                    seconds, ids = await timed(
                        asyncio.gather(*(hershy.deploy(built_text) for _ in range(concurrent)))
                    )
                    many["hershy"].append(seconds)
                    breakdown = where_it_went(store, list(ids), since)
                    await hershy.delete(list(ids))

                async def floor_many() -> None:
                    seconds, containers = await timed(
                        asyncio.gather(
                            *(floor.run_until_answering(floor.image) for _ in range(concurrent))
                        )
                    )
                    many["floor"].append(seconds)
                    await floor.remove(list(containers))

                pair: list[Callable[[], Awaitable[None]]] = [hershy_many, floor_many]
                for side in pair if index % 2 == 0 else reversed(pair):
                    await side()
        finally:
            await hershy.delete(hershy.made)
            host.stop()
            await asyncio.to_thread(floor.clean)
    print(
        f"start_bench: {rounds} interleaved rounds, {batches} of {concurrent} concurrent, "
        f"medians; load average {load_average()}"
    )
    met = ratio_line(
        "cold deploy (build, start, READY)", cold["hershy"], cold["floor"], 1.10, "build+run"
    )
    print(
        f"    the last cold deploy (ms after its POST; READY answered at "
        f"{last_cold[2] * 1000:.0f}): "
        + ", ".join(f"{kind} {at * 1000:.0f}" for kind, at in cold_phases.items())
    )
    met &= ratio_line("start of a built program", start["hershy"], start["floor"], 1.05, "run")
    print(
        f"    the last start (ms after its POST; REST answered at {last_start[2] * 1000:.0f}): "
        + ", ".join(f"{kind} {at * 1000:.0f}" for kind, at in start_phases.items())
    )
    met &= ratio_line(
        f"{concurrent} concurrent deploys, all READY",
        many["hershy"],
        many["floor"],
        1.2,
        f"{concurrent} runs",
    )
    print(f"    the last batch (ms after it began, median/slowest): {breakdown}")
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="1 round, 3 concurrent")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrent", type=int, default=40)
    parser.add_argument("--batches", type=int, default=2, help="concurrent batches per side")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    arguments = parser.parse_args(argv)
    rounds = 1 if arguments.smoke else arguments.rounds
    concurrent = 3 if arguments.smoke else arguments.concurrent
    batches = 1 if arguments.smoke else arguments.batches
    scratch = Path(tempfile.mkdtemp(prefix="hershy-start-bench-"))
    try:
        met = asyncio.run(bench(rounds, concurrent, batches, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if arguments.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
