"""One tenant's load cannot take the Host from the others: work queues, per-user limits,
and source saving that costs one file-system sync, not one per file."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from hershy.adapters import source_files
from hershy.adapters.log_files import FileLogStore
from hershy.adapters.source_files import COMPLETE_MARKER, FileSourceStore
from hershy.domain.errors import NotFound, ResourceExhausted
from hershy.domain.model import LogLine, LogStream
from hershy.domain.validation import ProgramSource
from hershy.service.fairness import PerUserLimit
from hershy.service.work_queue import WorkQueue
from tests.manual_clock import settle


async def test_log_reads_do_not_wait_behind_a_flood_of_source_saving(tmp_path: Path) -> None:
    """The attack: fill the threads that save sources; another tenant's log tail must still
    come at once (it used to share the loop's default pool with them)."""
    sources = FileSourceStore(tmp_path, WorkQueue("test-sources", workers=1, backlog=4))
    logs = FileLogStore(sources.root)
    logs.write("reader", LogLine(1.0, LogStream.STDOUT, 1, "hello"))
    release = threading.Event()
    blocked = [
        asyncio.ensure_future(sources._work.run(release.wait, 10)) for _ in range(5)
    ]  # every place of the sources' queue taken, and more waiting
    try:
        # Sharing the sources' threads, the read would wait the blocked jobs' 10 s out.
        async with asyncio.timeout(5):
            lines = [line.text async for line in logs.lines("reader", 5, (), follow=False)]
        assert lines == ["hello"]
        assert not any(task.done() for task in blocked)
    finally:
        release.set()
        await asyncio.gather(*blocked)


async def test_a_work_queue_holds_at_most_workers_plus_backlog_jobs(tmp_path: Path) -> None:
    queue = WorkQueue("test-bounded", workers=1, backlog=1)
    release = threading.Event()
    first_entered = threading.Event()
    entered: list[int] = []

    def job(number: int) -> int:
        entered.append(number)
        first_entered.set()
        release.wait(10)
        return number

    tasks = [asyncio.ensure_future(queue.run(job, n)) for n in range(4)]
    assert await asyncio.to_thread(first_entered.wait, 5)
    await settle()  # the others have all been handed on: one to the pool, two to wait
    assert entered == [0]  # one runs; one waits in the pool; two wait outside it
    assert queue._places.locked()
    release.set()
    assert await asyncio.gather(*tasks) == [0, 1, 2, 3]
    queue.close()


def test_a_user_gets_at_most_limit_places_and_others_are_not_touched() -> None:
    limit = PerUserLimit(2, "creates")
    with limit.slot("alice"), limit.slot("alice"):
        with (
            pytest.raises(ResourceExhausted, match="'alice' already has 2 creates in progress"),
            limit.slot("alice"),
        ):
            pass  # pragma: no cover
        with limit.slot("bob"):
            assert limit.in_progress("bob") == 1
        assert limit.in_progress("alice") == 2
    assert limit.in_progress("alice") == 0
    # A place is given back when the work fails, too.
    with pytest.raises(RuntimeError), limit.slot("alice"):
        raise RuntimeError("create failed")
    assert limit.in_progress("alice") == 0


def test_a_hostile_user_id_is_cut_in_the_limits_message() -> None:
    limit = PerUserLimit(0, "creates")
    with pytest.raises(ResourceExhausted) as refused, limit.slot("u" * 100_000):
        pass  # pragma: no cover
    assert len(refused.value.message) < 300


SOURCE = ProgramSource(
    b"FROM scratch\n", {f"dir{i % 7}/sub/file{i}.txt": f"{i}\n".encode() for i in range(300)}
)


@pytest.mark.parametrize("syncfs", [True, False], ids=["syncfs", "fsync-each"])
async def test_a_source_is_whole_before_its_marker_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syncfs: bool
) -> None:
    """The marker says "complete": it must come after every file is durable, never before."""
    store = FileSourceStore(tmp_path)
    if not syncfs:
        monkeypatch.setattr(source_files, "_SYNCFS", None)
    synced: list[tuple[bool, int]] = []
    real_sync = source_files.sync_tree

    def watching_sync(directory: Path, paths: list[Path]) -> None:
        marker = store.program_dir("p-1") / COMPLETE_MARKER
        synced.append((marker.exists(), len(paths)))
        real_sync(directory, paths)

    monkeypatch.setattr(source_files, "sync_tree", watching_sync)
    await store.save("p-1", SOURCE)
    assert synced == [(False, 301 + 1 + 7 + 7)]  # files, src/, dir*/ and dir*/sub/
    assert (store.program_dir("p-1") / COMPLETE_MARKER).exists()
    assert await store.load("p-1") == SOURCE


async def test_a_source_cut_off_before_its_marker_is_not_taken_for_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileSourceStore(tmp_path)

    def crash(directory: Path, paths: list[Path]) -> None:
        raise OSError("the disk went away")

    monkeypatch.setattr(source_files, "sync_tree", crash)
    with pytest.raises(OSError, match="went away"):
        await store.save("p-2", SOURCE)
    with pytest.raises(NotFound):
        await store.load("p-2")
