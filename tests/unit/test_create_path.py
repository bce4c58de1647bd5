"""The create path: small sources checked on the loop; source and log prepared side by side."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from hershy.adapters.log_files import FileLogStore
from hershy.adapters.source_files import FileSourceStore
from hershy.domain.errors import InvalidArgument
from hershy.service import registry as registry_module
from hershy.service.registry import INLINE_CHECK_BYTES, INLINE_CHECK_FILES
from tests.unit.test_sqlite_store import DOCKERFILE, host


def _watch_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The thread each source check ran on."""
    ran_on: list[str] = []
    real = registry_module._checked_source

    def watched(*args: object) -> object:
        ran_on.append(threading.current_thread().name)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(registry_module, "_checked_source", watched)
    return ran_on


async def test_a_small_source_is_checked_on_the_loop_and_a_big_one_on_a_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran_on = _watch_checks(monkeypatch)
    async with host(tmp_path) as registry:
        await registry.create("alice", DOCKERFILE, {"main.py": b"print(1)\n"})
        many = {f"f{number}": b"x" for number in range(INLINE_CHECK_FILES + 1)}
        await registry.create("alice", DOCKERFILE, many)
        await registry.create("alice", DOCKERFILE, {"big": b"x" * (INLINE_CHECK_BYTES + 1)})
    assert ran_on[0] == threading.main_thread().name
    assert all(name.startswith("hershy-source-checks") for name in ran_on[1:]), ran_on


@pytest.mark.parametrize("path", ["../escape", "/etc/passwd", "a/../../b", ""])
async def test_a_small_hostile_source_checked_on_the_loop_is_still_refused(
    tmp_path: Path, path: str
) -> None:
    async with host(tmp_path) as registry:
        with pytest.raises(InvalidArgument):
            await registry.create("alice", DOCKERFILE, {path: b"x"})
        assert registry.list_programs(0, "", "alice").programs == []
    assert not (tmp_path / "programs").exists() or list((tmp_path / "programs").iterdir()) == []


async def test_a_failed_source_save_waits_for_the_log_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The save fails while the log is still being prepared: the clean-up comes after both."""
    prepared = threading.Event()
    real_open = FileLogStore._open_file

    def slow_open(self: FileLogStore, program_id: str) -> object:
        # Still opening when the save has failed: a clean-up that did not wait would
        # run before this file exists, and leave it open and its folder behind.
        threading.Event().wait(0.2)
        file = real_open(self, program_id)
        prepared.set()
        return file

    def failing_save(self: FileSourceStore, program_id: str, source: object) -> None:
        raise OSError("the disk is full")

    monkeypatch.setattr(FileLogStore, "_open_file", slow_open)
    monkeypatch.setattr(FileSourceStore, "_save", failing_save)
    async with host(tmp_path) as registry:
        logs = registry._logs
        assert isinstance(logs, FileLogStore)
        with pytest.raises(OSError, match="disk is full"):
            await registry.create("alice", DOCKERFILE, {})
        assert prepared.is_set()
        assert logs._files == {}
        assert registry.list_programs(0, "", "alice").programs == []
        await asyncio.sleep(0.3)  # nothing still running comes back to write
        assert list((tmp_path / "programs").iterdir()) == []
