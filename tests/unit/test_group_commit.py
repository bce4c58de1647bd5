"""Group commit: many appends, one transaction; each answered only once its event is durable."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from hershy.adapters.sqlite_store import FILE_NAME, SqliteEventLog
from hershy.domain import events as ev
from hershy.domain.model import Program, State
from hershy.domain.reducer import create
from hershy.service.watch import Change, ChangeKind
from tests.unit.test_sqlite_store import DOCKERFILE, host
from tests.unit.test_supervisor import SequentialIds


def created(number: int) -> tuple[Program, ev.ProgramCreated]:
    event = ev.ProgramCreated(1.0, f"prog-{number}", "alice", "b1", "")
    return create(event), event


def stored_revisions(data_dir: Path) -> list[int]:
    """What another connection reads: only what was committed."""
    db = sqlite3.connect(data_dir / FILE_NAME)
    try:
        return [row[0] for row in db.execute("SELECT revision FROM events ORDER BY revision")]
    finally:
        db.close()


class CountingStore(SqliteEventLog):
    """Counts transactions; `gate`, when set, holds each one until it is opened."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.transactions: list[int] = []
        self.gate: threading.Event | None = None
        self.fail_next = False

    def _write(self, batch: list[tuple[int, Program, ev.Event]]) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail_next:
            self.fail_next = False
            # The last row fails inside the transaction (its revision is taken): the
            # rows before it were written in it, and the rollback must undo them.
            super()._write([*batch, batch[0]])
        self.transactions.append(len(batch))
        super()._write(batch)


async def test_appends_made_at_once_share_transactions_and_each_is_durable_when_answered(
    tmp_path: Path,
) -> None:
    store = CountingStore(tmp_path)
    store.open()
    try:

        async def append(number: int) -> int:
            revision = await store.append(*created(number))
            # Answered: another connection already reads it.
            assert revision in stored_revisions(tmp_path)
            return revision

        revisions = await asyncio.gather(*(append(n) for n in range(200)))
        assert revisions == list(range(1, 201))  # numbered in call order
        assert sum(store.transactions) == 200
        assert len(store.transactions) < 20, store.transactions  # not one per event
    finally:
        store.close()


async def test_no_caller_is_answered_before_its_transaction_commits(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    store.open()
    store.gate = threading.Event()
    try:
        first = asyncio.ensure_future(store.append(*created(1)))
        await asyncio.sleep(0.05)
        # Appended while the first transaction is held: they wait for the next one.
        later = [asyncio.ensure_future(store.append(*created(n))) for n in range(2, 6)]
        await asyncio.sleep(0.1)
        assert not first.done()
        assert not any(task.done() for task in later)
        assert stored_revisions(tmp_path) == []
        store.gate.set()
        assert await first == 1
        assert await asyncio.gather(*later) == [2, 3, 4, 5]
        assert store.transactions == [1, 4]
        assert stored_revisions(tmp_path) == [1, 2, 3, 4, 5]
    finally:
        store.gate.set()
        store.close()


async def test_a_failed_transaction_fails_every_caller_in_it_and_keeps_nothing_of_it(
    tmp_path: Path,
) -> None:
    store = CountingStore(tmp_path)
    store.open()
    store.gate = threading.Event()
    try:
        held = asyncio.ensure_future(store.append(*created(1)))
        await asyncio.sleep(0.05)
        batch = [asyncio.ensure_future(store.append(*created(n))) for n in range(2, 6)]
        await asyncio.sleep(0.05)
        store.fail_next = False
        store.gate.set()
        assert await held == 1
        # The next transaction (the four waiting) fails: each caller hears it.
        store.gate.clear()
        failing = [asyncio.ensure_future(store.append(*created(n))) for n in range(6, 10)]
        await asyncio.gather(*batch)
        store.fail_next = True
        store.gate.set()
        results = await asyncio.gather(*failing, return_exceptions=True)
        assert all(isinstance(result, sqlite3.IntegrityError) for result in results), results
        assert stored_revisions(tmp_path) == [1, 2, 3, 4, 5]
        # The store goes on: the next append is durable (its revision after the lost ones).
        assert await store.append(*created(10)) == 10
        assert stored_revisions(tmp_path) == [1, 2, 3, 4, 5, 10]
    finally:
        store.gate.set()
        store.close()


async def test_concurrent_creates_are_published_in_revision_order_and_all_recovered(
    tmp_path: Path,
) -> None:
    ids = SequentialIds()
    async with host(tmp_path, ids) as registry:
        subscription = registry.watch("").subscription
        users = [f"user{n}" for n in range(50)]
        programs = await asyncio.gather(
            *(registry.create(user, DOCKERFILE, {"f": b"x"}) for user in users)
        )
        seen: list[int] = []
        while len(seen) < len(programs):
            async with asyncio.timeout(5):
                change = await subscription.next()
            assert isinstance(change, Change)
            if change.kind is ChangeKind.CREATED:
                seen.append(change.program.revision)
        assert seen == sorted(seen)
        assert len(set(seen)) == len(seen)
        assert sorted(p.revision for p in programs) == seen
    async with host(tmp_path, ids) as registry:
        assert {p.id for p in registry.list_programs(page_size=1000).programs} == {
            p.id for p in programs
        }


@pytest.mark.parametrize("cancelled_at", [0, 3])
async def test_a_cancelled_commit_does_not_let_later_ones_be_published_first(
    tmp_path: Path, cancelled_at: int
) -> None:
    async with host(tmp_path, SequentialIds()) as registry:
        subscription = registry.watch("").subscription
        tasks = [
            asyncio.ensure_future(registry.create(f"user{n}", DOCKERFILE, {})) for n in range(6)
        ]
        await asyncio.sleep(0)
        tasks[cancelled_at].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        revisions = []
        while True:
            try:
                async with asyncio.timeout(0.5):
                    change = await subscription.next()
            except TimeoutError:
                break
            assert isinstance(change, Change)
            revisions.append(change.program.revision)
        assert revisions == sorted(revisions)
        assert len(revisions) >= 5


async def test_a_commit_that_waits_in_its_own_step_still_publishes_before_later_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deletion's commit waits (its logs are removed) after its append: a later
    append, durable in the same transaction, must still be published after it."""
    async with host(tmp_path, SequentialIds()) as registry:
        first = await registry.create("alice", DOCKERFILE, {})
        second = await registry.create("bob", DOCKERFILE, {})
        subscription = registry.watch("").subscription
        forget = registry._forget

        async def slow_forget(program: Program) -> None:
            await asyncio.sleep(0.2)
            await forget(program)

        monkeypatch.setattr(registry, "_forget", slow_forget)
        deleted = replace(first, state=State.DELETED)
        touched = replace(second, note="touched")
        await asyncio.gather(
            registry._commit(deleted, ev.DeleteRequested(2.0)),
            registry._commit(touched, ev.StopRequested(2.0)),
        )
        published = []
        for _ in range(2):
            async with asyncio.timeout(5):
                change = await subscription.next()
            assert isinstance(change, Change)
            published.append((change.program.id, change.program.revision))
        assert [program_id for program_id, _ in published] == [first.id, second.id]
        assert published[0][1] < published[1][1]


async def test_every_event_of_a_batch_keeps_its_revision_record(tmp_path: Path) -> None:
    """A transaction of many creates stores each program's first revision, not only the
    last one's (the record was once written for the batch's last event alone)."""
    store = CountingStore(tmp_path)
    store.open()
    store.gate = threading.Event()
    try:
        held = asyncio.ensure_future(store.append(*created(1)))
        await asyncio.sleep(0.05)
        batch = [asyncio.ensure_future(store.append(*created(n))) for n in range(2, 6)]
        await asyncio.sleep(0.05)
        store.gate.set()
        await asyncio.gather(held, *batch)
        assert store.transactions == [1, 4]
        kept = store.revisions()
        assert sorted(kept) == [f"prog-{n}" for n in range(1, 6)]
        assert all([record.number for record in records] == [1] for records in kept.values())
    finally:
        store.gate.set()
        store.close()
