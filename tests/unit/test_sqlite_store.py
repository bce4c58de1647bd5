"""The embedded store: durable events, recovery after a restart, unreadable stores."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hershy.adapters.fake_runtime import FakeBehaviour, FakeEffectHandler
from hershy.adapters.log_files import FileLogStore
from hershy.adapters.source_files import FileSourceStore
from hershy.adapters.sqlite_store import FILE_NAME, SCHEMA_VERSION, SqliteEventLog, StoreError
from hershy.domain import events as ev
from hershy.domain.errors import FailedPrecondition, NotFound, RevisionTooOld
from hershy.domain.model import State
from hershy.domain.reducer import Transition, create, reduce
from hershy.service.registry import Registry
from hershy.service.watch import Change
from tests.manual_clock import ManualClock, settle
from tests.unit.test_supervisor import FAST, SequentialIds, TestClock

DOCKERFILE = "FROM scratch\n"


@contextlib.asynccontextmanager
async def host(
    data_dir: Path,
    ids: SequentialIds | None = None,
    behaviour: FakeBehaviour | None = None,
    clock: ManualClock | None = None,
) -> AsyncIterator[Registry]:
    """A Host on `data_dir` with the fake runtime, recovering whatever the store holds;
    with `clock`, time moves only when the test moves it."""
    sources = FileSourceStore(data_dir)
    logs = FileLogStore(sources.root)
    store = SqliteEventLog(data_dir)
    recovered = store.open()
    handler = FakeEffectHandler(sources, logs, behaviour, timers=clock)
    time = clock or TestClock()
    registry = Registry(
        handler=handler,
        sources=sources,
        logs=logs,
        clock=time,
        timers=time,
        ids=ids or SequentialIds(),
        event_log=store,
        policy=FAST,
    )
    try:
        async with registry:
            await registry.recover(recovered.programs, recovered.revision, store.changes_after)
            yield registry
    finally:
        logs.close()
        store.close()


async def test_programs_survive_a_restart_in_creation_order(tmp_path: Path) -> None:
    ids = SequentialIds()
    async with host(tmp_path, ids) as registry:
        first = await registry.create("alice", DOCKERFILE, {"a.txt": b"1"})
        second = await registry.create("bob", DOCKERFILE, {})
        await registry.start(first.id)
        ready = await registry.wait(first.id, State.READY, 2)
        last = registry.hub.revision
    async with host(tmp_path, ids) as registry:
        page = registry.list_programs()
        assert [p.id for p in page.programs] == [first.id, second.id]
        # The fake runtime's containers do not outlive its process: the READY
        # program is found dead, which counts as a crash.
        crashed = await registry.wait(first.id, State.BACKOFF, 2)
        assert crashed.restart_count == ready.restart_count + 1
        assert crashed.revision > last
        assert (await registry.source(first.id)).files == {"a.txt": b"1"}
        assert registry.get(second.id).state is State.CREATED
        await registry.wait(first.id, State.READY, 2)


async def test_revisions_go_on_after_a_restart_and_watch_resumes_from_the_log(
    tmp_path: Path,
) -> None:
    ids = SequentialIds()
    async with host(tmp_path, ids) as registry:
        program = await registry.create("alice", DOCKERFILE, {})
        await registry.start(program.id)
        await registry.wait(program.id, State.READY, 2)
        await registry.stop(program.id)
        await registry.wait(program.id, State.STOPPED, 2)
        before = registry.hub.revision
    async with host(tmp_path, ids) as registry:
        start = registry.watch("", resume_revision=2)
        assert [change.revision for change in start.replay] == list(range(3, before + 1))
        assert start.replay[-1].program.state is State.STOPPED
        newer = await registry.create("alice", DOCKERFILE, {})
        assert newer.revision == before + 1
        with pytest.raises(RevisionTooOld, match="ahead"):
            registry.watch("", resume_revision=before + 50)


async def test_resuming_a_watch_follows_a_deleted_program_but_not_a_made_up_one(
    tmp_path: Path,
) -> None:
    ids = SequentialIds()
    async with host(tmp_path, ids) as registry:
        program = await registry.create("alice", DOCKERFILE, {})
        waiter = asyncio.create_task(registry.wait(program.id, State.DELETED, 2))
        await settle()
        await registry.delete(program.id)
        await waiter
    async with host(tmp_path, ids) as registry:
        start = registry.watch(program.id, resume_revision=1)
        assert start.replay[-1].program.state is State.DELETED
        with pytest.raises(NotFound):
            registry.watch("prog-never", resume_revision=1)


async def test_a_deleted_program_never_comes_back(tmp_path: Path) -> None:
    ids = SequentialIds()
    async with host(tmp_path, ids) as registry:
        program = await registry.create("alice", DOCKERFILE, {})
        waiter = asyncio.create_task(registry.wait(program.id, State.DELETED, 2))
        await settle()
        await registry.delete(program.id)
        await waiter
    async with host(tmp_path, ids) as registry:
        with pytest.raises(NotFound):
            registry.get(program.id)
        assert registry.list_programs().total_size == 0


async def test_a_program_cut_off_while_building_is_rebuilt(tmp_path: Path) -> None:
    ids = SequentialIds()
    async with host(tmp_path, ids) as registry:
        program = await registry.create("alice", DOCKERFILE, {})
        handler = registry._handler
        assert isinstance(handler, FakeEffectHandler)
        handler.behaviour.build_delay = 60
        await registry.start(program.id)
        assert registry.get(program.id).state is State.BUILDING
    async with host(tmp_path, ids) as registry:
        ready = await registry.wait(program.id, State.READY, 2)
        assert ready.run == 1  # the same run, finished rather than begun anew


@settings(max_examples=15, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.sampled_from(["start", "stop", "restart", "delete"])),
        max_size=12,
    )
)
def test_replaying_the_log_through_the_reducer_gives_the_stored_states(
    requests: list[tuple[int, str]],
) -> None:
    async def scenario(data_dir: Path) -> None:
        clock = ManualClock()
        async with host(data_dir, clock=clock) as registry:
            ids = [(await registry.create("alice", DOCKERFILE, {})).id for _ in range(2)]
            for index, kind in requests:
                with contextlib.suppress(FailedPrecondition, NotFound):
                    await getattr(registry, kind)(ids[index])
                await clock.advance(0.005)
            await clock.advance(60)  # every effect done, every backoff fired
        store = SqliteEventLog(data_dir)
        store.open()
        try:
            for program_id in ids:
                history = store.events_of(program_id)
                first_event = history[0][1]
                assert isinstance(first_event, ev.ProgramCreated)
                program = replace(create(first_event), revision=history[0][0])
                assert program == history[0][2]
                for revision, event, stored in history[1:]:
                    outcome = reduce(program, event, FAST)
                    assert isinstance(outcome, Transition), (event, outcome)
                    program = replace(outcome.program, revision=revision)
                    assert program == stored
        finally:
            store.close()

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(scenario(Path(directory)))


# --- stores that cannot be read --------------------------------------------------


def make_store(data_dir: Path) -> bytes:
    async def fill() -> None:
        async with host(data_dir) as registry:
            await registry.create("alice", DOCKERFILE, {})

    asyncio.run(fill())
    return (data_dir / FILE_NAME).read_bytes()


def test_a_truncated_store_is_a_clear_error_and_is_left_as_it_was(tmp_path: Path) -> None:
    whole = make_store(tmp_path)
    (tmp_path / FILE_NAME).write_bytes(whole[: len(whole) // 2])
    cut = (tmp_path / FILE_NAME).read_bytes()
    with pytest.raises(StoreError, match="cannot be read") as error:
        SqliteEventLog(tmp_path).open()
    assert "restore it from a backup" in str(error.value)
    assert (tmp_path / FILE_NAME).read_bytes() == cut


def test_garbage_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"this is not a database, just some text" * 100)
    with pytest.raises(StoreError, match="not a Hershy store"):
        SqliteEventLog(tmp_path).open()


def test_a_store_from_a_newer_hershy_is_refused_untouched(tmp_path: Path) -> None:
    make_store(tmp_path)
    with sqlite3.connect(tmp_path / FILE_NAME) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    before = (tmp_path / FILE_NAME).read_bytes()
    with pytest.raises(StoreError, match=f"newer Hershy .schema {SCHEMA_VERSION + 1}"):
        SqliteEventLog(tmp_path).open()
    assert (tmp_path / FILE_NAME).read_bytes() == before


def test_a_program_row_this_hershy_cannot_read_stops_the_start(tmp_path: Path) -> None:
    make_store(tmp_path)
    with sqlite3.connect(tmp_path / FILE_NAME) as db:
        db.execute('UPDATE programs SET program = \'{"state": "FLYING"}\'')
    with pytest.raises(StoreError, match=r"cannot read .* nothing was dropped"):
        SqliteEventLog(tmp_path).open()


def test_the_store_is_durable_on_commit(tmp_path: Path) -> None:
    store = SqliteEventLog(tmp_path)
    store.open()
    try:
        db = store._conn
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        store.close()


def test_changes_after_reads_the_log(tmp_path: Path) -> None:
    make_store(tmp_path)
    store = SqliteEventLog(tmp_path)
    store.open()
    try:
        oldest, changes = store.changes_after(0)
        assert oldest == 1
        assert [type(change) for change in changes] == [Change]
        assert changes[0].program.state is State.CREATED
    finally:
        store.close()


async def test_watch_resumes_over_the_host_restarted_events_of_several_restarts(
    tmp_path: Path,
) -> None:
    """A program cut off while starting gets a stored HostRestarted at every restart.

    Resuming from before the first restart reads every one of them back from the log.
    """
    ids = SequentialIds()
    never_ready = FakeBehaviour(ready_delay=60)

    async def until_it_has_a_container(registry: Registry, after: int) -> None:
        subscription = registry.hub.subscribe(program.id)
        try:
            async with asyncio.timeout(5):
                while not (registry.hub.revision > after and registry.get(program.id).container_id):
                    await subscription.next()
        finally:
            subscription.unsubscribe()

    async with host(tmp_path, ids, never_ready) as registry:
        program = await registry.create("alice", DOCKERFILE, {})
        first = program.revision
        await registry.start(program.id)
        await until_it_has_a_container(registry, first)
        revision = registry.hub.revision
    for _ in range(3):
        async with host(tmp_path, ids, never_ready) as registry:
            await until_it_has_a_container(registry, revision + 1)  # HostRestarted, then a new one
            assert registry.get(program.id).state is State.STARTING
            revision = registry.hub.revision
    async with host(tmp_path, ids) as registry:
        await registry.wait(program.id, State.READY, 2)
        for resume in (0, first):
            start = registry.watch("", resume_revision=resume)
            start.subscription.unsubscribe()
            revisions = [change.revision for change in start.replay]
            assert revisions == list(range(resume + 1, registry.hub.revision + 1))
        replay = start.replay
    restarts = [change for change in replay if isinstance(change.event, ev.HostRestarted)]
    assert len(restarts) == 4  # every Host after the first found the program starting
    assert all(change.program.state is State.STARTING for change in restarts)
    assert replay[-1].program.state is State.READY


# --- a new store only in a new data dir ---------------------------------------------


def snapshot_of(data_dir: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `data_dir`: its bytes and mtime, to prove nothing changed."""
    return {
        str(path.relative_to(data_dir)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(data_dir.rglob("*"))
        if path.is_file()
    }


def refused(data_dir: Path, complaint: str) -> str:
    """Open the store, expecting StoreError: nothing under data_dir may change."""
    before = snapshot_of(data_dir)
    store = SqliteEventLog(data_dir)
    with pytest.raises(StoreError, match=complaint) as error:
        store.open()
    store.close()
    assert snapshot_of(data_dir) == before
    return str(error.value)


def test_an_emptied_store_next_to_programs_stops_the_start_untouched(tmp_path: Path) -> None:
    make_store(tmp_path)
    (tmp_path / FILE_NAME).write_bytes(b"")
    for side in ("-wal", "-shm"):
        (tmp_path / (FILE_NAME + side)).unlink(missing_ok=True)
    message = refused(tmp_path, r"is empty \(0 bytes\)")
    assert "holds 1 entries in" in message
    assert "would forget every program and make a new admin token" in message
    assert "Restore" in message
    assert "move the whole data dir away" in message
    assert (tmp_path / FILE_NAME).stat().st_size == 0


def test_a_missing_store_next_to_programs_stops_the_start_and_makes_none(tmp_path: Path) -> None:
    make_store(tmp_path)
    for name in (FILE_NAME, FILE_NAME + "-wal", FILE_NAME + "-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    refused(tmp_path, "does not exist, but the data dir .* holds 1 entries")
    assert not (tmp_path / FILE_NAME).exists()


def blank_database(path: Path) -> None:
    """A valid SQLite file with no tables at all (not 0 bytes: it has a header)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 7")
    assert path.stat().st_size > 0


def test_a_store_without_tables_next_to_programs_stops_the_start_untouched(
    tmp_path: Path,
) -> None:
    make_store(tmp_path)
    for name in (FILE_NAME, FILE_NAME + "-wal", FILE_NAME + "-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    blank_database(tmp_path / FILE_NAME)
    refused(tmp_path, "holds no tables, but the data dir")


def test_an_empty_store_next_to_a_write_ahead_log_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"")
    (tmp_path / (FILE_NAME + "-wal")).write_bytes(b"\x37\x7f\x06\x82" + bytes(60))
    message = refused(tmp_path, r"is empty \(0 bytes\)")
    assert "SQLite's hershy.db-wal (64 bytes)" in message


def test_a_store_lacking_some_of_its_tables_is_damaged_even_in_an_empty_data_dir(
    tmp_path: Path,
) -> None:
    make_store(tmp_path)
    with contextlib.closing(sqlite3.connect(tmp_path / FILE_NAME)) as db:
        db.execute("DROP TABLE programs")
    shutil.rmtree(tmp_path / "programs")
    message = refused(tmp_path, "lacks its tables programs: it is damaged")
    assert "restore it from a backup" in message


def test_another_database_is_not_taken_for_a_store(tmp_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / FILE_NAME)) as db:
        db.execute("CREATE TABLE recipes (name TEXT)")
        db.commit()
    message = refused(tmp_path, "is an SQLite database but not a Hershy store")
    assert "recipes" in message


def test_a_store_with_a_garbled_schema_version_is_refused_untouched(tmp_path: Path) -> None:
    make_store(tmp_path)
    with contextlib.closing(sqlite3.connect(tmp_path / FILE_NAME)) as db:
        db.execute("UPDATE meta SET value = 'one' WHERE key = 'schema_version'")
        db.commit()
    refused(tmp_path, "names its schema 'one', not a number")


@pytest.mark.parametrize("programs_dir", ["none", "empty"])
@pytest.mark.parametrize("store", ["missing", "empty", "blank"])
def test_a_new_data_dir_gets_a_new_store(tmp_path: Path, store: str, programs_dir: str) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if programs_dir == "empty":
        (data_dir / "programs").mkdir()
    if store == "empty":
        (data_dir / FILE_NAME).write_bytes(b"")
    elif store == "blank":
        blank_database(data_dir / FILE_NAME)

    async def use() -> None:
        async with host(data_dir) as registry:
            await registry.create("alice", DOCKERFILE, {})

    asyncio.run(use())
    again = SqliteEventLog(data_dir)
    recovered = again.open()
    try:
        assert len(recovered.programs) == 1
        assert len(again.host_id) == 12
    finally:
        again.close()


def test_a_refused_store_leaves_no_connection_open(tmp_path: Path) -> None:
    make_store(tmp_path)
    (tmp_path / FILE_NAME).write_bytes(b"")
    store = SqliteEventLog(tmp_path)
    with pytest.raises(StoreError):
        store.open()
    assert store._db is None
    with pytest.raises(StoreError, match="not open"):
        store.knows("prog-1")


def test_a_store_whose_host_was_killed_before_a_checkpoint_is_read_whole(tmp_path: Path) -> None:
    """Everything still in the write-ahead log (the Host died with -9) counts: no refusal."""
    script = """
import asyncio, os, sys
from pathlib import Path
from hershy.adapters.sqlite_store import SqliteEventLog
from hershy.domain import events as ev
from hershy.domain.reducer import create

data_dir = Path(sys.argv[1])
store = SqliteEventLog(data_dir)
store.open()
event = ev.ProgramCreated(1.0, "prog-1", "alice", "b1", "127.0.0.1:19001")
asyncio.run(store.append(create(event), event))
(data_dir / "programs" / "prog-1").mkdir(parents=True)
os._exit(0)  # no close, no checkpoint: like kill -9
"""
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=30)
    assert (tmp_path / (FILE_NAME + "-wal")).stat().st_size > 0
    store = SqliteEventLog(tmp_path)
    recovered = store.open()
    try:
        assert [program.id for program in recovered.programs] == ["prog-1"]
    finally:
        store.close()


# --- a store written before the runtime placed programs ---------------------------------

#: How Hershy wrote these events before programs were placed at every start: the port was
#: fixed at Create (in `ProgramCreated.proxy_target`) and `ContainerCreated` had no address.
OLD_PROGRAMS = {
    "prog-oldready": [
        '{"type":"ProgramCreated","at":1.0,"program_id":"prog-oldready","user_id":"alice",'
        '"build_id":"b-1","proxy_target":"127.0.0.1:19001",'
        '"resources":{"memory_bytes":536870912,"milli_cpus":1000,"pids":256}}',
        '{"type":"StartRequested","at":2.0}',
        '{"type":"BuildSucceeded","at":3.0,"run":1,"image_id":"sha256:old"}',
        '{"type":"ContainerCreated","at":4.0,"run":1,"container_id":"fake-gone-1"}',
        '{"type":"ContainerReady","at":5.0,"run":1}',
    ],
    "prog-oldstopped": [
        '{"type":"ProgramCreated","at":1.0,"program_id":"prog-oldstopped","user_id":"bob",'
        '"build_id":"b-2","proxy_target":"127.0.0.1:19002",'
        '"resources":{"memory_bytes":536870912,"milli_cpus":1000,"pids":256}}',
        '{"type":"StartRequested","at":2.0}',
        '{"type":"BuildSucceeded","at":3.0,"run":1,"image_id":"sha256:old2"}',
        '{"type":"ContainerCreated","at":4.0,"run":1,"container_id":"fake-gone-2"}',
        '{"type":"ContainerReady","at":5.0,"run":1}',
        '{"type":"StopRequested","at":6.0}',
        '{"type":"ContainerStopped","at":7.0,"run":1}',
    ],
    "prog-oldcreated": [
        '{"type":"ProgramCreated","at":1.0,"program_id":"prog-oldcreated","user_id":"carol",'
        '"build_id":"b-3","proxy_target":"127.0.0.1:19003",'
        '"resources":{"memory_bytes":536870912,"milli_cpus":1000,"pids":256}}',
    ],
}


def write_old_store(data_dir: Path) -> None:
    """A store as the Hershy before this one left it (the Program rows are unchanged)."""
    from hershy.adapters.json_codec import decode_event, encode_program

    store = SqliteEventLog(data_dir)
    store.open()
    store.close()
    db = sqlite3.connect(data_dir / FILE_NAME, isolation_level=None)
    revision = 0
    for program_id, texts in OLD_PROGRAMS.items():
        first = revision + 1
        program = None
        for text in texts:
            revision += 1
            event = decode_event(text)
            if isinstance(event, ev.ProgramCreated):
                program = create(event)
            else:
                assert program is not None
                outcome = reduce(program, event)
                assert isinstance(outcome, Transition), (text, outcome)
                program = outcome.program
            program = replace(program, revision=revision)
            kind = "created" if isinstance(event, ev.ProgramCreated) else "updated"
            db.execute(
                "INSERT INTO events (revision, program_id, kind, event, program) "
                "VALUES (?, ?, ?, ?, ?)",
                (revision, program_id, kind, text, encode_program(program)),
            )
        assert program is not None
        db.execute(
            "INSERT INTO programs (program_id, created_revision, revision, program) "
            "VALUES (?, ?, ?, ?)",
            (program_id, first, revision, encode_program(program)),
        )
    db.close()


async def test_a_store_of_the_hershy_before_loads_recovers_and_places_programs_anew(
    tmp_path: Path,
) -> None:
    write_old_store(tmp_path)
    async with host(tmp_path) as registry:
        ready_before, stopped, created = (
            registry.get(p) for p in ("prog-oldready", "prog-oldstopped", "prog-oldcreated")
        )
        # Loaded as they were: the addresses given at Create are still on record.
        assert (stopped.state, stopped.proxy_target) == (State.STOPPED, "127.0.0.1:19002")
        assert (created.state, created.proxy_target) == (State.CREATED, "127.0.0.1:19003")
        assert ready_before.proxy_target == "127.0.0.1:19001"
        # The READY one's container is gone (the fake's do not outlive a Host): a crash,
        # and the automatic restart places it where the runtime chooses.
        await registry.wait("prog-oldready", State.BACKOFF, 2)
        restarted = await registry.wait("prog-oldready", State.READY, 2)
        assert restarted.proxy_target.startswith("127.0.0.1:")
        for program_id in ("prog-oldstopped", "prog-oldcreated"):
            subscription = registry.watch(program_id, resume_revision=registry.hub.revision)
            await registry.start(program_id)
            ready = await registry.wait(program_id, State.READY, 2)
            placed: list[str] = []
            while not placed:
                change = await subscription.subscription.next()
                assert isinstance(change, Change)
                if isinstance(change.event, ev.ContainerCreated):
                    placed.append(change.event.address)
            subscription.subscription.unsubscribe()
            assert placed == [ready.proxy_target]
        targets = {registry.get(p).proxy_target for p in OLD_PROGRAMS}
        assert len(targets) == 3, f"two programs placed on one port: {targets}"
        # The old log still replays, its ContainerCreated events without an address.
        old = registry.watch("", resume_revision=0).replay
        assert [c.event.address for c in old if isinstance(c.event, ev.ContainerCreated)][:2] == [
            "",
            "",
        ]
