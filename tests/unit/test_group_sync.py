"""Saves under way at once share their syncfs; each still waits for one begun after its writes."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from hershy.adapters import source_files
from hershy.adapters.source_files import COMPLETE_MARKER, FileSourceStore, GroupSync
from hershy.domain.validation import ProgramSource
from hershy.service.work_queue import WorkQueue

SOURCE = ProgramSource(b"FROM scratch\n", {"a.txt": b"1", "dir/b.txt": b"2"})


class SlowSyncfs:
    """Counts syncs; each takes a while, as a journal commit does."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.calls = 0
        self.seconds = seconds
        self.lock = threading.Lock()

    def __call__(self, descriptor: int) -> int:
        with self.lock:
            self.calls += 1
        time.sleep(self.seconds)
        return 0


async def test_many_saves_at_once_share_few_syncs_and_all_are_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncfs = SlowSyncfs()
    monkeypatch.setattr(source_files, "_SYNCFS", syncfs)
    monkeypatch.setattr(source_files, "_GROUPS", {})
    store = FileSourceStore(tmp_path, WorkQueue("test-sources", 16, 16))
    await asyncio.gather(*(store.save(f"prog-{n:012x}", SOURCE) for n in range(16)))
    # Alone, each save syncs twice (files, then the marker): 32.
    assert syncfs.calls <= 8, syncfs.calls
    for n in range(16):
        assert (store.program_dir(f"prog-{n:012x}") / COMPLETE_MARKER).exists()
        assert await store.load(f"prog-{n:012x}") == SOURCE


def test_a_caller_waits_for_a_sync_begun_after_it_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    began: list[float] = []
    ended: list[float] = []

    def syncfs(descriptor: int) -> int:
        began.append(time.monotonic())
        time.sleep(0.1)
        ended.append(time.monotonic())
        return 0

    monkeypatch.setattr(source_files, "_SYNCFS", syncfs)
    group = GroupSync()
    first = threading.Thread(target=group.sync, args=(tmp_path,))
    first.start()
    time.sleep(0.03)  # the first sync is under way: a write now is not in it
    asked = time.monotonic()
    assert group.sync(tmp_path)
    first.join()
    assert len(began) == 2
    assert began[1] >= asked  # the one that answered began after the call


def test_when_syncfs_fails_each_file_is_synced_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source_files, "_SYNCFS", lambda descriptor: -1)
    monkeypatch.setattr(source_files, "_GROUPS", {})
    synced: list[Path] = []
    real = source_files._fsync

    def fsync(path: Path) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(source_files, "_fsync", fsync)
    store = FileSourceStore(tmp_path)
    asyncio.run(store.save("prog-000000000001", SOURCE))
    program = store.program_dir("prog-000000000001")
    assert program / "src" / "a.txt" in synced
    assert program / "src" / "dir" / "b.txt" in synced
    assert synced[-2:] == [program / COMPLETE_MARKER, program]  # the marker after every file
