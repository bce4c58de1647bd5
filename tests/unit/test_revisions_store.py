"""Revisions kept in the SQLite store and the sources on disk, across Host restarts."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

from hershy.adapters.fake_runtime import FakeEffectHandler
from hershy.adapters.log_files import FileLogStore
from hershy.adapters.source_files import FileSourceStore
from hershy.adapters.sqlite_store import FILE_NAME, SqliteEventLog
from hershy.adapters.system import SystemClock
from hershy.domain.model import Program, State
from hershy.service.registry import Registry
from tests.unit.test_supervisor import FAST, SequentialIds, TestClock

DOCKERFILE = "FROM scratch\n"


@contextlib.asynccontextmanager
async def host(data_dir: Path, ids: SequentialIds) -> AsyncIterator[Registry]:
    """A Host on `data_dir` (fake runtime) recovering what the store holds, revisions too."""
    sources = FileSourceStore(data_dir)
    logs = FileLogStore(sources.root)
    store = SqliteEventLog(data_dir)
    recovered = store.open()
    registry = Registry(
        handler=FakeEffectHandler(sources, logs),
        sources=sources,
        logs=logs,
        clock=TestClock(),
        ids=ids,
        timers=SystemClock(),
        event_log=store,
        policy=FAST,
    )
    try:
        async with registry:
            await registry.recover(recovered.programs, recovered.revision, store.changes_after)
            registry.read_revisions_from(store.revisions_of)  # as bootstrap does
            yield registry
    finally:
        logs.close()
        store.close()


async def settled(registry: Registry, program_id: str, number: int) -> Program:
    async with asyncio.timeout(5):
        while True:
            program = registry.get(program_id)
            rollout = program.rollout
            ended = rollout is not None and rollout.target.number == number
            moving = rollout is None or rollout.in_progress or program.state is not State.READY
            if ended and not moving:
                return program
            await asyncio.sleep(0.01)


async def test_revisions_and_their_sources_survive_a_restart(tmp_path: Path) -> None:
    ids = SequentialIds()
    async with host(tmp_path, ids) as registry:
        program = await registry.create("alice", DOCKERFILE, {"v.txt": b"1"})
        await registry.start(program.id)
        await registry.wait(program.id, State.READY, 2)
        await registry.deploy(program.id, DOCKERFILE, {"v.txt": b"2"}, None, "bob")
        v2 = await settled(registry, program.id, 2)
        assert (tmp_path / "programs" / program.id / "builds" / v2.build_id / "src").is_dir()
    async with host(tmp_path, ids) as registry:
        listed = [(r.number, r.created_by, r.description) for r in registry.revisions(program.id)]
        assert listed == [(2, "bob", "deploy"), (1, "alice", "create")]
        assert registry.get(program.id).version == 2
        assert (await registry.source(program.id)).files == {"v.txt": b"2"}
        # Found dead (fake), restarted: READY from the store until the adoption says otherwise,
        # so wait for the new run, not for READY.
        stored_run = registry.get(program.id).run
        async with asyncio.timeout(5):
            while True:
                now = registry.get(program.id)
                if now.run != stored_run and now.state is State.READY:
                    break
                await asyncio.sleep(0.01)
        await registry.rollback(program.id, 1, "alice")
        back = await settled(registry, program.id, 3)
        assert back.build_id == program.build_id
        assert (await registry.source(program.id)).files == {"v.txt": b"1"}
        await registry.delete(program.id)
        await registry.wait(program.id, State.DELETED, 2)
    with sqlite3.connect(tmp_path / FILE_NAME) as db:
        rows = db.execute("SELECT COUNT(*) FROM program_revisions").fetchone()[0]
    assert rows == 0  # a deleted program's revisions go with it
    assert not (tmp_path / "programs" / program.id).exists()


async def test_a_store_from_before_revisions_shows_revision_one(tmp_path: Path) -> None:
    ids = SequentialIds()
    async with host(tmp_path, ids) as registry:
        program = await registry.create("alice", DOCKERFILE, {})
    with sqlite3.connect(tmp_path / FILE_NAME) as db:
        db.execute("DELETE FROM program_revisions")  # as an older Hershy left it
    async with host(tmp_path, ids) as registry:
        (only,) = registry.revisions(program.id)
        assert (only.number, only.build_id, only.description) == (1, program.build_id, "create")


async def test_after_a_restart_revisions_are_read_when_first_needed_and_kept_whole(
    tmp_path: Path,
) -> None:
    """A deploy made before anything read the program's records adds to them: none lost
    nor doubled (the store is read on first need, only up to what is committed)."""
    ids = SequentialIds()
    async with host(tmp_path, ids) as registry:
        program = await registry.create("alice", DOCKERFILE, {"v.txt": b"1"})
        await registry.start(program.id)
        await registry.wait(program.id, State.READY, 2)
        await registry.deploy(program.id, DOCKERFILE, {"v.txt": b"2"}, None, "bob")
        await settled(registry, program.id, 2)
    async with host(tmp_path, ids) as registry:
        assert program.id not in registry._revisions  # nothing read at the restart
        stored_run = registry.get(program.id).run
        async with asyncio.timeout(5):
            while True:
                now = registry.get(program.id)
                if now.run != stored_run and now.state is State.READY:
                    break
                await asyncio.sleep(0.01)
        await registry.deploy(program.id, DOCKERFILE, {"v.txt": b"3"}, None, "carol")
        await settled(registry, program.id, 3)
        listed = [(r.number, r.created_by) for r in registry.revisions(program.id)]
        assert listed == [(3, "carol"), (2, "bob"), (1, "alice")]
    async with host(tmp_path, ids) as registry:
        listed = [(r.number, r.created_by) for r in registry.revisions(program.id)]
        assert listed == [(3, "carol"), (2, "bob"), (1, "alice")]
