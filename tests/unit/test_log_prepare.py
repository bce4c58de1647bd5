"""A new program's log is opened off the event loop before its first line; nothing changes else."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hershy.adapters import log_files
from hershy.adapters.log_files import FileLogStore
from hershy.service.registry import Registry
from tests.unit.test_log_files import collect, line
from tests.unit.test_sqlite_store import DOCKERFILE, host


async def test_prepare_opens_the_file_on_a_worker_thread_and_lines_go_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileLogStore(tmp_path)
    opened_on: list[str] = []
    real_end = log_files._end_cut_line

    def watched(path: Path) -> None:
        opened_on.append(threading.current_thread().name)
        real_end(path)

    monkeypatch.setattr(log_files, "_end_cut_line", watched)
    await store.prepare("p")
    await store.prepare("p")  # opened already: nothing more
    assert len(opened_on) == 1
    assert opened_on[0] != threading.main_thread().name
    store.write("p", line(1))
    store.write("p", line(2))
    assert len(opened_on) == 1  # the lines used the file prepared
    assert await collect(store) == ["line 1", "line 2"]
    store.close()


async def test_a_create_that_fails_after_its_log_was_prepared_leaves_no_file_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with host(tmp_path) as registry:
        logs = registry._logs
        assert isinstance(logs, FileLogStore)

        async def failing_commit(*args: object) -> None:
            raise OSError("the store is gone")

        monkeypatch.setattr(Registry, "_commit", failing_commit)
        with pytest.raises(OSError, match="gone"):
            await registry.create("alice", DOCKERFILE, {})
        assert logs._files == {}
        assert list((tmp_path / "programs").iterdir()) == []
