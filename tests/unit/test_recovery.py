"""Recovery after a Host restart, over fakes: one ordered step that never takes the Host down.

- the runtime is reconciled (reaped) before any supervisor runs, and a Docker
  error meanwhile is retried with backoff and reported, never raised;
- reaping tolerates every race: a list that raises NotFound, a container or
  image that vanishes between the list and its removal;
- the log copy resumes exactly after the last line copied (Docker timestamps
  as marks), also when it was cut off in the middle;
- a container's death is reported after its last lines are in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from docker.errors import APIError, ImageNotFound, NotFound

from hershy.adapters.docker import logs as docker_logs
from hershy.adapters.docker.compose import LABEL_MANAGED, LABEL_PROGRAM, LABEL_RUN
from hershy.adapters.docker.logs import docker_time_ns as _docker_time_ns
from hershy.adapters.docker.runtime import DockerEffectHandler, DockerSettings
from hershy.adapters.fake_runtime import FakeEffectHandler
from hershy.adapters.log_files import FILE_NAME, FileLogStore
from hershy.adapters.memory_event_log import MemoryEventLog
from hershy.adapters.source_files import FileSourceStore, MemorySourceStore
from hershy.bootstrap import HostConfig, Runtime, running_host
from hershy.domain import events as ev
from hershy.domain.model import LogLine, LogStream, Program, State
from hershy.entrypoints.doctor import Level, check_host_readiness, host_readiness
from hershy.service.registry import Registry
from tests.e2e.conftest import free_port
from tests.manual_clock import ManualClock, settle
from tests.unit.test_supervisor import DOCKERFILE, FAST, SequentialIds, TestClock

HOST_ID = "host-test"
#: One sequence for every registry here: a recovered program's id is never handed out again.
IDS = SequentialIds()


# --- the registry: reconcile first, retry, report -------------------------------------------


class FlakyReaper(FakeEffectHandler):
    """The fake runtime, whose reaping fails `failures` times (a Docker daemon down)."""

    def __init__(self, logs: FileLogStore, failures: int) -> None:
        super().__init__(MemorySourceStore(), logs)
        self.failures = failures
        self.reaps = 0
        self.executed_before_reaped: list[str] = []
        self.reaped = asyncio.Event()

    async def reap(self, owned: Mapping[str, int]) -> None:
        self.reaps += 1
        if self.failures > 0:
            self.failures -= 1
            raise requests.exceptions.ConnectionError("Connection aborted: docker.sock")
        await super().reap(owned)
        self.reaped.set()

    async def execute(self, program_id: str, effect: Any, outbox: Any) -> None:
        if not self.reaped.is_set():
            self.executed_before_reaped.append(type(effect).__name__)
        await super().execute(program_id, effect, outbox)


def registry_on(
    handler: FakeEffectHandler, logs: FileLogStore, clock: ManualClock | None = None
) -> Registry:
    time = clock or TestClock()
    return Registry(
        handler=handler,
        sources=handler._sources,
        logs=logs,
        event_log=MemoryEventLog(),
        clock=time,
        timers=time,
        ids=IDS,
        policy=FAST,
    )


async def programs_left_running(count: int) -> list[Program]:
    """Programs as a store holds them after the Host was killed while they were READY."""
    logs = FileLogStore(Path(tempfile.mkdtemp(prefix="hershy-logs-")))
    handler = FakeEffectHandler(MemorySourceStore(), logs)
    async with registry_on(handler, logs) as registry:
        ids = [(await registry.create("alice", DOCKERFILE, {})).id for _ in range(count)]
        for program_id in ids:
            await registry.start(program_id)
            await registry.wait(program_id, State.READY, 5)
        return [registry.get(program_id) for program_id in ids]


async def test_a_docker_error_during_recovery_is_retried_and_reported_never_raised() -> None:
    stored = await programs_left_running(2)
    logs = FileLogStore(Path(tempfile.mkdtemp(prefix="hershy-logs-")))
    handler = FlakyReaper(logs, failures=3)
    clock = ManualClock()
    async with registry_on(handler, logs, clock) as registry:
        await registry.recover(stored, 0, lambda r: (r, []))
        await settle()
        reason = registry.not_ready_reason()
        assert reason is not None
        assert "ConnectionError" in reason
        assert "retrying in 0.5 s" in reason
        # A request meanwhile is not refused and not applied early: it waits its turn.
        stop = asyncio.create_task(registry.stop(stored[0].id))
        await clock.advance(0.499)
        assert (handler.reaps, stop.done()) == (1, False), "retried before its delay"
        await clock.advance(0.001)
        assert handler.reaps == 2
        assert "retrying in 1 s" in (registry.not_ready_reason() or "")
        assert not stop.done()
        await clock.run(registry.reconciled())
        assert handler.reaps == 4
        assert registry.not_ready_reason() is None
        stopped = await clock.run(stop)
        assert stopped.state is State.STOPPING
        await clock.run(registry.wait(stored[0].id, State.STOPPED, 5))
    assert handler.executed_before_reaped == [], "a supervisor ran before the runtime was reaped"


async def test_no_supervisor_runs_before_the_runtime_is_reaped() -> None:
    stored = await programs_left_running(3)
    logs = FileLogStore(Path(tempfile.mkdtemp(prefix="hershy-logs-")))
    handler = FlakyReaper(logs, failures=0)
    async with registry_on(handler, logs) as registry:
        await registry.recover(stored, 0, lambda r: (r, []))
        assert registry.not_ready_reason() is not None  # not before the step ran
        await asyncio.wait_for(registry.reconciled(), 5)
        # The fake's containers died with its process: each is found dead, a crash.
        for program in stored:
            crashed = registry.get(program.id)
            assert crashed.state in (State.BACKOFF, State.STARTING, State.READY)
    assert handler.executed_before_reaped == []


async def test_a_program_created_while_recovering_is_not_taken_for_an_orphan() -> None:
    stored = await programs_left_running(1)
    logs = FileLogStore(Path(tempfile.mkdtemp(prefix="hershy-logs-")))
    handler = FlakyReaper(logs, failures=0)
    seen: list[Mapping[str, int]] = []
    original = handler.reap
    docker_answers = asyncio.Event()

    async def slow_reap(owned: Mapping[str, int]) -> None:
        seen.append(owned)
        await docker_answers.wait()
        await original(owned)

    handler.reap = slow_reap  # type: ignore[method-assign]
    async with registry_on(handler, logs) as registry:
        await registry.recover(stored, 0, lambda r: (r, []))
        await settle()  # reaping is under way
        assert seen
        new = await registry.create("bob", DOCKERFILE, {})
        docker_answers.set()
        # Reaping reads what is owned as it decides, not a copy from before the create.
        assert new.id in seen[0]
        await asyncio.wait_for(registry.reconciled(), 5)


async def test_only_programs_with_something_to_do_get_a_supervisor_at_recovery() -> None:
    """Programs at rest (CREATED, never run) get no supervisor until a request comes: a
    restart with 10,000 of them spent 5 s starting 10,000 supervisors that did nothing."""
    running = await programs_left_running(1)
    logs = FileLogStore(Path(tempfile.mkdtemp(prefix="hershy-logs-")))
    handler = FakeEffectHandler(MemorySourceStore(), logs)
    async with registry_on(handler, logs) as registry:
        at_rest = [(await registry.create("carol", DOCKERFILE, {})) for _ in range(50)]
    logs = FileLogStore(Path(tempfile.mkdtemp(prefix="hershy-logs-")))
    handler = FlakyReaper(logs, failures=0)
    docker_answers = asyncio.Event()
    original = handler.reap

    async def slow_reap(owned: Mapping[str, int]) -> None:
        await docker_answers.wait()
        await original(owned)

    handler.reap = slow_reap  # type: ignore[method-assign]
    async with registry_on(handler, logs) as registry:
        await registry.recover([*running, *at_rest], 0, lambda r: (r, []))
        assert set(registry._supervisors) == {running[0].id}
        # A request to one at rest while the runtime is not reconciled yet waits for it,
        # as a recovered program's does (its supervisor is made now, behind the gate).
        starting = asyncio.ensure_future(registry.start(at_rest[0].id))
        await settle()
        assert not starting.done()
        assert handler.executed_before_reaped == []
        docker_answers.set()
        assert (await asyncio.wait_for(starting, 5)).state is State.BUILDING
        await asyncio.wait_for(registry.reconciled(), 5)
        assert registry.not_ready_reason() is None
        assert (await registry.wait(at_rest[0].id, State.READY, 5)).state is State.READY
        # One never asked anything still answers every request, deleted as well.
        deleted = await registry.delete(at_rest[1].id)
        assert deleted.state in (State.DELETING, State.DELETED)
        assert set(registry._supervisors) <= {running[0].id, at_rest[0].id, at_rest[1].id}
    assert handler.executed_before_reaped == []


# --- the Docker adapter's reaping, with a Docker client that races ----------------------------


def listed(container_id: str, program_id: str, run: object) -> dict[str, Any]:
    labels = {LABEL_MANAGED: HOST_ID, LABEL_PROGRAM: program_id, LABEL_RUN: str(run)}
    return {"Id": container_id, "Labels": labels}


class RacingDocker:
    """Just what `reap` uses of a docker client; containers vanish as a supervisor removes them."""

    def __init__(self, containers: list[dict[str, Any]], images: list[dict[str, Any]]) -> None:
        self.containers_listed = containers
        self.images_listed = images
        self.list_failures = 1
        self.vanished: set[str] = set()
        self.removed: list[str] = []
        self.images_removed: list[str] = []
        #: Called as a container is removed (to look at the log at that moment).
        self.on_remove: Callable[[str], None] = lambda _: None
        self.api = self._Api(self)
        self.containers = self._Containers(self)
        self.images = self._Images(self)

    class _Api:
        """The low-level list calls, as docker-py names them (api.containers(), api.images())."""

        def __init__(self, outer: RacingDocker) -> None:
            self.outer = outer

        def containers(self, **_: Any) -> list[dict[str, Any]]:
            if self.outer.list_failures > 0:
                self.outer.list_failures -= 1
                raise NotFound("No such container: c-gone")  # it vanished while being listed
            return self.outer.containers_listed

        def images(self, **_: Any) -> list[dict[str, Any]]:
            return self.outer.images_listed

    class _Containers:
        def __init__(self, outer: RacingDocker) -> None:
            self.outer = outer

        def get(self, container_id: str) -> Any:
            if container_id in self.outer.vanished:
                raise NotFound(f"No such container: {container_id}")
            outer = self.outer

            class Container:
                status = "exited"

                def remove(self, force: bool = False) -> None:
                    outer.on_remove(container_id)
                    outer.removed.append(container_id)

            return Container()

    class _Images:
        def __init__(self, outer: RacingDocker) -> None:
            self.outer = outer

        def remove(self, image_id: str, force: bool = False) -> None:
            if image_id == "img-vanished":
                raise ImageNotFound("gone")
            if image_id == "img-busy":
                raise APIError("conflict", response=_Response(409))
            self.outer.images_removed.append(image_id)


class _Response:
    def __init__(self, status: int) -> None:
        self.status_code = status
        self.reason = "Conflict"


def racing_handler(fake: RacingDocker, root: Path) -> DockerEffectHandler:
    files = FileSourceStore(root)
    handler = DockerEffectHandler(DockerSettings(host_id=HOST_ID), files, FileLogStore(files.root))
    handler._client = fake
    return handler


async def test_reap_retries_a_list_that_raises_not_found_and_tolerates_vanishing(
    tmp_path: Path,
) -> None:
    fake = RacingDocker(
        containers=[
            listed("c-owned", "prog-1", 2),
            listed("c-old-run", "prog-1", 1),
            listed("c-deleted", "prog-gone", 1),
            listed("c-vanished", "prog-gone", 1),
            listed("c-garbage", "prog-1", "not-a-number"),
        ],
        images=[
            {
                "Id": "img-owned",
                "Labels": {LABEL_PROGRAM: "prog-1"},
                "RepoTags": ["hershy/prog-1:b"],
            },
            # A build the Host's death cut off, which dockerd finished: labelled, never tagged.
            {"Id": "img-cut-off", "Labels": {LABEL_PROGRAM: "prog-1"}, "Created": 1000},
            # An untagged image made this very moment: a build under way, not a leftover.
            {"Id": "img-building", "Labels": {LABEL_PROGRAM: "prog-1"}, "Created": 4e9},
            {"Id": "img-orphan", "Labels": {LABEL_PROGRAM: "prog-gone"}},
            {"Id": "img-vanished", "Labels": {LABEL_PROGRAM: "prog-gone"}},
            {"Id": "img-busy", "Labels": {LABEL_PROGRAM: "prog-gone"}},
        ],
    )
    fake.vanished.add("c-vanished")  # removed by a recovering supervisor after the list
    handler = racing_handler(fake, tmp_path)
    try:
        await handler.reap({"prog-1": 2})
    finally:
        handler._pool.shutdown()
    assert fake.list_failures == 0, "the failing list was not asked again"
    assert sorted(fake.removed) == ["c-deleted", "c-garbage", "c-old-run"]
    assert fake.images_removed == ["img-cut-off", "img-orphan"]


class RecordingVolumes:
    """The /state volumes port: which programs have one, and what was removed when."""

    def __init__(self, fake: RacingDocker, programs: list[str]) -> None:
        self._fake = fake
        self._programs = programs
        #: (program id, the containers removed by then)
        self.removed: list[tuple[str, list[str]]] = []

    async def attach(self, program_id: str, size_bytes: int) -> Path:
        raise AssertionError("reaping attaches nothing")

    async def remove(self, program_id: str) -> None:
        self.removed.append((program_id, list(self._fake.removed)))

    async def programs(self) -> list[str]:
        return list(self._programs)


async def test_reap_removes_the_state_volumes_of_programs_no_one_owns_after_their_containers(
    tmp_path: Path,
) -> None:
    fake = RacingDocker(
        containers=[listed("c-owned", "prog-1", 2), listed("c-deleted", "prog-gone", 1)],
        images=[],
    )
    fake.list_failures = 0
    # prog-1 runs; prog-stopped is at rest (owned: its /state is its data); prog-gone is not
    # in the store any more.
    volumes = RecordingVolumes(fake, ["prog-1", "prog-gone", "prog-stopped"])
    files = FileSourceStore(tmp_path)
    handler = DockerEffectHandler(
        DockerSettings(host_id=HOST_ID), files, FileLogStore(files.root), volumes=volumes
    )
    handler._client = fake
    try:
        await handler.reap({"prog-1": 2, "prog-stopped": 3})
    finally:
        handler._pool.shutdown()
    assert volumes.removed == [("prog-gone", ["c-deleted"])], (
        "only the orphan's, after its container"
    )


async def test_reap_gives_up_on_a_list_that_keeps_raising_not_found(tmp_path: Path) -> None:
    fake = RacingDocker(containers=[], images=[])
    fake.list_failures = 100
    handler = racing_handler(fake, tmp_path)
    try:
        with pytest.raises(NotFound):  # the registry retries the whole step, with backoff
            await handler.reap({})
    finally:
        handler._pool.shutdown()


# --- the log copy: each line once, in order ----------------------------------------------------


def stamp(ns: int) -> str:
    seconds, nanos = divmod(ns, 10**9)
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{whole}.{nanos:09d}Z"


class FakeEngine:
    """Docker's logs endpoint over a fixed list of (stream, ns, text); honours `since`."""

    def __init__(self, lines: list[tuple[str, int, str]], delay: float = 0.0) -> None:
        self.lines = lines
        self.delay = delay
        self.asked_since: list[str] = []

    async def logs(
        self, container_id: str, since: float | str = 0, *, timestamps: bool = False
    ) -> AsyncIterator[tuple[str, str]]:
        assert isinstance(since, str)
        assert timestamps
        self.asked_since.append(since)
        seconds, _, nanos = since.partition(".")
        since_ns = int(seconds) * 10**9 + int(nanos or 0)
        for stream, ns, text in self.lines:
            if ns >= since_ns:  # Docker's since is inclusive
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield stream, f"{stamp(ns)} {text}"

    async def close(self) -> None:
        pass


CONTAINER = "c0ffee" * 10 + "abcd"
BASE = 1_764_600_000 * 10**9


@contextlib.asynccontextmanager
async def background(handler: DockerEffectHandler) -> AsyncIterator[None]:
    """The handler's own task group, without a Docker daemon."""
    handler._tasks = asyncio.TaskGroup()
    await handler._tasks.__aenter__()
    try:
        yield
    finally:
        for task in list(handler._background):
            task.cancel()
        await handler._tasks.__aexit__(None, None, None)


def copier(tmp_path: Path, engine: FakeEngine) -> tuple[DockerEffectHandler, FileLogStore]:
    files = FileSourceStore(tmp_path)
    logs = FileLogStore(files.root)
    handler = DockerEffectHandler(DockerSettings(host_id=HOST_ID), files, logs)
    handler._engine = engine  # type: ignore[assignment]
    return handler, logs


async def texts(logs: FileLogStore, program_id: str = "prog-1") -> list[str]:
    return [line.text async for line in logs.lines(program_id, None, (), False)]


async def test_the_copy_resumes_exactly_after_the_last_line_even_with_equal_timestamps(
    tmp_path: Path,
) -> None:
    lines = [
        ("stdout", BASE + 1, "one"),
        ("stderr", BASE + 2, "two"),
        ("stdout", BASE + 2, "two again, same nanosecond"),
        ("stdout", BASE + 3, "three"),
    ]
    engine = FakeEngine(lines[:3])
    handler, logs = copier(tmp_path, engine)
    await handler.output.copy("prog-1", 1, CONTAINER, resume=True)
    engine.lines = lines  # the container printed on while the Host was down
    await handler.output.copy("prog-1", 1, CONTAINER, resume=True)
    await handler.output.copy("prog-1", 1, CONTAINER, resume=True)  # and again: nothing new
    assert await texts(logs) == ["one", "two", "two again, same nanosecond", "three"]
    assert engine.asked_since[1] == f"{(BASE + 2) // 10**9}.{(BASE + 2) % 10**9:09d}"
    copied = [line async for line in logs.lines("prog-1", None, (), False)]
    assert [line.stream for line in copied][:2] == [LogStream.STDOUT, LogStream.STDERR]
    assert copied[0].at == pytest.approx((BASE + 1) / 1e9)


async def test_a_copy_cut_off_in_the_middle_goes_on_without_a_gap_or_a_repeat(
    tmp_path: Path,
) -> None:
    lines = [("stdout", BASE + 10 * n, f"tick {n}") for n in range(1, 41)]
    engine = FakeEngine(lines, delay=0.001)
    handler, logs = copier(tmp_path, engine)
    for _ in range(3):  # the Host killed during the back-fill, three times
        copy = asyncio.ensure_future(handler.output.copy("prog-1", 1, CONTAINER, resume=True))
        await asyncio.sleep(0.01)
        copy.cancel()
        await asyncio.gather(copy, return_exceptions=True)
    # ...and a crash that cut the last line of the file in half:
    path = tmp_path / "programs" / "prog-1" / "logs" / FILE_NAME
    logs.close()
    path.write_text(path.read_text() + '{"t": 1.0, "s": "stdout", "r": 1, "l": "tick 9')
    logs = FileLogStore(tmp_path / "programs")
    handler.output.logs = logs
    await handler.output.copy("prog-1", 1, CONTAINER, resume=True)
    assert await texts(logs) == [f"tick {n}" for n in range(1, 41)]


async def test_a_new_container_is_copied_from_its_start(tmp_path: Path) -> None:
    engine = FakeEngine([("stdout", BASE + 5, "hello")])
    handler, logs = copier(tmp_path, engine)
    logs.write("prog-1", LogLine(1.0, LogStream.STDOUT, 1, "old run", f"{'f' * 12}@{BASE + 9}"))
    await handler.output.copy("prog-1", 2, CONTAINER, resume=False)
    assert engine.asked_since == ["0.000000000"]
    assert await texts(logs) == ["old run", "hello"]


def test_docker_timestamps_parse_to_the_nanosecond() -> None:
    assert _docker_time_ns("2026-12-01T15:41:56.123456789Z") == 1796139716123456789
    assert _docker_time_ns("2026-12-01T15:41:56.5Z") == 1796139716500000000
    assert _docker_time_ns("2026-12-01T15:41:56Z") == 1796139716000000000
    assert _docker_time_ns("hello") is None
    assert _docker_time_ns("2026-13-01T15:41:56.1Z") is None


def test_last_mark_counts_the_lines_that_share_it(tmp_path: Path) -> None:
    logs = FileLogStore(tmp_path)
    logs.write("p", LogLine(1.0, LogStream.STDOUT, 1, "a", "aaa@1"))
    logs.write("p", LogLine(1.0, LogStream.STDOUT, 1, "b", "bbb@5"))
    logs.write("p", LogLine(1.0, LogStream.STDERR, 1, "c", "aaa@7"))
    logs.write("p", LogLine(1.0, LogStream.STDOUT, 1, "d", "aaa@7"))
    logs.write("p", LogLine(1.0, LogStream.HOST, 1, "note"))
    assert logs.last_mark("p", "aaa@") == ("aaa@7", 2)
    assert logs.last_mark("p", "bbb@") == ("bbb@5", 1)
    assert logs.last_mark("p", "ccc@") is None
    assert logs.last_mark("nobody", "aaa@") is None
    raw = (tmp_path / "p" / "logs" / FILE_NAME).read_text().splitlines()
    assert "m" not in json.loads(raw[-1]), "lines without a mark carry none"


# --- a death is reported after the run's last lines (finding 7b) -------------------------------


class Outbox:
    def __init__(self, logs: FileLogStore) -> None:
        self.logs = logs
        self.events: list[ev.EffectResult] = []
        self.lines_when_exited: list[str] = []

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def emit(self, event: ev.EffectResult) -> None:
        if isinstance(event, ev.ContainerExited):
            data = (self.logs._dir("prog-1") / FILE_NAME).read_text()
            self.lines_when_exited = [json.loads(raw)["l"] for raw in data.splitlines()]
        self.events.append(event)


async def test_a_death_is_reported_once_its_last_lines_are_copied(tmp_path: Path) -> None:
    lines = [("stdout", BASE + n, f"line {n}") for n in range(1, 21)]
    engine = FakeEngine(lines, delay=0.01)  # the copy lags behind the container
    handler, logs = copier(tmp_path, engine)
    outbox = Outbox(logs)
    async with background(handler):
        handler._outboxes["prog-1"] = outbox
        handler.output.follow("prog-1", 1, CONTAINER)
        # The container exits at once: dockerd's die event comes before its lines are read.
        handler._on_event(
            {
                "Action": "die",
                "Actor": {
                    "ID": CONTAINER,
                    "Attributes": {LABEL_PROGRAM: "prog-1", LABEL_RUN: "1", "exitCode": "3"},
                },
            }
        )
        for _ in range(200):
            if outbox.events:
                break
            await asyncio.sleep(0.01)
    assert [type(e).__name__ for e in outbox.events] == ["ContainerExited"]
    assert outbox.lines_when_exited == [f"line {n}" for n in range(1, 21)]


async def test_a_death_waits_for_the_copy_only_a_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(docker_logs, "LOG_DRAIN_SECONDS", 0.1)
    engine = FakeEngine([("stdout", BASE + n, f"line {n}") for n in range(1000)], delay=0.05)
    handler, logs = copier(tmp_path, engine)
    outbox = Outbox(logs)
    async with background(handler):
        handler._outboxes["prog-1"] = outbox
        handler.output.follow("prog-1", 1, CONTAINER)
        handler._on_event(
            {
                "Action": "die",
                "Actor": {"ID": CONTAINER, "Attributes": {LABEL_PROGRAM: "prog-1", LABEL_RUN: "1"}},
            }
        )
        await asyncio.sleep(0.5)
        assert len(outbox.events) == 1, "a copy that never ends held the death back"


# --- /readyz and `hershy doctor` tell a recovering Host -----------------------------------------


async def test_readyz_and_the_doctor_report_a_recovery_retrying_a_docker_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hershy.service.recovery.RECOVERY_RETRY_FIRST", 0.05)
    monkeypatch.setattr("hershy.service.recovery.RECOVERY_RETRY_MAX", 0.1)
    http_addr = f"127.0.0.1:{free_port()}"
    config = HostConfig(
        data_dir=tmp_path,
        runtime=Runtime.FAKE,
        grpc_addr="127.0.0.1:0",
        http_addr=http_addr,
        no_auth=True,
    )
    async with running_host(config) as (registry, _):
        program = await registry.create("alice", DOCKERFILE, {})
    docker_back = asyncio.Event()
    attempts: list[None] = []
    retried = asyncio.Event()

    async def reap_while_docker_is_down(self: FakeEffectHandler, owned: Mapping[str, int]) -> None:
        if not docker_back.is_set():
            attempts.append(None)
            if len(attempts) >= 3:  # failed, retried, and failed again
                retried.set()
            raise requests.exceptions.ConnectionError("('Connection aborted.', docker.sock)")

    monkeypatch.setattr(FakeEffectHandler, "reap", reap_while_docker_is_down)
    async with (
        running_host(config) as (registry, _),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        await asyncio.wait_for(retried.wait(), 5)  # a few attempts
        async with http.get(f"http://{http_addr}/readyz") as response:
            assert response.status == 503
            body = await response.json()
        assert body["error"] == "RECOVERING"
        assert "ConnectionError" in body["message"]
        assert "retrying" in body["message"]
        check = check_host_readiness(http_addr, *await asyncio.to_thread(host_readiness, http_addr))
        assert check.level is Level.WARN
        assert "ConnectionError" in check.detail
        assert check.fix is not None
        assert registry.get(program.id).state is State.CREATED  # served meanwhile: reads work
        docker_back.set()
        await asyncio.wait_for(registry.reconciled(), 5)
        for _ in range(50):
            async with http.get(f"http://{http_addr}/readyz") as response:
                if response.status == 200:
                    break
            await asyncio.sleep(0.1)
        assert response.status == 200
        check = check_host_readiness(http_addr, *await asyncio.to_thread(host_readiness, http_addr))
        assert check.level is Level.OK


def test_the_doctor_judges_what_readyz_answered() -> None:
    address = "127.0.0.1:9000"
    assert check_host_readiness(address, None, "", "Connection refused").level is Level.OK
    assert check_host_readiness(address, 200, '{"status": "ready"}', None).level is Level.OK
    recovering = json.dumps({"error": "RECOVERING", "code": 503, "message": "the Host is x"})
    check = check_host_readiness(address, 503, recovering, None)
    assert (check.level, check.detail) == (
        Level.WARN,
        f"the Host on http://{address}/readyz is not ready: the Host is x",
    )
    other = check_host_readiness(address, 404, "<html>nope</html>", None)
    assert other.level is Level.WARN
    assert "404" in other.detail


async def test_a_stopped_container_is_removed_only_after_its_last_lines_are_copied(
    tmp_path: Path,
) -> None:
    lines = [("stdout", BASE + n, f"line {n}") for n in range(1, 31)]
    engine = FakeEngine(lines, delay=0.01)
    handler, logs = copier(tmp_path, engine)
    fake = RacingDocker(containers=[], images=[])
    handler._client = fake
    copied_at_removal: list[str] = []

    def removing(_: str) -> None:
        data = (logs._dir("prog-1") / FILE_NAME).read_text()
        copied_at_removal.extend(json.loads(raw)["l"] for raw in data.splitlines())

    fake.on_remove = removing
    try:
        async with background(handler):
            handler.output.follow("prog-1", 1, CONTAINER, resume=True)  # a back-fill under way
            await handler._remove(CONTAINER, graceful=True)
    finally:
        handler._pool.shutdown()
    assert fake.removed == [CONTAINER]
    assert copied_at_removal == [f"line {n}" for n in range(1, 31)]
